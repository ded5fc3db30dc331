"""Weighted averages over each sensor's neighbours on its own face.

Shared by the classical baselines (:mod:`xecmae.analysis.baselines`) and the inpainter, which
learns a correction to exactly this estimate. ``w_ij = d_ij^-power`` for the sensors j != i of
i's face closer than ``radius`` (cm); a sensor with no usable neighbour falls back to the mean
of its face, then of the event. Batched over events; the weights are a sparse matrix built once.
"""

from __future__ import annotations

import logging
import warnings
from functools import cache

import numpy as np
import torch

from xecmae.detector import geometry as geo

log = logging.getLogger(__name__)

NEIGHBOUR_RADIUS = 20.0  # cm
NEIGHBOUR_POWER = 2.0


def neighbour_weights(radius: float = NEIGHBOUR_RADIUS, power: float = NEIGHBOUR_POWER,
                      dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
    """(4760, 4760) sparse CSR, ``w_ij = d_ij^-power`` for sensors j != i of i's face closer than ``radius`` cm.

    Symmetric; built once per (radius, power) from the 3D sensor positions.
    """
    return _converted(float(radius), float(power), dtype, str(torch.device(device)))


@cache
def _converted(radius: float, power: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    return _neighbour_weights(radius, power).to(dtype=dtype, device=device)


@cache
def _neighbour_weights(radius: float, power: float) -> torch.Tensor:
    pos = geo.sensor_positions()
    rows, cols, vals = [], [], []
    for face in geo.FACE_NAMES:
        ids = geo.face_sensor_ids(face)
        p = pos[ids]
        sq = (p * p).sum(1)
        for start in range(0, len(ids), 1024):  # row blocks keep the distance matrix small
            d2 = sq[start:start + 1024, None] + sq[None, :] - 2.0 * p[start:start + 1024] @ p.T  # (b, n) cm^2
            r, c = np.nonzero(d2 < radius * radius)
            keep = r + start != c
            r, c = r[keep], c[keep]
            rows.append(ids[r + start])
            cols.append(ids[c])
            vals.append(np.maximum(d2[r, c], 1e-12) ** (-0.5 * power))
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    order = np.lexsort((cols, rows))
    crow = np.zeros(geo.N_SENSORS + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=geo.N_SENSORS), out=crow[1:])
    log.debug("neighbour weights: radius %g cm, power %g, %d pairs", radius, power, len(rows))
    with warnings.catch_warnings():  # torch calls its sparse CSR support "beta"; it is all we use of it
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(cols[order]),
                                       torch.from_numpy(vals[order]), (geo.N_SENSORS,) * 2, check_invariants=False)


def face_onehot(dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
    """(4760, 6) 1 where sensor s belongs to face f; built once per dtype and device (a hot path)."""
    return _face_onehot(dtype, str(torch.device(device)))


@cache
def _face_onehot(dtype: torch.dtype, device: str) -> torch.Tensor:
    ids = torch.tensor(geo.face_of_sensor())
    return torch.nn.functional.one_hot(ids, len(geo.FACE_NAMES)).to(dtype=dtype, device=device)


def apply_weights(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(B, S) -> (B, S): ``out[b, i] = sum_j w_ij values[b, j]`` (w symmetric).

    While a graph is being exported (ONNX, TorchScript), which have no sparse matrices, the
    same sum is a product with the dense matrix (4760 x 4760, 90 MB in float32: a sensor of the
    inner face has about 550 neighbours within 20 cm, too many for a padded gather).
    """
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        return values @ dense_weights(weights)  # symmetric, so W^T = W
    return torch.sparse.mm(weights, values.T.contiguous()).T


_DENSE: dict[int, torch.Tensor] = {}


def dense_weights(weights: torch.Tensor) -> torch.Tensor:
    """The dense copy of a sparse weight matrix (kept per matrix: the matrices are built once)."""
    key = id(weights)
    if key not in _DENSE:
        _DENSE[key] = weights.to_dense()
    return _DENSE[key]


def local_ratio(num: torch.Tensor, den: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B, S) ``sum_j w_ij num_j / sum_j w_ij den_j`` over the neighbours; where that is empty,
    the same ratio over the sensor's face, then over the whole event, then 0.

    ``num`` and ``den`` must already be zero on the sensors that may not be used.
    """
    onehot = face_onehot(num.dtype, num.device)
    tiny = torch.finfo(num.dtype).tiny
    num_nb, den_nb = apply_weights(weights, num), apply_weights(weights, den)
    num_face, den_face = (num @ onehot) @ onehot.T, (den @ onehot) @ onehot.T  # (B, S) per-face sums
    num_all, den_all = num.sum(1, keepdim=True), den.sum(1, keepdim=True)
    out = torch.where(den_all > 0, num_all / den_all.clamp_min(tiny), 0.0).expand_as(num)
    out = torch.where(den_face > 0, num_face / den_face.clamp_min(tiny), out)
    return torch.where(den_nb > 0, num_nb / den_nb.clamp_min(tiny), out)


def neighbour_average(values: torch.Tensor, known: torch.Tensor, radius: float = NEIGHBOUR_RADIUS,
                      power: float = NEIGHBOUR_POWER) -> torch.Tensor:
    """(B, 4760) estimate of every sensor from its known neighbours, in ``values``' dtype and device.

    ``values`` in any linear unit (photons, ns); entries where ``known`` is False are ignored.
    """
    weights = neighbour_weights(radius, power, values.dtype, values.device)
    known_f = known.to(values.dtype)
    return local_ratio(torch.where(known, values, 0.0), known_f, weights)


def solid_angle_average(values: torch.Tensor, known: torch.Tensor, omega: torch.Tensor,
                        path: torch.Tensor | None = None, radius: float = NEIGHBOUR_RADIUS,
                        power: float = NEIGHBOUR_POWER) -> torch.Tensor:
    """(B, 4760) neighbour average corrected by a point-source model, in ``values``' dtype and device.

    ``omega`` (B, 4760): each sensor's solid-angle fraction seen from the event's source. Without
    ``path``, ``values`` are photons: ``omega_i * sum_j w_ij npho_j / sum_j w_ij omega_j`` (the
    neighbours' photons per unit solid angle). With ``path`` (B, 4760), the optical path time of
    every sensor in the unit of ``values`` (a time): ``path_i + sum_j w_ij omega_j (t_j - path_j)
    / sum_j w_ij omega_j``. Neighbours are weighted by ``w_ij`` times their solid angle (brighter
    neighbours are better measured); where none sees direct light, the face's (then the event's)
    known sensors take their place.
    """
    weights = neighbour_weights(radius, power, values.dtype, values.device)
    omega = omega.to(values.dtype)
    den = torch.where(known, omega, 0.0)
    if path is None:
        return omega * local_ratio(torch.where(known, values, 0.0), den, weights)
    path = path.to(values.dtype)
    return path + local_ratio(torch.where(known, (values - path) * omega, 0.0), den, weights)
