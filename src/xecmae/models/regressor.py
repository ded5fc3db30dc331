"""XECRegressor: the shared encoder and one small MLP head per reconstruction task.

Heads see all six face tokens (concatenated), and predict targets in scaled units (see
:data:`TASK_TARGETS`) so every task's loss is of order one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xecmae.geometry import FACE_NAMES
from xecmae.models.encoder import EncoderModel, XECEncoder
from xecmae.models.precision import in_fp32
from xecmae.normalize import Normalizer


@dataclass(frozen=True)
class TaskTarget:
    """How a truth branch becomes a regression target: ``(truth - offset) / scale``."""

    branch: str
    size: int
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    unit: str

    def encode(self, truth: torch.Tensor) -> torch.Tensor:
        t = truth.reshape(len(truth), self.size).float()
        # column by column with Python numbers: no host-to-device copy of the constants per step
        return torch.stack([(t[:, k] - o) / s for k, (o, s) in enumerate(zip(self.offset, self.scale, strict=True))],
                           dim=1)

    def decode(self, target: torch.Tensor) -> torch.Tensor:
        return torch.stack([target[:, k] * s + o for k, (o, s) in enumerate(zip(self.offset, self.scale,
                                                                                  strict=True))], dim=1)


TASK_TARGETS: dict[str, TaskTarget] = {
    "position": TaskTarget("uvwTruth", 3, (10.0, 10.0, 10.0), (0.0, 0.0, 0.0), "cm"),
    "energy": TaskTarget("energyTruth", 1, (0.05,), (0.0,), "GeV"),
    "timing": TaskTarget("timeTruth", 1, (1.0,), (0.0,), "ns"),
    "angle": TaskTarget("emiAng", 2, (10.0, 10.0), (90.0, 0.0), "deg"),  # (theta, phi)
}


class RegressionHead(nn.Module):
    """Six face tokens (B, 6, D) -> (B, out)."""

    def __init__(self, encoder_dim: int, hidden: int, out: int):
        super().__init__()
        tokens = len(FACE_NAMES) * encoder_dim
        self.mlp = nn.Sequential(nn.LayerNorm(tokens), nn.Linear(tokens, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, out))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return in_fp32(self.mlp, tokens.flatten(1))  # small, and its outputs are energies and positions


class XECRegressor(EncoderModel):
    """Encoder + heads: (B, 4760, 2) values and validity -> {task: (B, size) scaled targets}."""

    def __init__(self, normalizer: Normalizer, tasks: tuple[str, ...], *, head_hidden: int = 256,
                 freeze_encoder: bool = False, **encoder_kwargs):
        super().__init__()
        unknown = set(tasks) - set(TASK_TARGETS)
        if unknown or not tasks:
            raise ValueError(f"unknown task(s) {sorted(unknown)}; choose from {', '.join(TASK_TARGETS)}")
        self.tasks = tuple(tasks)
        self.normalizer = normalizer
        self.encoder = XECEncoder(normalizer, **encoder_kwargs)
        dim = self.encoder.encoder_dim
        self.heads = nn.ModuleDict({t: RegressionHead(dim, head_hidden, TASK_TARGETS[t].size) for t in self.tasks})
        self.set_encoder_frozen(freeze_encoder)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.encoder(x, valid)  # (B, 6, D)
        return {task: head(tokens) for task, head in self.heads.items()}


def build_regressor(cfg) -> XECRegressor:
    """The regressor described by a :class:`xecmae.config.RegressorConfig`."""
    m = cfg.model
    return XECRegressor(cfg.normalizer(), tuple(m.tasks), head_hidden=m.head_hidden, freeze_encoder=m.freeze_encoder,
                        encoder_dim=m.encoder_dim, dim_feedforward=m.dim_feedforward,
                        num_fusion_layers=m.num_fusion_layers, num_heads=m.num_heads, dropout=m.dropout,
                        outer_mode=m.outer_mode, outer_fine_pool=m.outer_fine_pool)
