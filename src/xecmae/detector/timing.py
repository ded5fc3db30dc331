"""The classical emission time of the light at a point: bright sensors' times minus their optical paths.

Shared by the classical estimate (:func:`xecmae.analysis.classical.classical_features`) and the
regressor's in-graph start (:class:`xecmae.models.heads.PointFitTimeEstimate`), so both measure
the same thing. Written with sorts and gathers instead of ``nanmedian``: it traces, exports to
ONNX, and runs on any device without a read-back to the host.
"""

from __future__ import annotations

import torch

from xecmae.detector.light import C_LIGHT, OPTICAL_SPEED

TIME_NPHO_MIN = 500.0  # photons: about 60 photoelectrons on an MPPC, so jitter and first-photon delay < 0.2 ns
TIME_SENSORS = 32  # the brightest sensors a time estimate combines
TIME_TRIM = 3.0  # robust sigmas (1.4826 MAD) kept around the median of the corrected times
TIME_SIGMA_FLOOR = 0.05  # ns, the smallest robust sigma the trim uses
TARGET_XYZ = (0.0, 0.0, 0.0)  # cm, the nominal target centre the gamma flies from
SECONDS_TO_NS = 1e9


def _lower_median(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """(B, k) values, (B, k) bool -> (B, 1): the lower median of each row's ``ok`` values (as ``nanmedian``).

    Rows without an ``ok`` value give +inf.
    """
    ordered = torch.where(ok, values, torch.inf).sort(dim=1).values  # the unused ones sort last
    middle = ((ok.sum(1, keepdim=True) - 1).clamp_min(0)) // 2  # (B, 1)
    return ordered.gather(1, middle)


def bright_time(time_ns: torch.Tensor, npho: torch.Tensor, usable: torch.Tensor, distance: torch.Tensor,
                sensors: int = TIME_SENSORS, trim: float = TIME_TRIM) -> torch.Tensor:
    """(B,) ns: the emission time at a point, from the sensors' times corrected for the optical path.

    ``time_ns``, ``npho`` (photons), ``usable`` (bool) and ``distance`` (cm from the point) are
    (B, S). The ``sensors`` brightest usable sensors give ``t_i - d_i / v``; those within
    ``trim`` robust sigmas of their median are averaged with weights ``npho_i`` (the jitter's
    variance falls as 1 / photoelectrons). nan for an event without a usable sensor.
    """
    k = min(sensors, time_ns.shape[1])
    top, index = torch.topk(torch.where(usable, npho, -1.0), k, dim=1)  # (B, k)
    ok = top > 0
    corrected = torch.where(ok, time_ns.gather(1, index) - distance.gather(1, index) / OPTICAL_SPEED, 0.0)
    median = _lower_median(corrected, ok)  # (B, 1)
    deviation = (corrected - median).abs()
    sigma = 1.4826 * _lower_median(deviation, ok)
    keep = ok & (deviation <= trim * sigma.clamp_min(TIME_SIGMA_FLOOR))
    weight = torch.where(keep, top, 0.0)
    mean = (weight * corrected).sum(1) / weight.sum(1).clamp_min(1e-30)
    return torch.where(keep.any(1), mean, torch.nan)


def emission_time(time_ns: torch.Tensor, npho: torch.Tensor, timed: torch.Tensor, distance: torch.Tensor,
                  npho_min: float = TIME_NPHO_MIN) -> torch.Tensor:
    """(B,) ns: :func:`bright_time` over the timed sensors with at least ``npho_min`` photons.

    A dim event without such a sensor uses every timed sensor; one with none at all gives nan.
    """
    bright = bright_time(time_ns, npho, timed & (npho >= npho_min), distance)
    return torch.where(bright.isnan(), bright_time(time_ns, npho, timed, distance), bright)


def flight_time(position: torch.Tensor) -> torch.Tensor:
    """(B, 3) cm -> (B,) ns: the gamma's flight from the nominal target to ``position``."""
    offset = torch.stack([position[:, k] - c for k, c in enumerate(TARGET_XYZ)], 1)  # no host-to-device copy
    return torch.linalg.vector_norm(offset, dim=1) / C_LIGHT
