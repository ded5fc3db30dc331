"""A frozen encoder with only the regression heads trained, on encoder outputs computed once.

With the encoder fixed its six face tokens of an event never change, so they are computed once
per event set (:func:`encode_events`, the costly part: one encoder pass per event) and the heads
train on the cached tokens alone (:func:`train_heads`: a few ms per step for a ``tiny`` head on a
CPU instead of a full forward and backward pass). The heads, loss and targets are the regressor's
(:class:`~xecmae.models.regressor.XECRegressor`, :class:`~xecmae.train.finetune.RegressionObjective`
in spirit: the per-task point loss of the scaled targets, weighted by ``training.task_weights``);
the optimizer is AdamW at ``training.lr`` and ``training.weight_decay``, a linear warm-up over the
first 5% of the steps and a cosine to ``training.lr_min``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xecmae.config import RegressorConfig
from xecmae.models.regressor import TASK_TARGETS, XECRegressor
from xecmae.train.losses import point_loss

WARMUP_SHARE = 0.05


@torch.no_grad()
def encode_events(model: XECRegressor, npho: np.ndarray, time_s: np.ndarray, batch_size: int = 256,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Raw (N, 4760) npho (photons) and relative_time (s) -> (N, 6, D) float32 face tokens on the CPU."""
    model.encoder.eval()
    parts = []
    for start in range(0, len(npho), batch_size):
        x, valid = model.normalizer(torch.from_numpy(npho[start:start + batch_size]),
                                    torch.from_numpy(time_s[start:start + batch_size]))
        parts.append(model.encoder(x.to(device), valid.to(device)).float().cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 6, model.encoder.encoder_dim)


def _schedule(step: int, steps: int, lr: float, lr_min: float) -> float:
    warmup = max(1, int(WARMUP_SHARE * steps))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))


def train_heads(model: XECRegressor, tokens: torch.Tensor, truth: dict[str, np.ndarray], cfg: RegressorConfig,
                steps: int, seed: int, device: str | torch.device = "cpu") -> list[float]:
    """Train ``model.heads`` on cached ``tokens`` (N, 6, D) for ``steps`` steps of ``cfg.data.batch_size``
    events drawn without replacement (reshuffled every pass); ``truth`` {task: (N, size)} in the
    units of the truth branches. Returns the loss of every step."""
    t = cfg.training
    heads = model.heads.to(device).train()
    params = [p for p in heads.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    targets = {task: TASK_TARGETS[task].encode(torch.as_tensor(truth[task], dtype=torch.float32)).to(device)
               for task in model.tasks}
    tokens = tokens.to(device)
    generator = torch.Generator().manual_seed(seed)
    batch = min(cfg.data.batch_size, len(tokens))
    order, cursor, losses = torch.randperm(len(tokens), generator=generator), 0, []
    for step in range(steps):
        if cursor + batch > len(order):
            order, cursor = torch.randperm(len(tokens), generator=generator), 0
        index = order[cursor:cursor + batch].to(device)
        cursor += batch
        for group in optimizer.param_groups:
            group["lr"] = _schedule(step, steps, t.lr, t.lr_min)
        total = tokens.new_zeros(())
        for task, head in heads.items():
            loss_fn = t.task_loss_fn.get(task, t.loss_fn)
            loss = point_loss(head(tokens[index]), targets[task][index], loss_fn, t.loss_beta).mean()
            total = total + t.task_weights.get(task, 1.0) * loss
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        optimizer.step()
        losses.append(float(total.detach()))
    heads.eval()
    return losses


@torch.no_grad()
def predict_heads(model: XECRegressor, tokens: torch.Tensor, batch_size: int = 4096,
                  device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """{task: (N, size)} in physical units from cached tokens (N, 6, D)."""
    model.heads.eval()
    out: dict[str, list[np.ndarray]] = {task: [] for task in model.tasks}
    for start in range(0, len(tokens), batch_size):
        chunk = tokens[start:start + batch_size].to(device)
        for task, head in model.heads.items():
            out[task].append(TASK_TARGETS[task].decode(head(chunk).float()).cpu().numpy())
    return {task: np.concatenate(v) if v else np.zeros((0, TASK_TARGETS[task].size)) for task, v in out.items()}
