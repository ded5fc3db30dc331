"""Fine-tuning: regression of gamma position, energy, timing and angle from the (pre-trained) encoder.

``checkpoint.resume_from`` decides how the run starts (see :mod:`xecmae.train.initialize`): a
regression checkpoint resumes everything; an MAE checkpoint or bare encoder weights give the
encoder only, with a fresh optimizer, EMA started from the loaded weights and epochs from 1.

Validation adds the physicist's figures per task from :mod:`xecmae.train.resolution`: bias
(median residual), resolution (half the central 68% interval, or the 68% quantile of a distance
or opening angle) and RMS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xecmae.config import RegressorConfig, RunConfig
from xecmae.models.regressor import LOG_VAR, TASK_TARGETS, XECRegressor, build_regressor
from xecmae.train import distributed as dist
from xecmae.train.architecture import adopt_architecture
from xecmae.train.deadtraining import with_dead_channels
from xecmae.train.engine import RunSpec, fit
from xecmae.train.hooks import Hook
from xecmae.train.initialize import checkpoint_kind, init_encoder
from xecmae.train.losses import Stats, gaussian_nll, point_loss
from xecmae.train.resolution import pull_metrics, resolution_metrics
from xecmae.train.tracking import Tracker

log = logging.getLogger(__name__)


class RegressionObjective:
    """Weighted sum over tasks of the mean point loss (or Gaussian NLL) on scaled targets."""

    def __init__(self, cfg: RegressorConfig):
        t = cfg.training
        self.tasks = tuple(cfg.model.tasks)
        self.loss_fn = {task: cfg.task_loss(task) for task in self.tasks}
        self.weight = {task: t.task_weights.get(task, 1.0) for task in self.tasks}
        self.beta = t.loss_beta
        self.nll_beta = t.nll_beta

    def __call__(self, model: nn.Module, raw: nn.Module, batch: dict[str, torch.Tensor],
                 generator: torch.Generator, autocast: Callable, training: bool) -> tuple[torch.Tensor, Stats, Any]:
        with autocast():
            pred = model(batch["x"], batch["valid"])  # {task: (B, size)}
        events = batch["x"].new_full((), float(len(batch["x"])))  # filled on the device, no host copy
        total = events.new_zeros(())
        stats: Stats = {}
        targets = {}
        for task in self.tasks:
            target = TASK_TARGETS[task].encode(batch[TASK_TARGETS[task].branch])  # (B, size)
            if self.loss_fn[task] == "gaussian_nll":
                loss = gaussian_nll(pred[task].float(), pred[task + LOG_VAR].float(), target, self.nll_beta).mean()
            else:
                loss = point_loss(pred[task].float(), target, self.loss_fn[task], self.beta).mean()
            total = total + self.weight[task] * loss
            stats[f"loss_{task}"] = (loss.detach() * events, events)
            targets[task] = target
        stats["total_loss"] = (total.detach() * events, events)
        return total, stats, (pred, targets)


# --- validation report ------------------------------------------------------------------------------------
RegressionPlot = Callable[[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, Path, str], Path]
"""``plot(pred, truth, depth, path, title) -> path``: draws one epoch's regression figures (attached by the caller,
so training never imports the plotting layer)."""


class RegressionReport:
    """Collects validation predictions, computes resolutions (all ranks), plots them (rank 0)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, epoch: int, plot: RegressionPlot | None):
        self.tasks = tuple(cfg.model.tasks)
        self.epoch, self.plot = epoch, plot
        self.pred: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        self.truth: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        self.sigma: dict[str, list[np.ndarray]] = {}
        self.depth: list[np.ndarray] = []
        self.metrics: dict[str, float] = {}

    def on_batch(self, batch: dict[str, torch.Tensor], extras) -> None:
        pred, targets = extras
        for task in self.tasks:
            spec = TASK_TARGETS[task]
            self.pred[task].append(spec.decode(pred[task].float()).cpu().numpy())
            self.truth[task].append(spec.decode(targets[task]).cpu().numpy())
            if task + LOG_VAR in pred:
                self.sigma.setdefault(task, []).append(spec.decode_sigma(pred[task + LOG_VAR].float()).cpu().numpy())
        self.depth.append(batch["uvwTruth"][:, 2].float().cpu().numpy())

    def finish(self) -> dict[str, float]:
        gathered = _gather({"pred": self.pred, "truth": self.truth, "depth": self.depth, "sigma": self.sigma})
        self.pred = {t: np.concatenate([a for g in gathered for a in g["pred"][t]]) for t in self.tasks}
        self.truth = {t: np.concatenate([a for g in gathered for a in g["truth"][t]]) for t in self.tasks}
        self.depth = np.concatenate([a for g in gathered for a in g["depth"]])
        self.sigma = {t: np.concatenate([a for g in gathered for a in g["sigma"][t]]) for t in self.sigma}
        for task in self.tasks:
            self.metrics |= resolution_metrics(task, self.pred[task], self.truth[task])
            if task in self.sigma:
                self.metrics |= pull_metrics(task, self.pred[task], self.truth[task], self.sigma[task])
        return self.metrics

    def write(self, run_dir: Path, tracker: Tracker) -> None:
        if self.plot is None:
            return
        path = self.plot(self.pred, self.truth, self.depth, run_dir / f"regression_epoch_{self.epoch}.png",
                               title=f"{run_dir.name}, epoch {self.epoch}")
        tracker.log_artifact(path, "plots")

    def abort(self) -> None:
        pass


def _gather(obj) -> list:
    if not dist.is_distributed():
        return [obj]
    out = [None] * dist.world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def regression_report(plot: RegressionPlot | None) -> Callable[[RunConfig, Path, int, bool], RegressionReport]:
    """Reports that draw with ``plot`` every ``checkpoint.root_save_interval`` epochs and at the end."""
    def make(cfg: RunConfig, run_dir: Path, epoch: int, last: bool) -> RegressionReport:
        due = epoch % cfg.checkpoint.root_save_interval == 0 or last
        return RegressionReport(cfg, run_dir, epoch, plot if due else None)

    return make


# --- parameter groups, starting weights ------------------------------------------------------------------
def encoder_lr_groups(model: nn.Module, cfg: RunConfig) -> list[dict]:
    """The encoder at ``training.encoder_lr`` (when set), everything else at ``training.lr``."""
    t = cfg.training
    named = list(model.named_parameters())
    if t.encoder_lr is None:
        return [{"named": named, "lr": t.lr}]
    return [{"named": [(n, p) for n, p in named if n.startswith("encoder.")], "lr": t.encoder_lr},
            {"named": [(n, p) for n, p in named if not n.startswith("encoder.")], "lr": t.lr}]


def init_regressor(cfg: RegressorConfig) -> Callable[[nn.Module, dict, str], None]:
    def init(model: XECRegressor, ckpt: dict, path: str) -> None:
        kind = checkpoint_kind(ckpt, path)
        if kind == "regressor":  # another regression run (other tasks or a fresh start): its encoder
            log.info("%s is a regression checkpoint of another run: starting from its encoder", path)
        init_encoder(model, ckpt, path, cfg)

    return init


def finetune(cfg: RegressorConfig, plot: RegressionPlot | None = None, hooks: Sequence[Hook] = ()) -> Path:
    """Train the regressor; returns the run directory. ``plot`` draws the validation figures
    (the command line attaches :func:`xecmae.analysis.plots.plot_regression`); None = numbers only.

    The encoder's shape comes from ``checkpoint.resume_from`` when that names a checkpoint
    (:func:`xecmae.train.architecture.adopt_architecture`). With ``training.dead_channels.fraction``
    the training batches get random dead channels (:mod:`xecmae.train.deadtraining`), filled by
    ``training.dead_channels.filler`` when it names an inpainter.
    """
    cfg = adopt_architecture(cfg)
    objective = with_dead_channels(RegressionObjective(cfg), cfg.training.dead_channels, cfg.normalizer())
    return fit(cfg, RunSpec(kind="regressor", build_model=build_regressor, objective=objective,
                            truth=True, init_from=init_regressor(cfg), param_groups=encoder_lr_groups,
                            make_report=regression_report(plot)), hooks)
