"""One optimisation step and one evaluation pass, for any objective. The caller decides the rest.

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
from typing import Any, Protocol

import torch
from torch import nn

from xecmae.errors import UserError
from xecmae.train import distributed as dist
from xecmae.train.ema import EMA
from xecmae.train.losses import Stats
from xecmae.train.metrics import MetricSums

log = logging.getLogger(__name__)


class TrainingStopped(UserError):
    """The run cannot go on (e.g. the loss stays non-finite)."""


class Objective(Protocol):
    """What a kind of run optimises: ``(model, raw, batch, generator, autocast, training) -> (loss, stats, extras)``.

    ``model`` is what to call (maybe DDP-wrapped or compiled), ``raw`` the plain module (for its
    attributes), ``extras`` whatever an evaluation callback wants to see (e.g. the predictions).
    """

    def __call__(self, model: nn.Module, raw: nn.Module, batch: dict[str, torch.Tensor],
                 generator: torch.Generator, autocast: Callable, training: bool) -> tuple[torch.Tensor, Stats, Any]:
        ...


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
    mlflow_uri: str | None = None  # the store holding that run
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_sums: MetricSums | None = None  # running training metrics of the unfinished epoch


def batch_seed(seed: int, rank: int, index: int) -> int:
    """A distinct, reproducible 63-bit seed per (run seed, rank, batch)."""
    return (seed * 0x9E3779B97F4A7C15 + rank * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (2**63 - 1)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Trainer:
    """Holds what a step needs; ``train_step`` and ``evaluate`` are the whole algorithm."""

    def __init__(self, model: nn.Module, raw_model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler, ema: EMA | None, objective: Objective, *, seed: int, grad_accum_steps: int = 1,
                 grad_clip: float = 0.0, amp: bool = False, cpu_amp: bool = False, device: torch.device = dist.CPU,
                 max_bad_steps: int = 5, state: TrainState | None = None):
        self.model = model  # what the step calls: maybe DDP-wrapped and/or compiled
        self.raw = raw_model  # the plain module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.ema = ema
        self.objective = objective
        self.seed = seed
        self.accum = grad_accum_steps
        self.grad_clip = grad_clip
        self.device = device
        self.amp = amp and (device.type == "cuda" or cpu_amp)  # bf16 autocast
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
        batch = to_device(batch, self.device)
        self._seed_batch(self.state.batch)
        stepping = (self.state.batch + 1) % self.accum == 0
        sync = contextlib.nullcontext() if stepping or not hasattr(self.model, "no_sync") else self.model.no_sync()
        with sync:
            loss, stats, _ = self.objective(self.model, self.raw, batch, self.generator, self.autocast, True)
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
        """Validation metrics of the training objective, with per-batch seeds fixed across epochs.

        ``on_batch(batch, extras)`` sees every batch (e.g. to write predictions).
        """
        model = self.eval_model()
        model.eval()
        sums = MetricSums()
        for index, batch in enumerate(loader):
            batch = to_device(batch, self.device)
            self._seed_batch(index, eval_offset=1)
            _, stats, extras = self.objective(model, model, batch, self.generator, self.autocast, False)
            sums.add(stats)
            if on_batch is not None:
                on_batch(batch, extras)
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
