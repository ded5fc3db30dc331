"""Which checkpoint files a run writes, and when: the rules apart from the training.

A run of kind K writes, in its run directory,

- ``K_checkpoint_last.pth``: every ``checkpoint.save_every_steps`` optimizer steps, at every
  epoch end, when the run stops early (``training.max_steps`` or a signal), and when validation
  fails (so the epoch's training is kept);
- ``K_checkpoint_best.pth``: at an epoch end whose score (validation loss, else training loss)
  is the best so far, written *before* ``last``, so a kill in between never leaves ``last``
  naming a best that is not there; a legacy ``checkpoint.save_path`` ending in ``.pth``
  receives a copy;
- ``K_checkpoint_epoch_N.pth`` every ``checkpoint.save_interval`` epochs;
- ``K_encoder_epoch_N.pth`` (the encoder's state_dict, EMA weights when there are) every
  ``save_interval`` epochs and after the last epoch, for kinds that export their encoder.

:class:`CheckpointPolicy` only decides (paths, in write order); :class:`Checkpoints` writes
what it decides, from rank 0, through :func:`xecmae.train.checkpoint.save_checkpoint`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from xecmae.train.checkpoint import save_checkpoint

What = Literal["checkpoint", "encoder"]


@dataclass(frozen=True)
class Planned:
    """One file to write: a full checkpoint or the encoder's weights."""

    path: Path
    what: What = "checkpoint"


@dataclass(frozen=True)
class CheckpointPolicy:
    run_dir: Path
    kind: str  # "mae" | "inpainter" | "regressor": the file names' prefix
    save_every_steps: int = 0  # 0 = only at epoch ends
    save_interval: int = 0  # epochs; 0 = no per-epoch files
    encoder_export: bool = True
    best_copy: Path | None = None  # the legacy save_path

    @classmethod
    def from_config(cls, ck: Any, run_dir: Path, kind: str, encoder_export: bool = True) -> CheckpointPolicy:
        """From a ``checkpoint`` config section; ``save_path`` counts only when it names a ``.pth`` file."""
        copy = Path(ck.save_path) if ck.save_path and ck.save_path.endswith(".pth") else None
        return cls(Path(run_dir), kind, ck.save_every_steps, ck.save_interval, encoder_export, copy)

    def file(self, what: str) -> Path:
        return self.run_dir / f"{self.kind}_{what}.pth"

    @property
    def last(self) -> Path:
        return self.file("checkpoint_last")

    def after_step(self, step: int) -> list[Planned]:
        """After optimizer step ``step`` (counted from 1 over the whole run)."""
        due = self.save_every_steps and step % self.save_every_steps == 0
        return [Planned(self.last)] if due else []

    def at_stop(self) -> list[Planned]:
        """The run stops before its last epoch ends (max_steps, a signal) or its validation failed."""
        return [Planned(self.last)]

    def end_of_epoch(self, epoch: int, improved: bool, final: bool) -> list[Planned]:
        """After epoch ``epoch`` (from 1); ``improved``: its score is the best so far; ``final``: the last epoch."""
        planned = []
        if improved:
            planned.append(Planned(self.file("checkpoint_best")))
            if self.best_copy is not None:
                planned.append(Planned(self.best_copy))
        planned.append(Planned(self.last))
        periodic = bool(self.save_interval) and epoch % self.save_interval == 0
        if periodic:
            planned.append(Planned(self.file(f"checkpoint_epoch_{epoch}")))
        if self.encoder_export and (periodic or final):
            planned.append(Planned(self.file(f"encoder_epoch_{epoch}"), "encoder"))
        return planned


class Checkpoints:
    """Writes what the policy plans; a no-op where ``enabled`` is false (every rank but 0).

    ``payload()`` is the full checkpoint (built once per group of writes, so ``best`` and
    ``last`` of an epoch hold the same dict), ``encoder()`` the encoder's state_dict.
    """

    def __init__(self, policy: CheckpointPolicy, payload: Callable[[], dict], encoder: Callable[[], dict],
                 enabled: bool = True):
        self.policy = policy
        self.payload = payload
        self.encoder = encoder
        self.enabled = enabled

    def write(self, planned: list[Planned]) -> list[Path]:
        if not self.enabled or not planned:
            return []
        payload = None
        for item in planned:
            if item.what == "encoder":
                save_checkpoint(self.encoder(), item.path)
            else:
                payload = payload if payload is not None else self.payload()
                save_checkpoint(payload, item.path)
        return [item.path for item in planned]

    def after_step(self, step: int) -> list[Path]:
        return self.write(self.policy.after_step(step))

    def at_stop(self) -> list[Path]:
        return self.write(self.policy.at_stop())

    def end_of_epoch(self, epoch: int, improved: bool, final: bool) -> list[Path]:
        return self.write(self.policy.end_of_epoch(epoch, improved, final))
