"""Event displays: every face drawn in its physical coordinates (cm).

The unrolled view puts the inner face in the middle (z across, arc length ``64.97 * phi`` up),
the upstream and downstream faces left and right of it, the top and bottom PMT planes above and
below as circles at their true positions, and the outer face (fine grid, with its centre patch)
in a panel of its own. Dead sensors are grey and crossed; hidden (masked) sensors are outlined.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.colors import LogNorm, Normalize

from xecmae.detector import geometry as geo

DEAD_COLOUR = "0.75"
DEAD_EDGE = "0.2"  # dead sensors are also crossed, so they differ from dim ones
_GAP = 4.0  # cm between faces in the unrolled view
_INNER_HALF_Z = geo.INNER_SHAPE[1] * geo.INNER_DZ / 2
_INNER_ROW_ARC = geo.INNER_RADIUS * np.deg2rad(geo.INNER_DPHI)
_LATERAL_ROW_ARC = geo.INNER_RADIUS * np.deg2rad(geo.OUTER_DPHI)
_V_TOP = geo.INNER_RADIUS * np.deg2rad(46.5 * geo.INNER_DPHI)


def _cells(face: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sensor ids and rectangle corners (x0, y0, width, height) of a rectangular face."""
    if face == "inner":
        ids = geo.inner_map()
        rows, cols = np.indices(ids.shape)
        x0 = -_INNER_HALF_Z + cols * geo.INNER_DZ
        y0 = _V_TOP - (rows + 1) * _INNER_ROW_ARC
        return ids.ravel(), x0.ravel(), y0.ravel(), np.full(ids.size, geo.INNER_DZ), np.full(ids.size, _INNER_ROW_ARC)
    if face in ("us", "ds"):
        ids = geo.lateral_map(face)
        rows, rings = np.indices(ids.shape)
        width = geo.LATERAL_DR
        x_inner = -_INNER_HALF_Z - _GAP - (rings + 1) * width if face == "us" else _INNER_HALF_Z + _GAP + rings * width
        y0 = _V_TOP - (rows + 1) * _LATERAL_ROW_ARC
        return ids.ravel(), x_inner.ravel(), y0.ravel(), np.full(ids.size, width), np.full(ids.size, _LATERAL_ROW_ARC)
    if face == "outer":
        # one rectangle per sensor footprint on the fine grid; z across, phi up
        fine = geo.outer_fine_map()
        cell_z = geo.OUTER_DZ / geo.COARSE_CELL[0]
        cell_v = geo.OUTER_RADIUS * np.deg2rad(geo.OUTER_DPHI) / geo.COARSE_CELL[1]
        ids = geo.outer_ids()
        x0, y0, w, h = (np.empty(len(ids)) for _ in range(4))
        for k, sensor in enumerate(ids):
            r, c = np.nonzero(fine == sensor)
            x0[k] = (r.min() - fine.shape[0] / 2) * cell_z
            w[k] = (r.max() - r.min() + 1) * cell_z
            y0[k] = (fine.shape[1] / 2 - c.max() - 1) * cell_v
            h[k] = (c.max() - c.min() + 1) * cell_v
        return ids, x0, y0, w, h
    raise ValueError(f"{face} is not a rectangular face")


def _circles(face: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = geo.hex_ids(face)
    z, r = geo.hex_plane_coords().T
    depth = r - geo.HEX_R0 + geo.PMT_RADIUS + _GAP
    y = _V_TOP + depth if face == "top" else _V_TOP - 2 * _V_TOP - depth
    return ids, z, y


_CIRCLE_SIDES = 32


@cache
def _polygons(face: str) -> tuple[np.ndarray, np.ndarray]:
    """Sensor ids and (N, K, 2) outline corners (cm) of one face, computed once per face.

    Rectangles for the grid faces, 32-gons for the top/bottom PMTs; drawn as one
    PolyCollection, which is much faster than thousands of separate patches.
    """
    if face in geo.HEX_FACES:
        ids, x, y = _circles(face)
        angle = np.linspace(0.0, 2 * np.pi, _CIRCLE_SIDES, endpoint=False)
        ring = geo.PMT_RADIUS * np.stack([np.cos(angle), np.sin(angle)], -1)  # (K, 2)
        verts = np.stack([x, y], -1)[:, None, :] + ring[None]
    else:
        ids, x0, y0, w, h = _cells(face)
        verts = np.stack([np.stack([x0, y0], -1), np.stack([x0 + w, y0], -1),
                          np.stack([x0 + w, y0 + h], -1), np.stack([x0, y0 + h], -1)], 1)  # (N, 4, 2)
    ids.setflags(write=False)
    verts.setflags(write=False)
    return ids, verts


def draw_face(ax, face: str, values: np.ndarray, *, cmap="viridis", norm=None,
              dead: np.ndarray | None = None, hidden: np.ndarray | None = None):
    """Draw one face of a (4760,) value vector; returns the collection for a colour bar."""
    cmap = plt.get_cmap(cmap)
    ids, verts = _polygons(face)
    collection = PolyCollection(verts, cmap=cmap.with_extremes(bad=DEAD_COLOUR), norm=norm, linewidths=0)
    vals = np.asarray(values, dtype=float)[ids]
    bad = ~np.isfinite(vals) if dead is None else (np.asarray(dead)[ids] | ~np.isfinite(vals))
    if isinstance(norm, LogNorm) and norm.vmin is not None:
        vals = np.maximum(vals, norm.vmin)  # zero or negative photons: the bottom of the scale, not "dead"
    collection.set_array(np.ma.masked_array(vals, mask=bad))
    ax.add_collection(collection)
    if dead is not None and np.asarray(dead)[ids].any():
        sel = np.flatnonzero(np.asarray(dead)[ids])
        ax.add_collection(PolyCollection(verts[sel], facecolor="none", edgecolor=DEAD_EDGE, linewidths=0.3,
                                         hatch="xxx"))
    if hidden is not None and np.asarray(hidden)[ids].any():
        sel = np.flatnonzero(np.asarray(hidden)[ids])
        ax.add_collection(PolyCollection(verts[sel], facecolor="none", edgecolor="red", linewidths=0.25,
                                         alpha=0.7))
    ax.autoscale_view()
    ax.set_aspect("equal")
    return collection


def draw_unrolled(ax_main, ax_outer, values: np.ndarray, *, cmap="viridis", norm=None,
                  dead=None, hidden=None):
    """All six faces in their physical arrangement; the outer face goes to ``ax_outer``."""
    mappable = None
    for face in ("inner", "us", "ds", "top", "bottom"):
        mappable = draw_face(ax_main, face, values, cmap=cmap, norm=norm, dead=dead, hidden=hidden)
    draw_face(ax_outer, "outer", values, cmap=cmap, norm=norm, dead=dead, hidden=hidden)
    ax_main.set_xlabel("z [cm]  (US left, DS right)")
    ax_main.set_ylabel("64.97 cm x phi [cm]  (top PMTs above, bottom below)")
    ax_outer.set_xlabel("z [cm]")
    ax_outer.set_ylabel("106.27 cm x phi [cm]")
    ax_outer.set_title("outer")
    return mappable


def npho_norm(values: np.ndarray, valid: np.ndarray | None = None) -> LogNorm:
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v) & (v > 0) & (True if valid is None else np.asarray(valid))
    vmax = max(float(v[ok].max()) if ok.any() else 10.0, 10.0)
    return LogNorm(vmin=max(vmax * 1e-4, 1.0), vmax=vmax)


def linear_norm(values: np.ndarray, valid: np.ndarray | None = None, symmetric: bool = False) -> Normalize:
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v) & (True if valid is None else np.asarray(valid))
    if not ok.any():
        return Normalize(-1, 1)
    lo, hi = np.percentile(v[ok], [1, 99])
    if symmetric:
        m = max(abs(lo), abs(hi), 1e-12)
        return Normalize(-m, m)
    return Normalize(lo, hi if hi > lo else lo + 1)


def event_figure(panels: Sequence[tuple[str, np.ndarray, object, str]], *, dead=None, hidden=None,
                 title: str = "") -> plt.Figure:
    """One row per panel ``(label, values, norm, cmap)``, each drawn unrolled with its outer face."""
    fig = plt.figure(figsize=(13, 6.2 * len(panels)), layout="constrained")
    grid = fig.add_gridspec(len(panels), 2, width_ratios=(2.2, 1))
    for k, (label, values, norm, cmap) in enumerate(panels):
        ax_main, ax_outer = fig.add_subplot(grid[k, 0]), fig.add_subplot(grid[k, 1])
        mappable = draw_unrolled(ax_main, ax_outer, values, cmap=cmap, norm=norm, dead=dead, hidden=hidden)
        ax_main.set_title(label)
        fig.colorbar(mappable, ax=[ax_main, ax_outer], shrink=0.8, label=label)
    if title:
        fig.suptitle(title)
    return fig


def face_grid_figure(rows: Sequence[tuple], *, dead=None, hidden=None, title: str = "") -> plt.Figure:
    """Rows of panels (e.g. truth / masked / prediction / residual), one column per face.

    A row is ``(label, values, norm, cmap)`` or ``(label, values, norm, cmap, outline)``; hidden
    sensors are outlined in the rows whose ``outline`` is true (default true).
    """
    faces = geo.FACE_NAMES
    widths = (0.55, 0.35, 0.35, 0.5, 1.5, 1.5)  # about each face's width over its height
    fig, axes = plt.subplots(len(rows), len(faces), figsize=(17, 3.2 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": widths}, layout="constrained")
    for r, (label, values, norm, cmap, *rest) in enumerate(rows):
        outline = hidden if (rest[0] if rest else True) else None
        mappable = None
        for c, face in enumerate(faces):
            mappable = draw_face(axes[r, c], face, values, cmap=cmap, norm=norm, dead=dead, hidden=outline)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(face)
        axes[r, 0].set_ylabel(label)
        fig.colorbar(mappable, ax=axes[r, :].tolist(), shrink=0.9, label=label)
    if title:
        fig.suptitle(title)
    return fig


def geometry_figure() -> plt.Figure:
    """The six faces coloured by face, with each sensor's id parity to show the cells."""
    faces = geo.face_of_sensor().astype(float) + 0.35 * (np.arange(geo.N_SENSORS) % 2)
    norm = Normalize(0, len(geo.FACE_NAMES))
    fig = event_figure([("face index (shade alternates by sensor id)", faces, norm, "tab20")],
                       title="XEC sensors: 4092 MPPC (inner) and 668 PMT")
    return fig


def prediction_event_figure(path, entry: int = 0, channel: str = "npho") -> plt.Figure:
    """Truth, masked input, prediction, residual and mask of one event of a prediction file.

    Values are converted back to photons (npho, log scale) or nanoseconds (time) through the
    normalization stored in the file; dead sensors are grey, hidden ones outlined in red.
    """
    import uproot

    from xecmae.data.predictions import normalizer_from_metadata, read_metadata

    meta = read_metadata(path)
    if channel not in meta["predict_channels"]:
        raise ValueError(f"{path} has no {channel} predictions (channels: {', '.join(meta['predict_channels'])})")
    norm = normalizer_from_metadata(meta)
    names = [f"truth_{channel}", f"pred_{channel}", "mask", f"valid_{channel}", "event_id"]
    with uproot.open(path) as f:
        arrays = f["tree"].arrays(names, entry_start=entry, entry_stop=entry + 1, library="np")
    if len(arrays["event_id"]) == 0:
        raise ValueError(f"{path} has no entry {entry}")
    row = {k: np.asarray(v[0]) for k, v in arrays.items()}
    hidden = row["mask"] > 0.5
    valid = row[f"valid_{channel}"] > 0.5
    to_physical = norm.npho_inverse if channel == "npho" else (lambda y: norm.time_inverse(y) * 1e9)
    truth = np.where(valid, to_physical(row[f"truth_{channel}"]), np.nan)
    masked = np.where(valid & ~hidden, truth, np.nan)  # what the model saw, in the truth's units
    pred = to_physical(row[f"pred_{channel}"])
    residual = np.where(valid, pred - truth, np.nan)
    unit = "photons" if channel == "npho" else "ns"
    scale = npho_norm(truth, valid) if channel == "npho" else linear_norm(truth, valid)
    cmap = "viridis" if channel == "npho" else "plasma"
    rows = [
        (f"truth [{unit}]", truth, scale, cmap),
        (f"masked input [{unit}]", masked, scale, cmap, False),
        (f"prediction [{unit}]", pred, scale, cmap),
        (f"residual [{unit}]", np.where(hidden, residual, np.nan),
         linear_norm(residual, valid & hidden, symmetric=True), "RdBu_r", False),
        ("mask (1 = hidden)", hidden.astype(float), Normalize(0, 1), "Greys", False),
    ]
    return face_grid_figure(rows, dead=~valid, hidden=hidden,
                            title=f"{Path(path).name}: event {int(row['event_id'])}, {channel}, "
                                  f"{hidden.sum()} hidden sensors outlined")
