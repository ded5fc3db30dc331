"""Resolution figures of a regression: the one place fine-tuning, prediction, validation and benchmarks read.

Every figure is in physical units: position u, v, w in cm, energy relative to the true energy,
time in ns, angles in degrees. The bias is the median residual, the resolution the half width
of the central 68% interval (sigma for a Gaussian, robust to tails), beside the RMS; a 3D
distance or an opening angle is summarised by its 68% quantile.
"""

from __future__ import annotations

import itertools

import numpy as np

from xecmae.detector.geometry import uvw_to_xyz

COMPONENTS: dict[str, tuple[str, ...]] = {"position": ("u", "v", "w"), "energy": ("rel",), "timing": ("t",),
                                          "angle": ("theta", "phi")}
"""Residual components per task, in the order of the task's target."""
UNITS: dict[str, str] = {"position": "cm", "energy": "", "timing": "ns", "angle": "deg"}
LABELS: dict[str, tuple[str, ...]] = {"position": ("u [cm]", "v [cm]", "w [cm]"), "energy": ("(E - E_true) / E_true",),
                                      "timing": ("t [ns]",), "angle": ("theta [deg]", "phi [deg]")}
MIN_EVENTS_PER_BIN = 4


def half_width_68(values: np.ndarray) -> float:
    """Half the width of the central 68% interval: sigma for a Gaussian, robust to tails (nan if empty)."""
    values = np.asarray(values)
    if values.size == 0:
        return float("nan")
    lo, hi = np.percentile(values, [16, 84])
    return float(hi - lo) / 2


def rms(values: np.ndarray) -> float:
    """Root mean square (about zero, so it includes the bias); nan if empty."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.sqrt(np.mean(values**2))) if values.size else float("nan")


def direction(theta_deg: np.ndarray, phi_deg: np.ndarray) -> np.ndarray:
    """Unit vector from emiAng: theta from +z, phi = atan2(y, -x)."""
    theta, phi = np.deg2rad(theta_deg), np.deg2rad(phi_deg)
    return np.stack([-np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)


def residuals(task: str, pred: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-component residuals of one task, ``pred`` and ``truth`` (N, size) in physical units.

    Energy is relative, (E - E_true) / E_true; every other component is pred - truth.
    """
    residual = pred - truth
    if task == "energy":
        return {"rel": residual[:, 0] / truth[:, 0]}
    return {name: residual[:, k] for k, name in enumerate(COMPONENTS[task])}


def summary_distance(task: str, pred: np.ndarray, truth: np.ndarray) -> np.ndarray | None:
    """The one-number miss per event: 3D distance (cm) for position, opening angle (deg) for angle."""
    if task == "position":
        return np.linalg.norm(uvw_to_xyz(pred) - uvw_to_xyz(truth), axis=1)
    if task == "angle":
        cos = np.clip((direction(*pred.T) * direction(*truth.T)).sum(1), -1, 1)
        return np.degrees(np.arccos(cos))
    return None


def _figure_name(task: str, component: str) -> str:
    """``position_{kind}_u_cm``, ``energy_{kind}_rel``, ``timing_{kind}_ns``, ``angle_{kind}_theta_deg``."""
    if task == "energy":
        return "energy_{kind}_rel"
    if task == "timing":
        return "timing_{kind}_ns"
    return f"{task}_{{kind}}_{component}_{UNITS[task]}"


def resolution_metrics(task: str, pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Bias and resolution of one task in physical units; ``pred`` and ``truth`` (N, size).

    Names as fine-tuning has always logged them (``position_res_u_cm``, ``energy_res_rel``,
    ``timing_res_ns``, ``angle_res_deg``...), plus ``*_rms_*`` beside every resolution.
    """
    out: dict[str, float] = {}
    for component, r in residuals(task, pred, truth).items():
        name = _figure_name(task, component)
        out[name.format(kind="bias")] = float(np.median(r)) if r.size else float("nan")
        out[name.format(kind="res")] = half_width_68(r)
        out[name.format(kind="rms")] = rms(r)
    distance = summary_distance(task, pred, truth)
    if distance is not None:
        key = "position_res_3d_cm" if task == "position" else "angle_res_deg"
        out[key] = float(np.percentile(distance, 68)) if distance.size else float("nan")
    return out


def pull_metrics(task: str, pred: np.ndarray, truth: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
    """Pulls (pred - truth) / sigma of a task with a per-event uncertainty; all (N, size), physical units.

    ``{task}_pull_bias_{component}`` (median) and ``{task}_pull_width_{component}`` (68% half width: 1 when
    sigma is right) per component; a one-component task drops the component (``energy_pull_width``).
    For energy the pull is of the absolute energy, (E - E_true) / sigma_E.
    """
    out: dict[str, float] = {}
    for k, component in enumerate(COMPONENTS[task]):
        pull = (pred[:, k] - truth[:, k]) / sigma[:, k]
        suffix = f"_{component}" if len(COMPONENTS[task]) > 1 else ""
        out[f"{task}_pull_bias{suffix}"] = float(np.median(pull)) if pull.size else float("nan")
        out[f"{task}_pull_width{suffix}"] = half_width_68(pull)
    return out


def binned_resolution(values: np.ndarray, residual: np.ndarray, edges: np.ndarray) -> dict[str, list[float]]:
    """Bias and 68% half width of ``residual`` in bins of ``values`` (bins with too few events: nan)."""
    centres, bias, width, counts = [], [], [], []
    for lo, hi in itertools.pairwise(edges):
        inside = (values >= lo) & (values < hi) if hi != edges[-1] else (values >= lo) & (values <= hi)
        r = residual[inside]
        enough = r.size >= MIN_EVENTS_PER_BIN
        centres.append(float((lo + hi) / 2))
        bias.append(float(np.median(r)) if enough else float("nan"))
        width.append(half_width_68(r) if enough else float("nan"))
        counts.append(int(r.size))
    return {"centres": centres, "edges": [float(e) for e in edges], "bias": bias, "res68": width, "events": counts}


def quantile_edges(values: np.ndarray, bins: int = 6) -> np.ndarray:
    """Bin edges holding about equal numbers of events (one bin when there are few events)."""
    if len(values) <= 2 * bins * MIN_EVENTS_PER_BIN:
        return np.array([values.min(), values.max()]) if len(values) else np.array([0.0, 1.0])
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
