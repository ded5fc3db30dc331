"""Training curves and small diagnostic plots (PNG)."""

from __future__ import annotations

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
