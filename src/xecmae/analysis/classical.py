"""Classical per-event measurements of the gamma: what a physicist reconstructs without a network.

From the sensors alone, with the ideal light model of :mod:`xecmae.detector.light` and published
constants only (no generator secret, no truth), :func:`classical_features` gives per event:

- ``uvw`` (cm) and ``intensity`` (photons into 4 pi): the point-source fit of
  :func:`xecmae.analysis.baselines.fit_point_source` to the valid sensors;
- ``total`` (photons): the npho summed over the valid sensors, and ``coverage``: the summed ideal
  solid-angle fraction ``sum_i Omega_i(s) / 4 pi`` of those same sensors seen from the fitted point
  ``s``. ``total / coverage`` is the light into 4 pi corrected for the sensors that are dead or
  that an edge event does not see;
- ``time`` (ns, on the ``relative_time`` clock): the time of the light's emission at the fitted
  point (:func:`xecmae.detector.timing.emission_time`): the brightest sensors with a valid time
  and at least :data:`~xecmae.detector.timing.TIME_NPHO_MIN` photons, each corrected for its
  optical path ``d_i / v`` (``v`` = :data:`~xecmae.detector.light.OPTICAL_SPEED`, c / 1.61),
  combined as a trimmed photon-weighted mean (a dim event without such sensors uses any sensor
  with a valid time; none at all gives nan); minus
  the gamma's flight ``|s| / c`` from the nominal target at the origin (the MEG target sits at
  the centre of the spectrometer), so it estimates ``timeTruth`` up to an offset that the
  calibration (:mod:`xecmae.analysis.calibration`) measures on labelled events (the first
  photon's scintillation delay and the first interaction's depth make it positive).

Everything is vectorised over events (the fit in blocks of 16) on one torch thread; about 10 ms
per event on one core, almost all of it the fit.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from xecmae.analysis.baselines import fit_point_source, source_distance
from xecmae.detector.geometry import xyz_to_uvw
from xecmae.detector.light import solid_angle_fraction
from xecmae.detector.normalize import Normalizer
from xecmae.detector.threads import single_thread
from xecmae.detector.timing import SECONDS_TO_NS, TIME_NPHO_MIN, emission_time, flight_time


@dataclass
class ClassicalFeatures:
    """Per-event classical measurements, float64 numpy arrays of N events (units in the module docstring)."""

    uvw: np.ndarray  # (N, 3) cm, the fitted point source
    intensity: np.ndarray  # (N,) photons into 4 pi
    total: np.ndarray  # (N,) photons over the valid sensors
    coverage: np.ndarray  # (N,) summed Omega / 4 pi of the valid sensors from the fitted point
    time: np.ndarray  # (N,) ns, emission at the target before the calibration's offset; nan without bright times

    def __len__(self) -> int:
        return len(self.total)

    def subset(self, index) -> ClassicalFeatures:
        """The events ``index`` (a slice, indices or a boolean mask)."""
        return ClassicalFeatures(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list[ClassicalFeatures]) -> ClassicalFeatures:
        return ClassicalFeatures(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                                    for f in fields(ClassicalFeatures)})

    def save(self, path) -> None:
        """Write the features to an ``.npz`` file (plain arrays)."""
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @staticmethod
    def load(path) -> ClassicalFeatures:
        with np.load(path) as data:
            names = [f.name for f in fields(ClassicalFeatures)]
            return ClassicalFeatures(**{name: np.asarray(data[name], np.float64) for name in names})


def classical_features(npho: np.ndarray, time_s: np.ndarray, normalizer: Normalizer | None = None,
                       time_npho_min: float = TIME_NPHO_MIN) -> ClassicalFeatures:
    """(N, 4760) raw npho (photons) and relative_time (seconds) -> :class:`ClassicalFeatures`.

    Validity (dead channels, the time threshold) is the ``normalizer``'s, the model's own rule
    (the default :class:`~xecmae.detector.normalize.Normalizer` when None).
    """
    normalizer = normalizer or Normalizer()
    valid_npho, valid_time = normalizer.validity(np.asarray(npho), np.asarray(time_s))
    y = torch.from_numpy(np.where(valid_npho, npho, 0.0).astype(np.float64))
    known = torch.from_numpy(valid_npho)
    t_ns = torch.from_numpy(np.where(valid_time, time_s, 0.0).astype(np.float64) * SECONDS_TO_NS)
    with single_thread():
        fit = fit_point_source(y, known)
        omega = solid_angle_fraction(fit.position)
        coverage = torch.where(known, omega, 0.0).sum(1)
        distance = source_distance(fit.position)
        emitted = emission_time(t_ns, y, torch.from_numpy(valid_time), distance, time_npho_min)
        at_target = emitted - flight_time(fit.position)
    return ClassicalFeatures(uvw=np.asarray(xyz_to_uvw(fit.position.numpy()), np.float64),
                             intensity=fit.intensity.numpy().astype(np.float64), total=y.sum(1).numpy(),
                             coverage=coverage.numpy(), time=at_target.numpy())
