"""What a run tells the outside world: hooks the caller attaches, called on rank 0 only.

The training loop steps, evaluates and asks the checkpoint policy; everything else (the progress
bar, MLflow, plots) is a :class:`Hook`. A hook overrides the moments it cares about; none of
them may run a collective (they run on rank 0 alone) or read a tensor from the device outside
:meth:`Hook.on_log` (the metrics it gets are already on the host).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from xecmae.train.tracking import Tracker, flatten, resume_uri

if TYPE_CHECKING:
    from xecmae.config import RunConfig
    from xecmae.train.loop import Trainer

CONFIG_FILE = "config.yaml"


@dataclass
class RunStart:
    cfg: RunConfig
    kind: str
    run_dir: Path
    trainer: Trainer  # its ``state`` carries the MLflow run id into the checkpoints


@dataclass
class EpochEnd:
    run_dir: Path
    epoch: int  # completed, from 1
    record: dict[str, float]  # this epoch's entry of the history: epoch, lr, events_per_s, train/*, val/*
    history: list[dict[str, float]]
    improved: bool
    files: list[Path] = field(default_factory=list)  # what the epoch's validation report wrote
    log_artifact: Callable[[Path, str | None], None] = lambda path, folder=None: None


class Hook:
    """A no-op at every moment; subclasses override what they need."""

    def on_run_start(self, run: RunStart) -> None: ...

    def on_epoch_start(self, epoch: int, batches: int, done: int) -> None:
        """``epoch`` from 0; ``done`` batches were trained before an interruption."""

    def on_batch(self) -> None: ...

    def on_log(self, step: int, metrics: dict[str, float], events_per_s: float) -> None:
        """Every ``training.log_interval`` optimizer steps: this interval's training metrics and ``lr``."""

    def on_epoch_trained(self) -> None:
        """The epoch's training batches are done (or the run stopped inside it)."""

    def on_epoch_end(self, end: EpochEnd) -> None:
        """After validation and the epoch's checkpoints."""

    def on_artifact(self, path: Path, folder: str | None) -> None:
        """A file worth keeping with the run (a plot, the configuration)."""

    def on_run_end(self, status: str) -> None:
        """``status``: FINISHED, KILLED (stopped early) or FAILED."""


class Hooks:
    """Calls every hook in order."""

    def __init__(self, hooks: Sequence[Hook] = ()):
        self.hooks = list(hooks)

    def _each(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, name)(*args)

    def run_start(self, run: RunStart) -> None:
        self._each("on_run_start", run)

    def epoch_start(self, epoch: int, batches: int, done: int) -> None:
        self._each("on_epoch_start", epoch, batches, done)

    def batch(self) -> None:
        self._each("on_batch")

    def log(self, step: int, metrics: dict[str, float], events_per_s: float) -> None:
        self._each("on_log", step, metrics, events_per_s)

    def epoch_trained(self) -> None:
        self._each("on_epoch_trained")

    def epoch_end(self, end: EpochEnd) -> None:
        end.log_artifact = self.log_artifact
        self._each("on_epoch_end", end)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._each("on_artifact", Path(path), folder)

    def run_end(self, status: str) -> None:
        self._each("on_run_end", status)


class ProgressBar(Hook):
    """A tqdm bar per epoch with the loss and events/s of the last log interval."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.bar: tqdm | None = None

    def on_epoch_start(self, epoch: int, batches: int, done: int) -> None:
        self.bar = tqdm(total=batches, initial=done, desc=f"epoch {epoch + 1}/{self.epochs}", dynamic_ncols=True,
                        leave=False)

    def on_batch(self) -> None:
        self.bar.update(1)

    def on_log(self, step: int, metrics: dict[str, float], events_per_s: float) -> None:
        self.bar.set_postfix(loss=f"{metrics.get('total_loss', math.nan):.4g}", ev_s=f"{events_per_s:.0f}")

    def on_epoch_trained(self) -> None:
        self.bar.close()


class Tracking(Hook):
    """MLflow (:mod:`xecmae.train.tracking`): the parameters, step and epoch metrics, artifacts.

    A resumed run continues its MLflow run: the id and store come from the checkpoint (the
    trainer's state) and go back into it.
    """

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.tracker: Tracker | None = None

    def on_run_start(self, run: RunStart) -> None:
        m, state = self.cfg.mlflow, run.trainer.state
        self.tracker = Tracker(run.run_dir, resume_uri(m.tracking_uri, state.mlflow_uri), m.experiment, m.enabled)
        state.mlflow_run_id = self.tracker.start(m.run_name or run.run_dir.name, state.mlflow_run_id,
                                                 resumed_from=self.cfg.checkpoint.resume_from)
        state.mlflow_uri = self.tracker.uri if state.mlflow_run_id else None
        if state.step == 0:
            self.tracker.log_params(flatten(self.cfg.model_dump(mode="json")))
        self.tracker.log_artifact(run.run_dir / CONFIG_FILE)

    def on_log(self, step: int, metrics: dict[str, float], events_per_s: float) -> None:
        self.tracker.log_metrics({f"step/{k}": v for k, v in metrics.items()}, step=step)

    def on_epoch_end(self, end: EpochEnd) -> None:
        self.tracker.log_metrics({k: v for k, v in end.record.items() if k != "epoch"}, step=end.epoch)

    def on_artifact(self, path: Path, folder: str | None) -> None:
        self.tracker.log_artifact(path, folder)

    def on_run_end(self, status: str) -> None:
        if self.tracker is not None:
            self.tracker.end(status)
