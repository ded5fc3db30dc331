"""Training curves and small diagnostic plots (PNG)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_loss_curves(history: Sequence[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Total loss (train and validation) and the per-channel losses per epoch, log scale."""
    path = Path(path)
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for split, style in (("train", "-o"), ("val", "-s")):
        values = [h.get(f"{split}/total_loss") for h in history]
        if any(v is not None for v in values):
            axes[0].plot(epochs, values, style, label=split)
        for channel, colour in (("npho", "tab:blue"), ("time", "tab:orange")):
            values = [h.get(f"{split}/loss_{channel}") for h in history]
            if any(v is not None for v in values):
                axes[1].plot(epochs, values, style, color=colour, alpha=0.5 if split == "train" else 1.0,
                             label=f"{split} {channel}")
    for ax, label in zip(axes, ("total loss", "loss per channel (sum over faces)"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_regression(pred: dict, truth: dict, depth, path: str | Path, title: str = "") -> Path:
    """Residual histograms per target component and the resolution versus depth w, one row per task."""
    import numpy as np

    from xecmae.train.resolution import LABELS as components
    from xecmae.train.resolution import half_width_68
    tasks = list(pred)
    fig, axes = plt.subplots(len(tasks), 4, figsize=(16, 3.2 * len(tasks)), squeeze=False, layout="constrained")
    edges = np.quantile(depth, np.linspace(0, 1, 7)) if len(depth) > 12 else np.array([depth.min(), depth.max()])
    for row, task in enumerate(tasks):
        residual = pred[task] - truth[task]
        if task == "energy":
            residual = residual / truth[task]
        for k, label in enumerate(components[task]):
            r = residual[:, k]
            lim = np.percentile(np.abs(r), 99) or 1.0
            axes[row, k].hist(r, bins=60, range=(-lim, lim), histtype="step", color="k")
            axes[row, k].set_xlabel(f"{task} residual {label}")
            axes[row, k].set_title(f"bias {np.median(r):.3g}, sigma68 {half_width_68(r):.3g}", fontsize=9)
        ax = axes[row, 3]
        centres = (edges[1:] + edges[:-1]) / 2
        for k, label in enumerate(components[task]):
            r = residual[:, k]
            res = [half_width_68(r[(depth >= lo) & (depth <= hi)]) if ((depth >= lo) & (depth <= hi)).sum() > 3
                   else np.nan for lo, hi in itertools.pairwise(edges)]
            ax.plot(centres, res, "-o", label=label)
        ax.set_xlabel("depth w [cm]")
        ax.set_ylabel("resolution (sigma68)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        for k in range(len(components[task]), 3):
            axes[row, k].axis("off")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
