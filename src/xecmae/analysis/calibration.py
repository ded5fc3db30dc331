"""The calibration that turns classical measurements into position, energy and time estimates.

Fitted on labelled events only (their truth), saved as plain JSON, applied to any other events:
the events a calibration is scored on must never be the ones it was fitted on.

- **position** (cm): ``truth u, v, w ~ A . terms`` by least squares, the terms
  :data:`POSITION_TERMS` of the fitted point (u, v, w), its log intensity and the quadratic terms
  that describe the fit's depth-dependent pull towards the light's centroid;
- **energy** (GeV): ``log E ~ b . terms`` (:data:`ENERGY_TERMS`): the log of the coverage-corrected
  light ``total / coverage`` and a quadratic in the fitted depth w (shallow events lose light the
  ideal model does not describe; a slope in the log light absorbs a non-linear response);
- **time** (ns): one offset, the median of ``timeTruth - time`` (the first photon's delay).

Each least-squares fit is made robust by refitting :data:`ROBUST_ROUNDS` times without the events
whose residual lies beyond :data:`ROBUST_CUT` times the 68% half width from the median residual
(failed fits, pile-up).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xecmae.analysis.classical import ClassicalFeatures
from xecmae.errors import UserError
from xecmae.train.resolution import half_width_68

POSITION_TERMS = ("1", "u", "v", "w", "log_intensity", "w*w", "u*w", "v*w")
ENERGY_TERMS = ("1", "log_light", "w", "w*w")
ROBUST_ROUNDS = 3
ROBUST_CUT = 4.0
MIN_EVENTS = 20
FORMAT = "xecmae-classical-calibration/1"


def position_terms(f: ClassicalFeatures) -> np.ndarray:
    """(N, len(POSITION_TERMS)) design matrix of the position calibration."""
    u, v, w = f.uvw.T
    return np.stack([np.ones_like(u), u, v, w, np.log(np.maximum(f.intensity, 1.0)), w * w, u * w, v * w], 1)


def energy_terms(f: ClassicalFeatures) -> np.ndarray:
    """(N, len(ENERGY_TERMS)) design matrix of the energy calibration."""
    w = f.uvw[:, 2]
    light = np.maximum(f.total, 1.0) / np.maximum(f.coverage, 1e-6)
    return np.stack([np.ones_like(w), np.log(light), w, w * w], 1)


def robust_lstsq(design: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares ``target ~ design @ coef``, refitted without outliers; target (N,) or (N, K)."""
    y = target.reshape(len(target), -1)
    keep = np.isfinite(design).all(1) & np.isfinite(y).all(1)
    coef = np.zeros((design.shape[1], y.shape[1]))
    for _ in range(ROBUST_ROUNDS + 1):
        coef, *_ = np.linalg.lstsq(design[keep], y[keep], rcond=None)
        residual = np.where(np.isfinite(design).all(1)[:, None], design @ coef - y, np.inf)
        centre = np.median(residual[keep], axis=0)  # the outliers pull the fit: cut around the bulk
        width = np.array([half_width_68(residual[keep, k]) for k in range(y.shape[1])])
        keep = (np.abs(residual - centre) <= ROBUST_CUT * np.maximum(width, 1e-12)).all(1)
    return coef.reshape(design.shape[1], *target.shape[1:])


@dataclass
class ClassicalCalibration:
    """Coefficients of the three calibrations and where they came from."""

    position: np.ndarray  # (len(POSITION_TERMS), 3)
    energy: np.ndarray  # (len(ENERGY_TERMS),)
    time_offset: float  # ns
    events: int  # labelled events fitted
    source: str = ""  # what they were, for reports
    meta: dict = field(default_factory=dict)

    def apply(self, f: ClassicalFeatures) -> dict[str, np.ndarray]:
        """Estimates in the units of the truth branches: position (N, 3) cm, energy (N, 1) GeV, timing (N, 1) ns."""
        return {"position": position_terms(f) @ self.position,
                "energy": np.exp(energy_terms(f) @ self.energy)[:, None],
                "timing": (f.time + self.time_offset)[:, None]}

    def to_dict(self) -> dict:
        return {"format": FORMAT, "position_terms": list(POSITION_TERMS), "position": self.position.tolist(),
                "energy_terms": list(ENERGY_TERMS), "energy": self.energy.tolist(), "time_offset_ns": self.time_offset,
                "events": self.events, "source": self.source, "meta": self.meta}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @staticmethod
    def load(path: str | Path) -> ClassicalCalibration:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read the classical calibration {path}: {exc}") from None
        if raw.get("format") != FORMAT or raw.get("position_terms") != list(POSITION_TERMS) \
                or raw.get("energy_terms") != list(ENERGY_TERMS):
            raise UserError(f"{path} is not a classical calibration of this version ({FORMAT})")
        return ClassicalCalibration(np.asarray(raw["position"], np.float64), np.asarray(raw["energy"], np.float64),
                                    float(raw["time_offset_ns"]), int(raw["events"]), str(raw.get("source", "")),
                                    dict(raw.get("meta", {})))


def fit_calibration(f: ClassicalFeatures, uvw_truth: np.ndarray, energy_truth: np.ndarray, time_truth: np.ndarray,
                    source: str = "") -> ClassicalCalibration:
    """Fit the calibration on labelled events: truth (N, 3) cm, (N,) GeV and (N,) ns."""
    if len(f) < MIN_EVENTS:
        raise UserError(f"a classical calibration needs at least {MIN_EVENTS} labelled events, got {len(f)}")
    uvw_truth = np.asarray(uvw_truth, np.float64).reshape(-1, 3)
    energy_truth = np.asarray(energy_truth, np.float64).reshape(-1)
    time_truth = np.asarray(time_truth, np.float64).reshape(-1)
    position = robust_lstsq(position_terms(f), uvw_truth)
    energy = robust_lstsq(energy_terms(f), np.log(np.maximum(energy_truth, 1e-9)))
    offset = time_truth - f.time
    offset = offset[np.isfinite(offset)]
    time_offset = float(np.median(offset)) if offset.size else float("nan")
    return ClassicalCalibration(position, energy, time_offset, len(f), source)
