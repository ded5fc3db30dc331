"""One epoch: the training steps, then (for the caller to call) the validation pass.

The recipe of :func:`train_one_epoch`: for every batch, one training step; after every optimizer
step the checkpoint policy's step rule and the stop check; every ``log_interval`` steps the one
host read of the interval's metrics, handed to the hooks. What happens at the end of the epoch
(validation, checkpoints, logging) is the caller's.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from xecmae.errors import UserError
from xecmae.train import distributed as dist
from xecmae.train.hooks import Hooks
from xecmae.train.loop import Throughput, Trainer
from xecmae.train.metrics import MetricSums

log = logging.getLogger(__name__)


class Interrupt:
    """SIGTERM/SIGUSR1 (SLURM preemption or time limit) ask for a checkpoint at the next step.

    A signal may reach one rank only (or the ranks at different steps): :meth:`stop_now` asks
    every rank, so all of them stop after the same step instead of one waiting forever in the
    next gradient all-reduce while another saves.
    """

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        log.warning("signal %d received: saving the last checkpoint at the next step", signum)

    def stop_now(self) -> bool:
        """Whether any rank has been signalled (a collective: every rank calls it after every optimizer step)."""
        return dist.any_rank(self.requested)


class StepCheckpoints(Protocol):
    def after_step(self, step: int) -> Any: ...


@dataclass
class EpochResult:
    metrics: dict[str, float]  # the epoch's training metrics, summed over ranks; empty when stopped
    events_per_s: float  # all ranks' events
    stopped: str | None = None  # "signal" | "max_steps" when the run stops inside the epoch


def train_one_epoch(trainer: Trainer, loader: Iterable[dict[str, torch.Tensor]], *, batches: int,
                    log_interval: int, max_steps: int, interrupt: Interrupt, checkpoints: StepCheckpoints,
                    hooks: Hooks) -> EpochResult:
    """Train on the first ``batches`` batches of ``loader``, skipping those an interrupted run did.

    Runs on every rank (the stop check and the end-of-epoch sums are collectives). On return the
    trainer's state counts the epoch as done unless ``stopped``.
    """
    state = trainer.state
    skip = state.epoch_batches
    sums = state.epoch_sums if skip and state.epoch_sums is not None else MetricSums()
    state.epoch_sums = sums  # a checkpoint inside the epoch carries the running sums
    interval, throughput, any_valid = MetricSums(), Throughput(), skip > 0
    hooks.epoch_start(state.epoch, batches, skip)
    for index, batch in enumerate(loader):
        if index < skip:
            continue  # already trained on before the interruption
        if index >= batches:
            break
        any_valid = any_valid or bool(batch["valid"].any())  # on the host: read until the first sensor that counts
        stats = trainer.train_step(batch)
        sums.add(stats)
        interval.add(stats)
        throughput.add(len(batch["x"]) * dist.world_size())
        hooks.batch()
        if state.batch % trainer.accum:
            continue  # gradients accumulate; no optimizer step yet
        if state.step % log_interval == 0:
            trainer.check_health()
            values = interval.compute() | {"lr": trainer.scheduler.get_last_lr()[0]}  # the host read
            interval.reset()
            hooks.log(state.step, values, throughput.rate())
        checkpoints.after_step(state.step)
        signalled = interrupt.stop_now()
        if signalled or (max_steps and state.step >= max_steps):
            hooks.epoch_trained()
            return EpochResult({}, throughput.rate(), "signal" if signalled else "max_steps")
    hooks.epoch_trained()
    trainer.check_health()
    rate = throughput.rate()
    if not dist.all_reduce_sum(torch.tensor(float(any_valid), device=trainer.device)).item():
        raise UserError("data.train_path: no event of this epoch has a single valid sensor (every npho is "
                        "dead, NaN or inf): nothing to learn from; check the input files")
    sums.reduce()
    metrics = sums.compute()
    state.epoch, state.epoch_batches, state.epoch_sums = state.epoch + 1, 0, None
    return EpochResult(metrics, rate)


class EpochReport(Protocol):
    """Sees the validation batches of one epoch and turns them into metrics and files."""

    def on_batch(self, batch: dict[str, torch.Tensor], extras: Any) -> None: ...

    def finish(self) -> dict[str, float]:
        """Extra validation metrics; runs on every rank (collectives allowed)."""

    def write(self, run_dir, artifacts: Hooks) -> list | None:
        """Files and plots (rank 0 only); ``artifacts.log_artifact(path, folder)`` keeps one with the run.
        Returns the files written, for the hooks (None: nothing to tell)."""

    def abort(self) -> None: ...


def validate(trainer: Trainer, loader: Iterable[dict[str, torch.Tensor]],
             report: EpochReport | None) -> dict[str, float]:
    """The validation metrics of the training objective, plus the report's; the report is aborted on failure."""
    try:
        metrics = trainer.evaluate(loader, on_batch=report.on_batch if report else None)
        if report:
            metrics |= report.finish()
        return metrics
    except BaseException:
        if report:
            report.abort()
        raise
