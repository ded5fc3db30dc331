"""The files of a robustness report (:mod:`xecmae.apps.robustness`): JSON, a markdown table and one PNG.

Everything is drawn from the report's own data, so the table and the figure can be redrawn from
``robustness.json``. Each file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from xecmae.apps.validate import _json_safe
from xecmae.data.atomic import save_figure, write_text

REPORT_JSON = "robustness.json"
REPORT_MD = "robustness.md"
REPORT_PNG = "robustness.png"
FIGURE_TITLES = {"u": "u [cm]", "v": "v [cm]", "w": "w [cm]", "energy": "energy [%]"}


def _cell(fig: dict[str, float] | None, name: str) -> str:
    if not fig or fig["res"] is None or not math.isfinite(fig["res"]):
        return "-"
    scale = 100.0 if name == "energy" else 1.0  # energy in percent
    ratio, ratio_err = fig.get("ratio", math.nan), fig.get("ratio_err", math.nan)
    if not math.isfinite(ratio):
        ratio = ""
    elif math.isfinite(ratio_err) and ratio_err > 0:
        ratio = f" ({ratio:.2f} ± {ratio_err:.2f})"
    else:  # the reference itself
        ratio = f" ({ratio:.2f})"
    return f"{fig['res'] * scale:.3g} ± {fig['err'] * scale:.2g}{ratio}"


def markdown_table(result: dict[str, Any]) -> str:
    """One row per (dead fraction, method): the u, v, w (cm) and energy (%) resolutions, ratio in brackets."""
    names = [n for n in FIGURE_TITLES if any(n in figs for lv in result["levels"] for figs in lv["methods"].values())]
    lines = [f"| dead added | dead total | method | {' | '.join(FIGURE_TITLES[n] for n in names)} |",
             "|" + "---|" * (3 + len(names))]
    for level in result["levels"]:
        for method, figs in level["methods"].items():
            cells = " | ".join(_cell(figs.get(n), n) for n in names)
            lines.append(f"| {level['fraction'] * 100:g}% | {level['dead_total_mean'] * 100:.1f}% | "
                         f"{result['methods'][method]} | {cells} |")
    events = result["events"]
    lines += ["", f"Resolution = 68% half width ± bootstrap error; in brackets the ratio to the regressor with no "
                  f"added dead channel ± its paired bootstrap error (the same events resampled for both). "
                  f"{events['fiducial']} events inside the fiducial volume (of {events['read']}); "
                  f"{result['dead_maps']['kind']} dead maps, seed {result['dead_maps']['seed']}, "
                  f"{result['dead_maps']['maps_per_fraction']} maps per fraction."]
    lines += [f"Note: {note}." for note in result["notes"]]
    return "\n".join(lines) + "\n"


def plot_robustness(result: dict[str, Any], path: Path) -> Path:
    """Resolution of u, v, w and energy against the dead fraction, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in FIGURE_TITLES if any(n in f for lv in result["levels"] for f in lv["methods"].values())]
    fig, axes = plt.subplots(1, len(names), figsize=(4.0 * len(names), 3.4), squeeze=False, layout="constrained")
    x = [lv["fraction"] * 100 for lv in result["levels"]]
    for ax, name in zip(axes[0], names, strict=True):
        scale = 100.0 if name == "energy" else 1.0
        for method, label in result["methods"].items():
            figs = [lv["methods"].get(method, {}).get(name) for lv in result["levels"]]
            y = [f["res"] * scale if f else math.nan for f in figs]
            err = [f["err"] * scale if f else math.nan for f in figs]
            ax.errorbar(x, y, yerr=err, marker="o", ms=4, capsize=2, label=label)
        ax.set_xlabel("dead channels added [%]")
        ax.set_ylabel(f"resolution {FIGURE_TITLES[name]}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{result['events']['fiducial']} events, {result['dead_maps']['kind']} dead maps", fontsize=9)
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
    return path


def write_report(result: dict[str, Any], out_dir: Path, plots: bool = True) -> list[Path]:
    """``robustness.json``, ``robustness.md`` and (with ``plots``) ``robustness.png`` in ``out_dir``."""
    written = [out_dir / REPORT_JSON, out_dir / REPORT_MD]
    if plots:
        written.append(plot_robustness(result, out_dir / REPORT_PNG))
    result["files"] = [str(p) for p in written]
    write_text(out_dir / REPORT_MD, markdown_table(result))
    write_text(out_dir / REPORT_JSON, json.dumps(_json_safe(result), indent=1))
    return written
