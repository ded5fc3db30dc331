"""The classical estimates a regressor is compared with, computed on the same events.

The measurements are :mod:`xecmae.analysis.classical` (point-source fit, coverage-corrected
light, path-corrected bright-sensor time); how they become estimates depends on what labelled
events the caller has:

- **a calibration** (:class:`~xecmae.analysis.calibration.ClassicalCalibration`), fitted on a
  labelled file other than the scored one (:func:`calibration_from`: ROOT files with truth, or a
  saved ``.json``): calibrated position, energy and time, an honest comparison;
- **none** (:func:`self_calibrated`, the behaviour before calibrations existed): the fitted
  source position as it is, and the total npho of the valid sensors times one constant, the
  median of ``energyTruth / total npho`` over the scored events themselves. That constant uses
  the truth of the very events it is scored on (its bias is zero by construction); reports say so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xecmae.analysis.calibration import ClassicalCalibration, fit_calibration
from xecmae.analysis.classical import ClassicalFeatures, classical_features
from xecmae.apps.events import EventSource
from xecmae.data.spec import CHUNK_EVENTS
from xecmae.detector.normalize import Normalizer

log = logging.getLogger(__name__)

CLASSICAL_TASKS = ("position", "energy", "timing")
CALIBRATION_TRUTH = ("uvwTruth", "energyTruth", "timeTruth")


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


def self_calibrated(features: ClassicalFeatures | None, total: np.ndarray, energy_truth: np.ndarray
                    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Estimates without a labelled file (position uncalibrated, energy scaled on these events) and their notes."""
    estimates, notes = {}, {}
    if features is not None:
        estimates["position"] = features.uvw
        notes["position"] = ("point-source fit of the solid-angle light model (source position as (u, v, w)), "
                             "uncalibrated")
    energy, constant = calibrated_energy(total, energy_truth)
    estimates["energy"] = energy[:, None]
    notes["energy"] = (f"total npho of the valid sensors x {constant:.6g} GeV/photon, the median of energyTruth / "
                       "total npho over the scored events themselves (bias zero by construction)")
    return estimates, notes


def calibrated_notes(calibration: ClassicalCalibration) -> dict[str, str]:
    """What each calibrated estimate is, for reports."""
    where = f"calibrated on {calibration.events} labelled events of {calibration.source or 'another set'}"
    return {"position": f"point-source fit, linearly calibrated (u, v, w, log intensity, w^2, uw, vw); {where}",
            "energy": f"total npho / summed solid angle of the valid sensors, x exp(quadratic in fitted w); {where}",
            "timing": f"path-corrected times of the brightest sensors, minus the flight from the target, "
                      f"+ {calibration.time_offset:.4g} ns; {where}"}


def features_of(source: EventSource, chunk_events: int, normalizer: Normalizer, truth: Sequence[str] = ()
                ) -> tuple[ClassicalFeatures, dict[str, np.ndarray]]:
    """The classical measurements of every event of ``source`` and the ``truth`` branches (float64)."""
    planned = source.plan(need_truth=list(truth))
    parts, kept = [], {name: [] for name in truth}
    for chunk in source.chunks(planned, chunk_events):
        parts.append(classical_features(chunk["npho"], chunk["time"], normalizer))
        for name in truth:
            kept[name].append(np.asarray(chunk[name], np.float64))
    return ClassicalFeatures.concat(parts), {name: np.concatenate(v) for name, v in kept.items()}


def calibration_from(inputs: str | Sequence[str], normalizer: Normalizer, chunk_events: int = CHUNK_EVENTS,
                     source: EventSource | None = None) -> ClassicalCalibration:
    """A calibration read from a ``.json`` file, or fitted on labelled ROOT files (with truth)."""
    if isinstance(inputs, str | Path) and str(inputs).endswith(".json"):
        return ClassicalCalibration.load(inputs)
    source = source or EventSource(inputs)
    features, truth = features_of(source, chunk_events, normalizer, CALIBRATION_TRUTH)
    label = inputs if isinstance(inputs, str) else ", ".join(map(str, inputs))
    log.info("classical calibration: %d labelled events of %s", len(features), label)
    return fit_calibration(features, truth["uvwTruth"], truth["energyTruth"], truth["timeTruth"], str(label))
