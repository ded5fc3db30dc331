"""The classical estimates a regressor is compared with, computed on the same events.

- **position**: the point-source fit of :mod:`xecmae.analysis.baselines` (Levenberg-Marquardt of
  the ideal solid-angle light model to the valid sensors), its source position taken as the
  first interaction and converted to (u, v, w) cm. About 10 ms per event on one CPU thread.
- **energy**: the total npho of the valid sensors (dead channels contribute nothing), times one
  calibration constant: the median of ``energyTruth / total npho`` over the validated events
  themselves. The calibration therefore uses the truth of the very events it is scored on: its
  bias is zero by construction, its resolution (a width) is unaffected by the constant.
- time and angles have no classical estimate here; their reports show the model alone.
"""

from __future__ import annotations

import numpy as np

from xecmae.analysis.baselines import fit_point_source, single_thread
from xecmae.geometry import xyz_to_uvw
from xecmae.normalize import Normalizer

CLASSICAL_TASKS = ("position", "energy")


def point_source_uvw(npho: np.ndarray, time: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """(N, 4760) raw npho -> (N, 3) fitted source position (u, v, w) cm."""
    valid, _ = normalizer.validity(npho, time)
    with single_thread():
        fit = fit_point_source(np.where(valid, npho, 0.0), valid)
    return np.asarray(xyz_to_uvw(fit.position.numpy()), dtype=np.float64)


def total_npho(npho: np.ndarray, time: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """(N, 4760) raw npho -> (N,) photons summed over the valid sensors."""
    valid, _ = normalizer.validity(npho, time)
    return np.where(valid, npho, 0.0).sum(axis=1, dtype=np.float64)


def calibrated_energy(total: np.ndarray, energy_truth: np.ndarray) -> tuple[np.ndarray, float]:
    """(N,) total photons and true energy (GeV) -> energy estimate (N,) GeV and the constant (GeV per photon)."""
    usable = total > 0
    if not usable.any():
        return np.full_like(total, np.nan), float("nan")
    constant = float(np.median(energy_truth[usable] / total[usable]))
    return total * constant, constant
