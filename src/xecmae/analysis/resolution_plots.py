"""Figures of a resolution report (:func:`xecmae.apps.validate.report`): residuals and resolution vs truth (PNG).

Drawn from the report's own JSON data only, so every figure can be redrawn from ``validation.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from xecmae.data.atomic import save_figure
from xecmae.train.resolution import COMPONENTS, LABELS

STYLE = {"model": {"color": "k", "label": "model"}, "classical": {"color": "tab:red", "label": "classical"}}
AXIS_LABELS = {"u": "true u [cm]", "v": "true v [cm]", "w": "true w [cm]", "energy": "true energy [GeV]"}


def _save(fig, path: Path) -> Path:
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _grid(tasks: list[str]):
    cols = max(len(COMPONENTS[t]) for t in tasks)
    fig, axes = plt.subplots(len(tasks), cols, figsize=(4.2 * cols, 3.2 * len(tasks)), squeeze=False,
                             layout="constrained")
    for row, task in enumerate(tasks):
        for k in range(len(COMPONENTS[task]), cols):
            axes[row, k].axis("off")
    return fig, axes


def plot_residuals(result: dict[str, Any], path: Path) -> Path:
    """Residual histograms per task component, model and classical estimate overlaid."""
    hists = result["residual_histograms"]
    tasks = list(hists)
    fig, axes = _grid(tasks)
    for row, task in enumerate(tasks):
        for k, component in enumerate(COMPONENTS[task]):
            ax = axes[row, k]
            for method, h in hists[task][component].items():
                ax.stairs(h["counts"], h["edges"], **STYLE[method])
            figures = result["metrics"]["model"]
            key = next((n for n in figures if n.startswith(f"{task}_res") and (component in n or task in
                                                                             ("energy", "timing"))), None)
            if key:
                ax.set_title(f"model sigma68 {figures[key]:.3g}", fontsize=9)
            ax.set_xlabel(f"{task} residual {LABELS[task][k]}")
            ax.legend(fontsize=8)
    fig.suptitle(f"residuals, {result['events']['fiducial']} fiducial events")
    return _save(fig, path)


def plot_resolution_vs(result: dict[str, Any], axis: str, path: Path) -> Path:
    """68% half width of every residual in bins of one true quantity."""
    per_task = result["resolution_vs"]
    tasks = list(per_task)
    fig, axes = _grid(tasks)
    for row, task in enumerate(tasks):
        for k, component in enumerate(COMPONENTS[task]):
            ax = axes[row, k]
            for method, b in per_task[task][axis][component].items():
                y = np.array([np.nan if v is None else v for v in b["res68"]], dtype=float)
                ax.plot(b["centres"], y, "-o", ms=3, **STYLE[method])
            ax.set_xlabel(AXIS_LABELS[axis])
            ax.set_ylabel(f"sigma68 {LABELS[task][k]}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"resolution against {AXIS_LABELS[axis]}")
    return _save(fig, path)


def plot_report(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """``residuals.png`` and ``resolution_vs_{u,v,w,energy}.png`` in ``out_dir``."""
    paths = [plot_residuals(result, out_dir / "residuals.png")]
    paths += [plot_resolution_vs(result, axis, out_dir / f"resolution_vs_{axis}.png") for axis in AXIS_LABELS]
    return paths
