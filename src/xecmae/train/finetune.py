"""Fine-tuning: regression of gamma position, energy, timing and angle from the (pre-trained) encoder.

``checkpoint.resume_from`` decides how the run starts (see :mod:`xecmae.train.initialize`): a
regression checkpoint resumes everything; an MAE checkpoint or bare encoder weights give the
encoder only, with a fresh optimizer, EMA started from the loaded weights and epochs from 1.

Validation adds the physicist's figures per task: bias (median residual) and resolution (half
the central 68% interval, or the 68% quantile of a distance or opening angle).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xecmae.config import RegressorConfig, RunConfig
from xecmae.geometry import uvw_to_xyz
from xecmae.models.regressor import TASK_TARGETS, XECRegressor, build_regressor
from xecmae.train import distributed as dist
from xecmae.train.engine import RunSpec, fit
from xecmae.train.initialize import checkpoint_kind, init_encoder
from xecmae.train.losses import Stats, point_loss
from xecmae.train.tracking import Tracker

log = logging.getLogger(__name__)


class RegressionObjective:
    """Weighted sum over tasks of the mean point loss on scaled targets."""

    def __init__(self, cfg: RegressorConfig):
        t = cfg.training
        self.tasks = tuple(cfg.model.tasks)
        self.loss_fn = {task: t.task_loss_fn.get(task, t.loss_fn) for task in self.tasks}
        self.weight = {task: t.task_weights.get(task, 1.0) for task in self.tasks}
        self.beta = t.loss_beta

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
            loss = point_loss(pred[task].float(), target, self.loss_fn[task], self.beta).mean()
            total = total + self.weight[task] * loss
            stats[f"loss_{task}"] = (loss.detach() * events, events)
            targets[task] = target
        stats["total_loss"] = (total.detach() * events, events)
        return total, stats, (pred, targets)


# --- resolution figures ---------------------------------------------------------------------------------
def half_width_68(values: np.ndarray) -> float:
    """Half the width of the central 68% interval: sigma for a Gaussian, robust to tails."""
    lo, hi = np.percentile(values, [16, 84])
    return float(hi - lo) / 2


def direction(theta_deg: np.ndarray, phi_deg: np.ndarray) -> np.ndarray:
    """Unit vector from emiAng: theta from +z, phi = atan2(y, -x)."""
    theta, phi = np.deg2rad(theta_deg), np.deg2rad(phi_deg)
    return np.stack([-np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)


def resolution_metrics(task: str, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Bias and resolution of one task in physical units; ``pred`` and ``truth`` (N, size)."""
    residual = pred - truth
    if task == "energy":
        rel = residual[:, 0] / truth[:, 0]
        return {"energy_bias_rel": float(np.median(rel)), "energy_res_rel": half_width_68(rel)}
    if task == "timing":
        return {"timing_bias_ns": float(np.median(residual[:, 0])), "timing_res_ns": half_width_68(residual[:, 0])}
    if task == "position":
        out = {}
        for k, axis in enumerate("uvw"):
            out[f"position_bias_{axis}_cm"] = float(np.median(residual[:, k]))
            out[f"position_res_{axis}_cm"] = half_width_68(residual[:, k])
        distance = np.linalg.norm(uvw_to_xyz(pred) - uvw_to_xyz(truth), axis=1)
        out["position_res_3d_cm"] = float(np.percentile(distance, 68))
        return out
    if task == "angle":
        cos = np.clip((direction(*pred.T) * direction(*truth.T)).sum(1), -1, 1)
        opening = np.degrees(np.arccos(cos))
        return {"angle_bias_theta_deg": float(np.median(residual[:, 0])),
                "angle_bias_phi_deg": float(np.median(residual[:, 1])),
                "angle_res_deg": float(np.percentile(opening, 68))}
    raise ValueError(task)


class RegressionReport:
    """Collects validation predictions, computes resolutions (all ranks), plots them (rank 0)."""

    def __init__(self, cfg: RunConfig, run_dir: Path, epoch: int, plots: bool):
        self.tasks = tuple(cfg.model.tasks)
        self.epoch, self.plots = epoch, plots
        self.pred: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        self.truth: dict[str, list[np.ndarray]] = {t: [] for t in self.tasks}
        self.depth: list[np.ndarray] = []
        self.metrics: dict[str, float] = {}

    def on_batch(self, batch: dict[str, torch.Tensor], extras) -> None:
        pred, targets = extras
        for task in self.tasks:
            spec = TASK_TARGETS[task]
            self.pred[task].append(spec.decode(pred[task].float()).cpu().numpy())
            self.truth[task].append(spec.decode(targets[task]).cpu().numpy())
        self.depth.append(batch["uvwTruth"][:, 2].float().cpu().numpy())

    def finish(self) -> dict[str, float]:
        gathered = _gather({"pred": self.pred, "truth": self.truth, "depth": self.depth})
        self.pred = {t: np.concatenate([a for g in gathered for a in g["pred"][t]]) for t in self.tasks}
        self.truth = {t: np.concatenate([a for g in gathered for a in g["truth"][t]]) for t in self.tasks}
        self.depth = np.concatenate([a for g in gathered for a in g["depth"]])
        for task in self.tasks:
            self.metrics |= resolution_metrics(task, self.pred[task], self.truth[task])
        return self.metrics

    def write(self, run_dir: Path, tracker: Tracker) -> None:
        if not self.plots:
            return
        from xecmae.analysis.plots import plot_regression

        path = plot_regression(self.pred, self.truth, self.depth, run_dir / f"regression_epoch_{self.epoch}.png",
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


def regression_report(cfg: RunConfig, run_dir: Path, epoch: int, last: bool) -> RegressionReport:
    ck = cfg.checkpoint
    return RegressionReport(cfg, run_dir, epoch, plots=epoch % ck.root_save_interval == 0 or last)


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


def finetune(cfg: RegressorConfig) -> Path:
    """Train the regressor; returns the run directory."""
    return fit(cfg, RunSpec(kind="regressor", build_model=build_regressor, objective=RegressionObjective(cfg),
                            truth=True, init_from=init_regressor(cfg), param_groups=encoder_lr_groups,
                            make_report=regression_report))
