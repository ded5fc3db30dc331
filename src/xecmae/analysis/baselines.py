"""Classical reconstructions of hidden sensors, the yardstick for the MAE.

Every baseline is a pure, batched function of what the model saw: sensor values in physical
units (photons or ns), ``known`` (B, 4760) bool = visible and valid, and for two of them a
light-source position. Each predicts *every* sensor (the sensor itself never enters its own
estimate), so a caller scores it on exactly the sensors it scores the model on; on visible
sensors that is a leave-one-out interpolation.

- **neighbour average** (``neighbour_avg``): the known sensors of the same face within
  ``radius`` (20 cm) of sensor i, weighted by ``w_ij = 1 / d_ij^power`` (power 2 by default, so
  the nearest ring counts most; power 0 gives the plain mean). A sensor without known
  neighbours gets the mean of its face's known sensors (the event's, if the face has none).
- **solid-angle weighted neighbour average** (``solid_angle_avg``): the same neighbours,
  corrected for where the light comes from. With ``Omega_j`` the solid-angle fraction of sensor
  j seen from a source estimate ``s`` (the point-source fit below) and ``d_j`` its distance,

      npho_i = Omega_i * sum_j w_ij Omega_j (npho_j / Omega_j) / sum_j w_ij Omega_j
      time_i = d_i / v + sum_j w_ij Omega_j (t_j - d_j / v) / sum_j w_ij Omega_j

  i.e. the neighbours' photons per unit solid angle, and their times with the optical path
  removed (``v`` = 18.62 cm/ns, c / 1.61 in liquid xenon), each neighbour weighted by ``w_ij``
  times its solid angle (brighter neighbours are better measured). Both are exact when the light
  follows the point-source model from ``s``. Where no known neighbour sees direct light, the
  same ratio is taken over the face's known sensors (then the event's).
- **point-source fit** (``point_source_fit``, npho only): ``npho_i = I * Omega_i(s)``, a source of
  ``I`` photons (into 4 pi) at ``s`` inside the xenon, fitted to the known sensors by
  Levenberg-Marquardt with approximately Poisson weights ``1 / (max(npho, 0) + 10^2)``,
  vectorised over events (in blocks of 16). It starts at the light-weighted centroid of the
  known sensors moved into the xenon; the intensity is solved in closed form after every step.

``Omega`` is the ideal light model of :mod:`xecmae.detector.light` (the one the generator's
``ideal`` detector uses): the on-axis solid angle of a disc of the sensor's area, times the
cosine of the incidence angle, zero for a source behind the sensor:
``Omega / 4 pi = cos / 2 * (1 - d / sqrt(d^2 + a^2))``, ``a^2 = area / pi``.

**The rule**: a baseline is what a physicist can write without the generator's secrets. It uses
only the ideal solid-angle model and, optionally (``fresnel=True`` of the point-source fit), the
MPPC Fresnel acceptance that the real-world position fit multiplies its expected MPPC light by.
It never uses the per-channel gains or efficiencies of a run, the scattering or absorption, the
shower model or any other hidden truth of the simulation. The Fresnel correction is off by
default because it did not measurably help: on 1,000 realistic 52.8 MeV events, calibrated on
1,000 others (``python bench/detector.py``), the fit's u, v, w resolutions were 0.67, 0.67,
1.99 cm without it and 0.69, 0.70, 1.96 cm with it, differences of one to two statistical
errors (the realistic light is half scattered, which no point-source model describes).
Computation is float64 torch on the CPU; the neighbour weights are a sparse (4760, 4760)
matrix built once per (radius, power).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from xecmae.detector.light import (
    OPTICAL_SPEED,
    XENON_HALF_Z,
    XENON_INNER_RADIUS,
    XENON_OUTER_RADIUS,
    XENON_PHI,
    XENON_Z_SLOPE,
    solid_angle_fraction,
)
from xecmae.detector.light import sensor_tables as _sensor_tables
from xecmae.neighbours import NEIGHBOUR_POWER, NEIGHBOUR_RADIUS, local_ratio
from xecmae.neighbours import neighbour_average as shared_average
from xecmae.neighbours import neighbour_weights as shared_weights
from xecmae.runtime import single_thread

log = logging.getLogger(__name__)

BASELINES = ("neighbour_avg", "solid_angle_avg", "point_source_fit")
"""Names of the baselines, in the order they are reported."""
FIT_NOISE = 10.0  # photons, the floor of the fit's error model
FIT_ITERATIONS = 30
FIT_BLOCK = 16  # events fitted together
FIT_MARGIN = 0.5  # cm kept between a fitted source and the walls of the xenon volume
DTYPE = torch.float64


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(a).to(DTYPE)


def _mask(a) -> torch.Tensor:
    return torch.as_tensor(a).to(torch.bool)


# --- geometry tables -----------------------------------------------------------------------------
def neighbour_weights(radius: float = NEIGHBOUR_RADIUS, power: float = NEIGHBOUR_POWER) -> torch.Tensor:
    """(4760, 4760) sparse CSR of the neighbour weights (see :mod:`xecmae.neighbours`), float64."""
    return shared_weights(radius, power, DTYPE)


def source_distance(source) -> torch.Tensor:
    """(B, 3) cm -> (B, 4760) distance in cm from the point to every sensor centre."""
    pos, _, _ = _sensor_tables()
    return torch.linalg.vector_norm(_tensor(source)[:, None, :] - pos, dim=-1)


def into_xenon(points: torch.Tensor, margin: float = FIT_MARGIN) -> torch.Tensor:
    """(B, 3) cm -> the nearest point (in r, phi, z) at least ``margin`` cm inside the xenon volume."""
    x, y, z = points.unbind(-1)
    r = torch.hypot(x, y).clamp(XENON_INNER_RADIUS + margin, XENON_OUTER_RADIUS - margin)
    phi_max = math.radians(XENON_PHI) - margin / XENON_INNER_RADIUS
    phi = torch.atan2(y, -x).clamp(-phi_max, phi_max)
    z_max = XENON_HALF_Z + XENON_Z_SLOPE * (r - XENON_INNER_RADIUS) - margin
    z = torch.maximum(torch.minimum(z, z_max), -z_max)
    return torch.stack([-r * torch.cos(phi), r * torch.sin(phi), z], -1)


def light_centroid(npho, known) -> torch.Tensor:
    """(B, 3) cm: the known sensors' positions weighted by their (positive) photons."""
    pos, _, _ = _sensor_tables()
    w = torch.where(_mask(known), _tensor(npho).clamp_min(0.0), 0.0)  # (B, S)
    total = w.sum(1, keepdim=True)
    centroid = (w @ pos) / total.clamp_min(1e-12)
    return torch.where(total > 0, centroid, pos.mean(0))  # an event without light: the detector centre


# --- baselines ------------------------------------------------------------------------------------------
def neighbour_average(values, known, radius: float = NEIGHBOUR_RADIUS, power: float = NEIGHBOUR_POWER
                      ) -> torch.Tensor:
    """(B, 4760) estimate of every sensor from its known neighbours (same face, within ``radius`` cm).

    ``values`` in any unit (photons, ns); entries where ``known`` is False are ignored. A sensor
    without known neighbours gets its face's known mean (the event's, if the face has none).
    """
    return shared_average(_tensor(values), _mask(known), radius, power)


def solid_angle_average(values, known, source, channel: str = "npho", radius: float = NEIGHBOUR_RADIUS,
                        power: float = NEIGHBOUR_POWER, omega: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 4760) neighbour average corrected by the point-source model from ``source`` (B, 3) cm.

    ``channel`` "npho" (photons): scale by the ratio of solid angles; "time" (ns): remove the
    optical path before averaging and add the sensor's own back (see the module docstring).
    Where no known neighbour sees direct light, the same estimate over the face (then the
    event) is used, which keeps it exact for the model. ``omega``: the solid-angle fractions
    of ``source``, when the caller has them already.
    """
    if channel not in ("npho", "time"):
        raise ValueError(f"channel must be 'npho' or 'time', got {channel!r}")
    known = _mask(known)
    weights = neighbour_weights(float(radius), float(power))
    omega = solid_angle_fraction(source) if omega is None else omega  # (B, S)
    v = _tensor(values)
    den = torch.where(known, omega, 0.0)
    if channel == "npho":
        return omega * local_ratio(torch.where(known, v, 0.0), den, weights)
    path = source_distance(source) / OPTICAL_SPEED  # (B, S) ns
    return path + local_ratio(torch.where(known, (v - path) * omega, 0.0), den, weights)


@dataclass
class PointSource:
    """A fitted point light source per event."""

    position: torch.Tensor  # (B, 3) cm
    intensity: torch.Tensor  # (B,) photons into 4 pi
    chi2: torch.Tensor  # (B,) weighted sum of squares over the known sensors
    known: torch.Tensor  # (B,) number of sensors fitted
    fresnel: bool = False  # the MPPC Fresnel acceptance was part of the model

    def npho(self) -> torch.Tensor:
        """(B, 4760) expected photons of every sensor."""
        return self.intensity[:, None] * solid_angle_fraction(self.position, fresnel=self.fresnel)


def _best_intensity(omega: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Closed-form least-squares I of ``y ~ I omega`` with weights w: (B, S) -> (B,), kept >= 0."""
    return ((w * omega * y).sum(1) / (w * omega * omega).sum(1).clamp_min(1e-300)).clamp_min(0.0)


def fit_point_source(npho, known, iterations: int = FIT_ITERATIONS, noise: float = FIT_NOISE,
                     start=None, fresnel: bool = False) -> PointSource:
    """Fit ``npho_i = I * Omega_i(s)`` to the known sensors of every event.

    ``npho`` (B, 4760) photons, ``known`` (B, 4760) bool. Levenberg-Marquardt on (s, I), the
    intensity re-solved in closed form after each step and the position kept inside the xenon;
    ``start`` (B, 3) cm overrides the light-weighted centroid as the starting point. Events are
    fitted together in blocks of :data:`FIT_BLOCK` (small temporaries are much faster to touch
    than large fresh ones). ``fresnel`` multiplies the model's MPPC light by the MPPC Fresnel
    acceptance (see :func:`~xecmae.detector.light.solid_angle_fraction`); the returned
    :class:`PointSource` then predicts with it too.
    """
    known = _mask(known)
    y = torch.where(known, _tensor(npho), 0.0)
    s = into_xenon(light_centroid(y, known) if start is None else _tensor(start))
    parts = [_fit_block(y[k:k + FIT_BLOCK], known[k:k + FIT_BLOCK], s[k:k + FIT_BLOCK], iterations, noise, fresnel)
             for k in range(0, len(y), FIT_BLOCK)]
    if not parts:
        empty = torch.zeros(0, dtype=DTYPE)
        return PointSource(torch.zeros(0, 3, dtype=DTYPE), empty, empty, torch.zeros(0, dtype=torch.long), fresnel)
    position, intensity, chi2 = (torch.cat(p) for p in zip(*parts, strict=True))
    return PointSource(position, intensity, chi2, known.sum(1), fresnel)


def _fit_block(y: torch.Tensor, known: torch.Tensor, s: torch.Tensor, iterations: int, noise: float,
               fresnel: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Levenberg-Marquardt for a block of events: photons y (b, S), start s (b, 3) -> (s, I, chi2)."""
    w = torch.where(known, 1.0 / (y.clamp_min(0.0) + noise**2), 0.0)  # (b, S) 1/photons^2
    omega, d_omega = solid_angle_fraction(s, grad=True, fresnel=fresnel)
    intensity = _best_intensity(omega, y, w)
    chi2 = (w * (intensity[:, None] * omega - y) ** 2).sum(1)
    damping = torch.full_like(chi2, 1e-3)
    eye = torch.eye(4, dtype=DTYPE)
    for _ in range(iterations):
        jac = torch.cat([intensity[:, None, None] * d_omega, omega[:, None]], 1)  # (b, 4, S)
        residual = intensity[:, None] * omega - y  # (b, S)
        jw = jac * w[:, None]
        hess = jw @ jac.transpose(1, 2)  # (b, 4, 4)
        grad = (jw @ residual[..., None]).squeeze(-1)  # (b, 4)
        diag = torch.diagonal(hess, dim1=1, dim2=2).clamp_min(1e-30)
        system = hess + damping[:, None, None] * torch.diag_embed(diag) + 1e-30 * eye
        step = -torch.linalg.solve(system, grad)[:, :3]  # (b, 3) cm; the intensity is re-solved
        trial = into_xenon(s + step)
        omega_t, d_omega_t = solid_angle_fraction(trial, grad=True, fresnel=fresnel)
        intensity_t = _best_intensity(omega_t, y, w)
        chi2_t = (w * (intensity_t[:, None] * omega_t - y) ** 2).sum(1)
        better = chi2_t < chi2
        small = (torch.linalg.vector_norm(trial - s, dim=-1) < 1e-4) | (chi2 - chi2_t < 1e-9 * chi2)
        s = torch.where(better[:, None], trial, s)
        omega = torch.where(better[:, None], omega_t, omega)
        d_omega = torch.where(better[:, None, None], d_omega_t, d_omega)
        intensity = torch.where(better, intensity_t, intensity)
        chi2 = torch.where(better, chi2_t, chi2)
        damping = torch.where(better, damping * 0.3, damping * 10.0).clamp(1e-9, 1e9)
        if bool(((better & small) | (damping >= 1e5)).all()):  # every event of the block has settled
            break
    return s, intensity, chi2


# --- everything at once -------------------------------------------------------------------------------------
def predict(npho, known_npho, time=None, known_time=None, radius: float = NEIGHBOUR_RADIUS,
            power: float = NEIGHBOUR_POWER) -> dict[str, dict[str, torch.Tensor]]:
    """All baselines for one batch: ``{baseline: {channel: (B, 4760)}}`` in the input units.

    ``npho`` photons and ``time`` ns (B, 4760), each with its ``known`` mask (visible and valid).
    Time baselines are computed when ``time`` is given; the point-source fit is npho only and
    also provides the source of the solid-angle weighted averages. Runs on one torch thread.
    """
    with single_thread():
        fit = fit_point_source(npho, known_npho)
        omega = solid_angle_fraction(fit.position)
        out = {
            "neighbour_avg": {"npho": neighbour_average(npho, known_npho, radius, power)},
            "solid_angle_avg": {"npho": solid_angle_average(npho, known_npho, fit.position, "npho", radius, power,
                                                            omega)},
            "point_source_fit": {"npho": fit.intensity[:, None] * omega},
        }
        if time is not None:
            out["neighbour_avg"]["time"] = neighbour_average(time, known_time, radius, power)
            out["solid_angle_avg"]["time"] = solid_angle_average(time, known_time, fit.position, "time", radius,
                                                                 power, omega)
    return out
