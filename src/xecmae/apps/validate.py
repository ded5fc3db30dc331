"""``xecmae validate``: the resolution report of a regressor, beside the classical estimate on the same events.

Per task: bias (median residual), 68% half width and RMS, for position u, v, w (and the 68%
quantile of the 3D distance), energy (relative), time and angles (and the opening angle);
residual histograms; resolution against the true u, v, w and energy in bins of about equal
events. The classical estimate (:mod:`xecmae.apps.classical`) is reported beside the model:
with a ``calibration`` (a labelled ROOT file other than the scored one, or a saved calibration)
for position, energy and time, calibrated on those labelled events; without one for position
(the fit uncalibrated) and energy (scaled on the scored events themselves, which the report's
``classical_calibration`` says). A model trained with the Gaussian NLL also has its pulls,
(pred - truth) / sigma per component (``*_pull_bias_*``, ``*_pull_width_*``: 1 when its sigma is
right). Events are kept inside the fiducial volume on the true first
interaction (:class:`xecmae.config.FiducialConfig`; |u| < 23.9, |v| < 67.9, w >= 0 cm by default).

Writes into an output folder: ``validation.json`` (every number and every figure's data) and
the PNG figures; the folder's files appear complete or not at all (each is written under a
temporary name and renamed).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from xecmae.analysis.calibration import ClassicalCalibration
from xecmae.analysis.classical import ClassicalFeatures, classical_features
from xecmae.apps.classical import calibrated_notes, calibration_from, self_calibrated, total_npho
from xecmae.apps.events import EventSource
from xecmae.apps.regress import SIGMA, regressed_chunks, truth_of
from xecmae.apps.trained import check_run_options, load_trained
from xecmae.config import FiducialConfig, ValidationConfig
from xecmae.data.atomic import write_text
from xecmae.data.spec import CHUNK_EVENTS
from xecmae.errors import UserError
from xecmae.models.regressor import TASK_TARGETS
from xecmae.train.resolution import (
    COMPONENTS,
    binned_resolution,
    pull_metrics,
    quantile_edges,
    residuals,
    resolution_metrics,
)

log = logging.getLogger(__name__)

REPORT = "validation.json"
HIST_BINS = 60


def fiducial(uvw: np.ndarray, cuts: FiducialConfig) -> np.ndarray:
    """(N, 3) true (u, v, w) cm -> (N,) bool inside the fiducial volume."""
    return (np.abs(uvw[:, 0]) < cuts.u_max) & (np.abs(uvw[:, 1]) < cuts.v_max) & (uvw[:, 2] >= cuts.w_min)


def collect(trained, source: EventSource, chunk_events: int, batch_size: int, device: str,
            classical: bool) -> dict[str, Any]:
    """Run the model (and the classical estimates) over every event; truth, predictions, estimates."""
    tasks = tuple(trained.model.tasks)
    needed = sorted({TASK_TARGETS[t].branch for t in tasks} | {"uvwTruth", "energyTruth"})
    planned = source.plan(need_truth=needed)
    total = sum(p.entries for p in planned)
    keep: dict[str, list[np.ndarray]] = {k: [] for k in ("uvw", "energy", "total_npho")}
    features: list[ClassicalFeatures] = []
    pred: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    truth: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    sigma: dict[str, list[np.ndarray]] = {t: [] for t in getattr(trained.model, "gaussian_tasks", ())}
    norm = trained.normalizer
    with tqdm(total=total, desc="validating", unit="ev", disable=None) as bar:
        for chunk, out in regressed_chunks(trained.model, source.chunks(planned, chunk_events), batch_size,
                                           torch.device(device)):
            for task in tasks:
                pred[task].append(out[task].astype(np.float64))
                truth[task].append(truth_of(task, chunk))
            for task in sigma:
                sigma[task].append(out[task + SIGMA].astype(np.float64))
            keep["uvw"].append(np.asarray(chunk["uvwTruth"], np.float64).reshape(-1, 3))
            keep["energy"].append(np.asarray(chunk["energyTruth"], np.float64).reshape(-1))
            keep["total_npho"].append(total_npho(chunk["npho"], chunk["time"], norm))
            if classical:
                features.append(classical_features(chunk["npho"], chunk["time"], norm))
            bar.update(len(chunk["npho"]))
    joined: dict[str, Any] = {k: np.concatenate(v) for k, v in keep.items() if v}
    if features:
        joined["classical"] = ClassicalFeatures.concat(features)
    return {"tasks": tasks, "pred": {t: np.concatenate(v) for t, v in pred.items()},
            "truth": {t: np.concatenate(v) for t, v in truth.items()},
            "sigma": {t: np.concatenate(v) for t, v in sigma.items()}, "files": [p.path for p in planned], **joined}


def _histogram(values: np.ndarray, limit: float) -> dict[str, list]:
    counts, edges = np.histogram(values, bins=HIST_BINS, range=(-limit, limit))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


def _limit(*arrays: np.ndarray) -> float:
    joined = np.concatenate([np.abs(a) for a in arrays if a.size])
    value = float(np.percentile(joined, 99)) if joined.size else 1.0
    return value if value > 0 and math.isfinite(value) else 1.0


def classical_estimates(data: dict[str, Any], inside: np.ndarray, calibration: ClassicalCalibration | None
                        ) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any]]:
    """The classical estimates of the model's tasks on the fiducial events, their notes and the calibration used."""
    features = data["classical"].subset(inside) if "classical" in data else None
    if calibration is not None and features is not None:
        estimates, notes = calibration.apply(features), calibrated_notes(calibration)
        used = {"scored_events": False, "source": calibration.source, "events": calibration.events}
    else:
        estimates, notes = self_calibrated(features, data["total_npho"][inside], data["energy"][inside])
        used = {"scored_events": True, "source": "the scored events themselves (no --calibration given)",
                "events": int(inside.sum())}
    tasks = set(data["tasks"])
    return ({t: e for t, e in estimates.items() if t in tasks}, {t: n for t, n in notes.items() if t in tasks},
            used)


def report(data: dict[str, Any], cfg: ValidationConfig, calibration: ClassicalCalibration | None = None
           ) -> dict[str, Any]:
    """Every number and figure of the report, as plain JSON-able data."""
    inside = fiducial(data["uvw"], cfg.fiducial)
    n = int(inside.sum())
    if n == 0:
        raise UserError(f"no event inside the fiducial volume ({cfg.fiducial.model_dump()}) of "
                        f"{len(inside)} events")
    estimates: dict[str, dict[str, np.ndarray]] = {"model": {t: data["pred"][t][inside] for t in data["tasks"]}}
    classical, notes, used = classical_estimates(data, inside, calibration)
    estimates["classical"] = classical
    truth = {t: data["truth"][t][inside] for t in data["tasks"]}
    true_axes = {"u": data["uvw"][inside, 0], "v": data["uvw"][inside, 1], "w": data["uvw"][inside, 2],
                 "energy": data["energy"][inside]}
    edges = {axis: quantile_edges(values, cfg.bins) for axis, values in true_axes.items()}
    out: dict[str, Any] = {"events": {"read": len(inside), "fiducial": n},
                           "fiducial_cuts_cm": cfg.fiducial.model_dump(), "classical_estimates": notes,
                           "classical_calibration": used,
                           "metrics": {}, "residual_histograms": {}, "resolution_vs": {}}
    for method, preds in estimates.items():
        out["metrics"][method] = {}
        for task, p in preds.items():
            out["metrics"][method] |= resolution_metrics(task, p, truth[task])
    for task, sigma in data.get("sigma", {}).items():
        out["metrics"]["model"] |= pull_metrics(task, estimates["model"][task], truth[task], sigma[inside])
    for task in data["tasks"]:
        per_method = {m: residuals(task, preds[task], truth[task]) for m, preds in estimates.items() if task in preds}
        hists: dict[str, Any] = {}
        for component in COMPONENTS[task]:
            limit = _limit(*(r[component] for r in per_method.values()))
            hists[component] = {m: _histogram(r[component], limit) for m, r in per_method.items()}
        out["residual_histograms"][task] = hists
        out["resolution_vs"][task] = {
            axis: {component: {m: binned_resolution(true_axes[axis], r[component], edges[axis])
                               for m, r in per_method.items()} for component in COMPONENTS[task]}
            for axis in true_axes}
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def check_output_dir(out_dir: Path) -> None:
    """The folder exists (or its parent does, to create it) and can be written."""
    target = out_dir if out_dir.exists() else out_dir.parent
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"cannot write into {out_dir}: it is a file, not a folder")
    if not target.is_dir():
        raise UserError(f"cannot write into {out_dir}: {target} does not exist")
    if not os.access(target, os.W_OK):
        raise UserError(f"cannot write into {out_dir}: {target} is not writable")


def validation_config(trained, config: dict | None, cuts: dict[str, float] | None) -> ValidationConfig:
    """The checkpoint's ``validation`` section, updated by ``config`` (a mapping) and then ``cuts``."""
    from xecmae.configload import validate as validate_config

    settings = trained.cfg.validation.model_dump()
    for key, value in (config or {}).items():
        settings[key] = settings[key] | value if isinstance(value, dict) and key in settings else value
    settings["fiducial"] |= {k: v for k, v in (cuts or {}).items() if v is not None}
    return validate_config(settings, ValidationConfig)


def check_apart(calibration, source: EventSource) -> None:
    """Refuse a labelled calibration file that is also one of the scored files."""
    if str(calibration).endswith(".json"):
        return
    from xecmae.data.sources import resolve_inputs

    def files(inputs) -> set[Path]:
        return {Path(p).resolve() for p in resolve_inputs(list(inputs) if not isinstance(inputs, str) else inputs)}

    shared = files(calibration) & files(source.inputs)
    if shared:
        raise UserError(f"the calibration file(s) {', '.join(sorted(map(str, shared)))} are also scored: calibrate "
                        "on labelled events the report does not score")


def validate_regressor(checkpoint: str | Path, inputs, out_dir: str | Path, *, source: EventSource | None = None,
                       cuts: dict[str, float] | None = None, config: dict | None = None,
                       chunk_events: int = CHUNK_EVENTS, batch_size: int = 256, device: str = "cpu",
                       classical: bool = True, plots: bool = True, calibration=None) -> dict[str, Any]:
    """Write ``validation.json`` and the PNG figures into ``out_dir``; returns the report.

    ``calibration``: labelled ROOT file(s) (with uvwTruth, energyTruth, timeTruth) to calibrate
    the classical estimates on, a saved calibration ``.json``, or a
    :class:`~xecmae.analysis.calibration.ClassicalCalibration`; None calibrates on the scored
    events (and the report says so).

    Fiducial cuts and binning: the checkpoint's ``validation`` section, then ``config`` (a
    ``validation`` mapping, e.g. from a YAML), then ``cuts`` (``u_max``, ``v_max``, ``w_min``).
    """
    out_dir = Path(out_dir)
    check_run_options(chunk_events, batch_size, device)
    check_output_dir(out_dir)
    source = source or EventSource(inputs)
    trained = load_trained(checkpoint, ("regressor",), "a resolution report", device)
    cfg = validation_config(trained, config, cuts)
    if calibration is not None and not classical:
        raise UserError("a classical calibration was given but the classical estimates are switched off")
    if calibration is not None and not isinstance(calibration, ClassicalCalibration):
        check_apart(calibration, source)
        calibration = calibration_from(calibration, trained.normalizer, chunk_events)
    data = collect(trained, source, chunk_events, batch_size, device, classical)
    result = {"checkpoint": trained.describe(), "inputs": data["files"], **report(data, cfg, calibration)}
    out_dir.mkdir(exist_ok=True)
    figures = []
    if plots:
        from xecmae.analysis.resolution_plots import plot_report

        figures = [str(p) for p in plot_report(result, out_dir)]
    result["figures"] = figures
    write_text(out_dir / REPORT, json.dumps(_json_safe(result), indent=1))
    return result
