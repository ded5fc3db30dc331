"""One MAE optimisation step, one epoch, one evaluation. The caller decides everything else.

Every random choice of a step (the mask, dropout) is seeded from (seed, rank, batch index), so
a resumed run repeats exactly what an uninterrupted one would have done. Nothing here reads a
value back to the host except at log intervals: a step whose gradient is not finite is skipped
on the device (the fused optimizer's ``found_inf``) and counted there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from xecmae.errors import UserError
from xecmae.train import distributed as dist
from xecmae.train.ema import EMA
from xecmae.train.losses import LossSettings, Stats, mae_loss
from xecmae.train.metrics import MetricSums

log = logging.getLogger(__name__)


class TrainingStopped(UserError):
    """The run cannot go on (e.g. the loss stays non-finite)."""


@dataclass
class TrainState:
    """Progress that a checkpoint carries from one process lifetime to the next."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch: int = 0  # training batches consumed, all epochs
    epoch_batches: int = 0  # batches consumed in the unfinished epoch
    best_loss: float = math.inf
    best_epoch: int = 0
    mlflow_run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def batch_seed(seed: int, rank: int, index: int) -> int:
    """A distinct, reproducible 63-bit seed per (run seed, rank, batch)."""
    return (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (2**63 - 1)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch["x"].to(device, non_blocking=True), batch["valid"].to(device, non_blocking=True)


class MAETrainer:
    """Holds what a step needs; ``train_step`` and ``evaluate`` are the whole algorithm."""

    def __init__(self, model: nn.Module, raw_model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, ema: EMA | None, settings: LossSettings, eval_settings: LossSettings, *,
                 seed: int, grad_accum_steps: int = 1, grad_clip: float = 0.0, amp: bool = False,
                 device: torch.device = dist.CPU, max_bad_steps: int = 5,
                 state: TrainState | None = None):
        self.model = model  # what the step calls: maybe DDP-wrapped and/or compiled
        self.raw = raw_model  # the plain XEC_MAE
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ema = ema
        self.settings = settings
        self.eval_settings = eval_settings
        self.seed = seed
        self.accum = grad_accum_steps
        self.grad_clip = grad_clip
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.max_bad_steps = max_bad_steps
        self.state = state or TrainState()
        self.generator = torch.Generator(device=device)
        self.params = [p for p in raw_model.parameters() if p.requires_grad]
        self.bad_run = torch.zeros((), device=device)  # consecutive skipped steps
        self.bad_total = torch.zeros((), device=device)
        self._bad_seen = 0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _seed_batch(self, index: int, eval_offset: int = 0) -> None:
        seed = batch_seed(self.seed + eval_offset, dist.rank(), index)
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)  # dropout

    def train_step(self, batch: dict[str, torch.Tensor]) -> Stats:
        """Forward and backward on one batch; an optimizer step every ``grad_accum_steps`` batches."""
        self.model.train()
        x, valid = to_device(batch, self.device)  # (B, 4760, 2) each
        self._seed_batch(self.state.batch)
        stepping = (self.state.batch + 1) % self.accum == 0
        sync = contextlib.nullcontext() if stepping or not hasattr(self.model, "no_sync") else self.model.no_sync()
        with sync:
            hidden = self.raw.random_masking(valid, self.generator)  # (B, 4760) True = hidden
            with self.autocast():
                out = self.model(x, valid, hidden=hidden)
            loss, stats = mae_loss(out.pred, x, valid, hidden, self.raw.normalizer, self.settings,
                                   self.raw.channel_log_var)
            (loss / self.accum).backward()
        if stepping:
            self._optimizer_step()
        self.state.batch += 1
        self.state.epoch_batches += 1
        finite = torch.isfinite(loss)
        return {k: (torch.where(finite, n, 0.0), torch.where(finite, d, 0.0)) for k, (n, d) in stats.items()}

    def _optimizer_step(self) -> None:
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True)
        bad = ~torch.isfinite(grad_norm)
        self.optimizer.found_inf = bad.float()  # the fused AdamW skips the update on the device
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.raw)
        self.bad_run = (self.bad_run + bad) * bad
        self.bad_total = self.bad_total + bad
        self.state.step += 1

    def check_health(self) -> None:
        """Read the skipped-step counters (a host sync: call at log intervals only)."""
        run, total = (int(v) for v in torch.stack([self.bad_run, self.bad_total]).tolist())
        if total > self._bad_seen:
            log.warning("%d optimizer step(s) had a non-finite loss or gradient and were skipped",
                        total - self._bad_seen)
            self._bad_seen = total
        if run >= self.max_bad_steps:
            raise TrainingStopped(f"the loss was not finite for {run} consecutive steps (step {self.state.step}); "
                                  "stopping. Lower training.lr, set training.grad_clip, or check the input data.")

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.raw

    @torch.no_grad()
    def evaluate(self, loader: Iterable[dict[str, torch.Tensor]], on_batch: Callable | None = None) -> dict:
        """Validation metrics: the training objective, same masking path, masks fixed per batch index.

        ``on_batch(batch, hidden, pred)`` sees every batch (e.g. to write predictions).
        """
        model = self.eval_model()
        model.eval()
        sums = MetricSums()
        for index, batch in enumerate(loader):
            x, valid = to_device(batch, self.device)
            self._seed_batch(index, eval_offset=1)
            hidden = model.random_masking(valid, self.generator)
            with self.autocast():
                out = model(x, valid, hidden=hidden)
            _, stats = mae_loss(out.pred, x, valid, hidden, model.normalizer, self.eval_settings,
                                model.channel_log_var)
            sums.add(stats)
            if on_batch is not None:
                on_batch(batch, hidden, out.pred)
        sums.reduce()
        return sums.compute()


class Throughput:
    """Events per second over an interval, counting every rank's events."""

    def __init__(self):
        self.start = time.perf_counter()
        self.events = 0

    def add(self, events: int) -> None:
        self.events += events

    def rate(self) -> float:
        return self.events / max(time.perf_counter() - self.start, 1e-9)

    def reset(self) -> None:
        self.__init__()
