"""MAE pre-training (and the inpainter, which is the same objective at a low mask ratio).

Besides the shared engine, what is particular here is the validation report: every
``root_save_interval`` epochs the reconstructions of the validation events are streamed into
``<kind>_predictions_epoch_N.root`` (an attached hook, e.g. :class:`xecmae.analysis.hooks.EventDisplay`,
may draw one of its events).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from xecmae.config import MAEConfig, RunConfig
from xecmae.models import build_mae
from xecmae.models.mae import parameter_summary
from xecmae.train import distributed as dist
from xecmae.train.engine import RunSpec, fit
from xecmae.train.hooks import Hook, Hooks
from xecmae.train.losses import LossSettings
from xecmae.train.objectives import MAEObjective

log = logging.getLogger(__name__)


class PredictionReport:
    """Streams up to ``predictions_max_events`` validation reconstructions into a prediction file."""

    def __init__(self, cfg: RunConfig, run_dir: Path, kind: str, epoch: int):
        from xecmae.data.predictions import PredictionWriter

        self.path = run_dir / f"{kind}_predictions_epoch_{epoch}.root"
        self.writer = PredictionWriter(self.path, tuple(cfg.model.predict_channels), cfg.normalizer())
        self.limit, self.count = cfg.checkpoint.predictions_max_events, 0

    def on_batch(self, batch: dict[str, torch.Tensor], extras) -> None:
        hidden, pred = extras
        n = min(self.limit - self.count, len(batch["x"]))
        if n <= 0:
            return
        cpu = {k: batch[k][:n].cpu().numpy() for k in ("event", "run", "x", "valid")}
        self.writer.add(event=cpu["event"], run=cpu["run"], x=cpu["x"], valid=cpu["valid"],
                        hidden=hidden[:n].cpu().numpy(), pred=pred[:n].float().cpu().numpy())
        self.count += n

    def finish(self) -> dict[str, float]:
        return {}

    def write(self, run_dir: Path, artifacts: Hooks) -> list[Path]:
        self.writer.close()
        log.info("predictions: %s", self.path)
        return [self.path]

    def abort(self) -> None:
        self.writer.abort()


def prediction_report(kind: str):
    def make(cfg: RunConfig, run_dir: Path, epoch: int, last: bool) -> PredictionReport | None:
        ck = cfg.checkpoint
        if not ck.save_predictions or not (epoch % ck.root_save_interval == 0 or last) or not dist.is_main():
            return None
        return PredictionReport(cfg, run_dir, kind, epoch)

    return make


def mae_objective(cfg: RunConfig) -> MAEObjective:
    return MAEObjective(LossSettings.from_training(cfg.training),
                        LossSettings.from_training(cfg.training, full_metrics=True))


def pretrain(cfg: MAEConfig, hooks: Sequence[Hook] = ()) -> Path:
    """Run MAE pre-training; returns the run directory. ``hooks``: e.g. :func:`xecmae.analysis.hooks.training_plots`."""
    return fit(cfg, RunSpec(kind="mae", build_model=build_mae, objective=mae_objective(cfg),
                            make_report=prediction_report("mae")), hooks)


def summary(cfg: RunConfig) -> str:
    """Parameters per part of the configured model."""
    return parameter_summary(build_mae(cfg))
