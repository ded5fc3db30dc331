"""Analysis of a prediction file: per-face errors in physical units, beside classical baselines.

A prediction file (:mod:`xecmae.analysis.predictions`) holds normalized values; everything here
is converted back through the normalization stored in its metadata: npho in photons, time in
ns. The predicted channels are taken from the metadata and checked against the branches, so an
npho-only file gives npho results only.

Which sensors are scored (``mode``): ``masked`` = hidden sensors with a valid truth (what the
MAE is trained and scored on), ``visible`` = not hidden and valid, ``all`` = valid. The
baselines of :mod:`xecmae.analysis.baselines` are computed from the ``masked_*`` branches, i.e.
from exactly what the model saw, and scored on the same sensors.

Per face and method: count, bias = mean(pred - truth), MAE, RMSE, and for npho the median of
``|pred - truth| / truth`` and of ``(pred - truth) / truth`` over sensors with truth >= 100
photons. The file is read in chunks; the selected sensors are kept (about 30 bytes each per
channel) so that medians are exact.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from xecmae.analysis import baselines as bl
from xecmae.data.predictions import METADATA, TREE, normalizer_from_metadata, read_metadata
from xecmae.detector import geometry as geo
from xecmae.errors import UserError

log = logging.getLogger(__name__)

MODES = ("masked", "visible", "all")
MODE_TEXT = {"masked": "hidden sensors with a valid truth", "visible": "visible sensors with a valid truth",
             "all": "all sensors with a valid truth"}
MODEL = "model"
REL_THRESHOLD = 100.0  # photons: relative npho errors are quoted above this truth
UNITS = {"npho": "photons", "time": "ns"}
CHUNK_EVENTS = 128


@dataclass
class Selection:
    """The scored sensors of one channel, flattened over events, in physical units."""

    face: np.ndarray  # (n,) int8 index into FACE_NAMES
    truth: np.ndarray  # (n,) float32 photons or ns
    npho: np.ndarray  # (n,) float32 true photons of the same sensors
    pred: dict[str, np.ndarray]  # method -> (n,) float32, same unit as truth

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.pred)


@dataclass
class Analysis:
    """Everything :func:`analyze` read from one prediction file."""

    path: Path
    channels: tuple[str, ...]
    mode: str
    face: str | None
    events: int
    data: dict[str, Selection] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def faces(self) -> tuple[str, ...]:
        return (self.face,) if self.face else geo.FACE_NAMES


# --- reading -----------------------------------------------------------------------------------------
def inspect_file(path: str | Path) -> tuple[dict[str, Any], tuple[str, ...], int]:
    """(metadata, predicted channels, entries) of a prediction file; a :class:`UserError` if it is not one.

    The channels are those named in the metadata whose ``truth_``/``masked_``/``pred_``
    branches exist (a channel named but without branches is dropped with a warning).
    """
    from xecmae.data.rootio import open_file

    with open_file(str(path)) as handle:
        return _inspect(handle, Path(path))


def _inspect(handle, path: Path) -> tuple[dict[str, Any], tuple[str, ...], int]:
    """:func:`inspect_file` on an open file."""
    names = {k.split(";")[0] for k in handle}
    if TREE not in names or METADATA not in names:
        raise UserError(f"{path}: not a prediction file (needs TTrees {TREE!r} and {METADATA!r}; "
                        f"found {', '.join(sorted(names)) or 'nothing'})")
    branches = set(handle[TREE].keys())
    entries = handle[TREE].num_entries
    meta = read_metadata(handle)
    channels = []
    for name in meta["predict_channels"]:
        missing = [f"{k}_{name}" for k in ("truth", "masked", "pred") if f"{k}_{name}" not in branches]
        if missing:
            log.warning("%s: metadata lists %s but the tree lacks %s; %s is skipped", path, name,
                        ", ".join(missing), name)
        else:
            channels.append(name)
    if "npho" not in channels:
        raise UserError(f"{path}: no npho predictions (branches truth_npho, masked_npho, pred_npho)")
    for name in ("mask", "valid_npho", "valid_time", "event_id"):
        if name not in branches:
            raise UserError(f"{path}: tree {TREE!r} has no branch {name!r}")
    return meta, tuple(channels), entries


def analyze(path: str | Path, mode: str = "masked", face: str | None = None, baselines: bool = True,
            max_events: int | None = None, chunk_events: int = CHUNK_EVENTS) -> Analysis:
    """Read a prediction file and gather the scored sensors of every channel and method.

    ``face`` restricts everything to one face; ``max_events`` to the first entries. With
    ``baselines`` the three classical estimates are computed from the masked input.
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if face is not None and face not in geo.FACE_NAMES:
        raise UserError(f"unknown face {face!r}: use one of {', '.join(geo.FACE_NAMES)}")
    if max_events is not None and max_events <= 0:
        raise UserError(f"max_events must be positive, got {max_events}")
    from xecmae.data.rootio import open_file

    face_index = geo.face_of_sensor().astype(np.int8)
    in_face = np.ones(geo.N_SENSORS, bool) if face is None else face_index == geo.FACE_NAMES.index(face)
    with open_file(str(path)) as handle:
        meta, channels, entries = _inspect(handle, Path(path))
        norm = normalizer_from_metadata(meta)
        stop = entries if max_events is None else min(entries, max_events)
        branches = ["mask", "valid_npho", "valid_time"] + [f"{k}_{c}" for c in channels
                                                           for k in ("truth", "masked", "pred")]
        parts: dict[str, list[dict[str, np.ndarray]]] = {c: [] for c in channels}
        for chunk in handle[TREE].iterate(branches, step_size=chunk_events, entry_stop=stop, library="np"):
            _collect(chunk, channels, norm, mode, in_face, face_index, baselines, parts)
    data = {}
    for c in channels:
        keys = parts[c][0].keys() if parts[c] else ["face", "truth", "npho", MODEL]
        joined = {k: np.concatenate([p[k] for p in parts[c]]) if parts[c] else np.zeros(0, np.float32)
                  for k in keys}
        methods = [k for k in joined if k not in ("face", "truth", "npho")]
        data[c] = Selection(joined["face"].astype(np.int8), joined["truth"], joined["npho"],
                            {m: joined[m] for m in methods})
    log.debug("%s: %d events, channels %s, mode %s", path, stop, ",".join(channels), mode)
    return Analysis(Path(path), channels, mode, face, stop, data, meta)


def _physical(norm, channel: str, values: np.ndarray) -> np.ndarray:
    """Normalized -> photons (npho) or ns (time), float64."""
    values = values.astype(np.float64)
    return norm.npho_inverse(values) if channel == "npho" else norm.time_inverse(values) * 1e9


def _collect(chunk: dict[str, np.ndarray], channels: tuple[str, ...], norm, mode: str, in_face: np.ndarray,
             face_index: np.ndarray, baselines: bool, parts: dict[str, list]) -> None:
    """Select the scored sensors of one chunk of entries and append them to ``parts``."""
    hidden = np.asarray(chunk["mask"]) > 0.5  # (b, S)
    valid = {"npho": np.asarray(chunk["valid_npho"]) > 0.5, "time": np.asarray(chunk["valid_time"]) > 0.5}
    truth = {c: _physical(norm, c, np.asarray(chunk[f"truth_{c}"])) for c in channels}
    masked = {c: _physical(norm, c, np.asarray(chunk[f"masked_{c}"])) for c in channels}
    known = {c: valid[c] & ~hidden for c in channels}
    estimates: dict[str, dict[str, np.ndarray]] = {}
    if baselines:
        found = bl.predict(masked["npho"], known["npho"], masked.get("time"), known.get("time"))
        estimates = {name: {c: v.numpy() for c, v in per.items()} for name, per in found.items()}
    for c in channels:
        scored = {"masked": hidden, "visible": ~hidden, "all": np.ones_like(hidden)}[mode] & valid[c] & in_face
        row = {"face": np.broadcast_to(face_index, scored.shape)[scored],
               "truth": truth[c][scored].astype(np.float32),
               "npho": truth["npho"][scored].astype(np.float32),
               MODEL: _physical(norm, c, np.asarray(chunk[f"pred_{c}"]))[scored].astype(np.float32)}
        for name, per in estimates.items():
            if c in per:
                row[name] = per[c][scored].astype(np.float32)
        parts[c].append(row)


# --- numbers ---------------------------------------------------------------------------------------------
def _stats(truth: np.ndarray, pred: np.ndarray, channel: str) -> dict[str, float]:
    err = pred.astype(np.float64) - truth
    row: dict[str, float] = {"count": len(err), "bias": math.nan, "mae": math.nan, "rmse": math.nan}
    if len(err):
        row.update(bias=float(err.mean()), mae=float(np.abs(err).mean()), rmse=float(np.sqrt((err * err).mean())))
    if channel == "npho":
        bright = truth >= REL_THRESHOLD
        rel = err[bright] / truth[bright]
        row["rel_count"] = int(bright.sum())
        row["median_abs_rel"] = float(np.median(np.abs(rel))) if len(rel) else math.nan
        row["median_rel"] = float(np.median(rel)) if len(rel) else math.nan
    return row


def face_table(analysis: Analysis) -> list[dict[str, Any]]:
    """One row per (channel, face, method), faces in detector order then ``all``.

    Keys: channel, face, method, count, bias, mae, rmse (photons or ns); for npho also
    rel_count, median_abs_rel and median_rel (truth >= 100 photons).
    """
    rows = []
    for channel in analysis.channels:
        sel = analysis.data[channel]
        groups = [(name, sel.face == geo.FACE_NAMES.index(name)) for name in analysis.faces]
        if analysis.face is None:
            groups.append(("all", np.ones(len(sel.face), bool)))
        for face, pick in groups:
            for method in sel.methods:
                rows.append({"channel": channel, "face": face, "method": method,
                             **_stats(sel.truth[pick].astype(np.float64), sel.pred[method][pick], channel)})
    return rows


def _number(value: float, width: int = 10) -> str:
    if isinstance(value, float) and math.isnan(value):
        return f"{'-':>{width}s}"
    return f"{value:>{width}.4g}"


def format_table(analysis: Analysis, rows: list[dict[str, Any]] | None = None) -> str:
    """The per-face tables as text, one per channel."""
    rows = face_table(analysis) if rows is None else rows
    lines = [f"{analysis.path}: {analysis.events} events, channels {','.join(analysis.channels)}, "
             f"mode {analysis.mode} ({MODE_TEXT[analysis.mode]})"]
    width = max([len(r["method"]) for r in rows] + [6])
    for channel in analysis.channels:
        lines.append("")
        head = f"{'face':7s} {'method':{width}s} {'sensors':>9s} {'bias':>10s} {'MAE':>10s} {'RMSE':>10s}"
        if channel == "npho":
            lines.append(f"npho [photons]; relative error (pred - truth) / truth over truth >= "
                         f"{REL_THRESHOLD:g} photons")
            head += f" {'n(>=100)':>9s} {'med|rel|':>10s} {'med rel':>10s}"
        else:
            lines.append("time [ns]")
        lines.append(head)
        previous = None
        for r in (r for r in rows if r["channel"] == channel):
            face = r["face"] if r["face"] != previous else ""
            previous = r["face"]
            text = (f"{face:7s} {r['method']:{width}s} {r['count']:>9d} {_number(r['bias'])} {_number(r['mae'])} "
                    f"{_number(r['rmse'])}")
            if channel == "npho":
                text += f" {r['rel_count']:>9d} {_number(r['median_abs_rel'])} {_number(r['median_rel'])}"
            lines.append(text)
    return "\n".join(lines)


# --- plots -------------------------------------------------------------------------------------------------
def _face_grid(faces: tuple[str, ...], title: str):
    cols = min(len(faces), 3)
    rows = math.ceil(len(faces) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False, layout="constrained")
    fig.suptitle(title)
    return fig, axes.ravel()


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)


def _error_histograms(analysis: Analysis, channel: str, out: Path, written: list[Path]) -> None:
    """Per face: the relative npho error (truth >= 100) or the time residual (ns), every method."""
    sel = analysis.data[channel]
    if channel == "npho":
        keep = sel.truth >= REL_THRESHOLD
        errors = {m: (p[keep] - sel.truth[keep]) / sel.truth[keep] for m, p in sel.pred.items()}
        span, label = 1.0, f"(pred - truth) / truth   (truth >= {REL_THRESHOLD:g} photons)"
    else:
        keep = np.ones(len(sel.truth), bool)
        errors = {m: p - sel.truth for m, p in sel.pred.items()}
        model = np.abs(errors[MODEL])
        span, label = max(1.2 * float(np.percentile(model, 99)) if len(model) else 1.0, 1.0), "pred - truth [ns]"
    faces = sel.face[keep]
    bins = np.linspace(-span, span, 81)
    fig, axes = _face_grid(analysis.faces, f"{analysis.path.name}: {channel} errors, {MODE_TEXT[analysis.mode]} "
                                           "(overflow in the edge bins)")
    for ax, face in zip(axes, analysis.faces, strict=False):
        pick = faces == geo.FACE_NAMES.index(face)
        for method, err in errors.items():
            e = err[pick]
            if len(e):
                summary = np.median(np.abs(e)) if channel == "npho" else np.sqrt(np.mean(e.astype(np.float64) ** 2))
                ax.hist(np.clip(e, -span, span), bins=bins, histtype="step", lw=1.3 if method == MODEL else 0.9,
                        label=f"{method} ({'med|rel|' if channel == 'npho' else 'RMSE'} {summary:.3g})")
        ax.set_title(f"{face} ({int(pick.sum())} sensors)")
        ax.set_xlabel(label)
        ax.set_yscale("log")
        if ax.has_data():
            ax.legend(fontsize=7)
    for ax in axes[len(analysis.faces):]:
        ax.set_visible(False)
    _save(fig, out / f"{channel}_error_by_face.png", written)


def _pred_vs_true(analysis: Analysis, out: Path, written: list[Path]) -> None:
    """Per face: the model's predicted against true npho, 2D, log axes (values below 1 at 1)."""
    sel = analysis.data["npho"]
    top = max(float(sel.truth.max()) if len(sel.truth) else 10.0, 10.0)
    edges = np.geomspace(1.0, top * 1.5, 61)
    fig, axes = _face_grid(analysis.faces, f"{analysis.path.name}: predicted vs true npho (model), "
                                           f"{MODE_TEXT[analysis.mode]}")
    counts = []
    for face in analysis.faces:
        pick = sel.face == geo.FACE_NAMES.index(face)
        t = np.clip(sel.truth[pick], 1.0, edges[-1])
        p = np.clip(sel.pred[MODEL][pick], 1.0, edges[-1])
        counts.append((np.histogram2d(t, p, bins=[edges, edges])[0], int(pick.sum())))
    scale = LogNorm(1.0, max(max(float(c.max()) for c, _ in counts), 2.0))  # one colour scale for every face
    mesh = None
    for ax, face, (count, n) in zip(axes, analysis.faces, counts, strict=False):
        if n:
            mesh = ax.pcolormesh(edges, edges, np.ma.masked_equal(count.T, 0), norm=scale, cmap="viridis")
        ax.plot(edges[[0, -1]], edges[[0, -1]], "r--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="true npho [photons]", ylabel="predicted npho [photons]",
               title=f"{face} ({n} sensors)")
    for ax in axes[len(analysis.faces):]:
        ax.set_visible(False)
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes[:len(analysis.faces)]), label="sensors", shrink=0.8)
    _save(fig, out / "npho_pred_vs_true.png", written)


def _binned(x: np.ndarray, y: np.ndarray, edges: np.ndarray, stat) -> np.ndarray:
    """``stat`` of y in each bin of x (nan where a bin has fewer than 5 entries)."""
    which = np.digitize(x, edges) - 1
    return np.array([stat(y[which == k]) if (which == k).sum() >= 5 else np.nan for k in range(len(edges) - 1)])


def _versus_npho(analysis: Analysis, channel: str, out: Path, written: list[Path]) -> None:
    """Left: the model's error against true npho (2D); right: each method's spread per npho bin."""
    sel = analysis.data[channel]
    low = 10.0 if channel == "npho" else max(float(analysis.meta.get("npho_threshold", REL_THRESHOLD)), 1.0)
    keep = sel.npho >= low
    x = sel.npho[keep]
    if channel == "npho":
        errors = {m: (p[keep] - sel.truth[keep]) / sel.truth[keep] for m, p in sel.pred.items()}
        span, ylabel, name = 1.0, "(pred - truth) / truth", "npho_rel_error_vs_true.png"
        spread, spread_label = (lambda e: np.median(np.abs(e))), "median |rel. error|"
    else:
        errors = {m: p[keep] - sel.truth[keep] for m, p in sel.pred.items()}
        model = np.abs(errors[MODEL])
        span = max(1.2 * float(np.percentile(model, 99)) if len(model) else 1.0, 1.0)
        ylabel, name = "time residual pred - truth [ns]", "time_residual_vs_npho.png"
        spread, spread_label = (lambda e: np.sqrt(np.mean(e.astype(np.float64) ** 2))), "RMS residual [ns]"
    top = max(float(x.max()) if len(x) else low * 10, low * 10)
    xedges = np.geomspace(low, top * 1.01, 41)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    fig.suptitle(f"{analysis.path.name}: {channel} error vs true npho, {MODE_TEXT[analysis.mode]}"
                 + (f", face {analysis.face}" if analysis.face else ""))
    if len(x):
        yedges = np.linspace(-span, span, 61)
        counts, _, _ = np.histogram2d(x, np.clip(errors[MODEL], -span, span), bins=[xedges, yedges])
        mesh = left.pcolormesh(xedges, yedges, np.ma.masked_equal(counts.T, 0), norm=LogNorm(), cmap="viridis")
        fig.colorbar(mesh, ax=left, label="sensors")
        centres = np.sqrt(xedges[1:] * xedges[:-1])
        left.plot(centres, _binned(x, errors[MODEL], xedges, np.median), "r-", lw=1.2, label="model median")
        left.legend(fontsize=8)
        for method, err in errors.items():
            right.plot(centres, _binned(x, err, xedges, spread), "-o", ms=2.5, lw=1.6 if method == MODEL else 1.0,
                       label=method)
        right.legend(fontsize=8)
    left.axhline(0.0, color="k", lw=0.5)
    left.set(xscale="log", xlabel="true npho [photons]", ylabel=ylabel, title="model")
    right.set(xscale="log", yscale="log" if channel == "npho" else "linear", xlabel="true npho [photons]",
              ylabel=spread_label, title="all methods")
    right.grid(alpha=0.3, which="both")
    _save(fig, out / name, written)


def write_plots(analysis: Analysis, out: str | Path) -> list[Path]:
    """Error histograms per face, predicted vs true npho, relative error vs npho and (if
    predicted) time residual vs npho, as PNGs in ``out``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for channel in analysis.channels:
        _error_histograms(analysis, channel, out, written)
    _pred_vs_true(analysis, out, written)
    _versus_npho(analysis, "npho", out, written)
    if "time" in analysis.channels:
        _versus_npho(analysis, "time", out, written)
    return written


def default_output_dir(path: str | Path) -> Path:
    """``<stem>_analysis/`` beside the prediction file."""
    path = Path(path)
    return path.with_name(f"{path.stem}_analysis")
