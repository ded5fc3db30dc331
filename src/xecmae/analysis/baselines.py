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

import torch

from xecmae.detector.light import OPTICAL_SPEED, solid_angle_fraction
from xecmae.detector.neighbours import NEIGHBOUR_POWER, NEIGHBOUR_RADIUS
from xecmae.detector.neighbours import neighbour_average as shared_average
from xecmae.detector.neighbours import neighbour_weights as shared_weights
from xecmae.detector.neighbours import solid_angle_average as shared_solid_angle_average
from xecmae.detector.pointsource import (  # noqa: F401 (the baselines' public names)
    FIT_BLOCK,
    FIT_ITERATIONS,
    FIT_MARGIN,
    FIT_NOISE,
    PointSource,
    fit_point_source,
    into_xenon,
    light_centroid,
    source_distance,
)
from xecmae.detector.threads import single_thread

log = logging.getLogger(__name__)

BASELINES = ("neighbour_avg", "solid_angle_avg", "point_source_fit")
"""Names of the baselines, in the order they are reported."""
DTYPE = torch.float64


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(a).to(DTYPE)


def _mask(a) -> torch.Tensor:
    return torch.as_tensor(a).to(torch.bool)


# --- geometry tables -----------------------------------------------------------------------------
def neighbour_weights(radius: float = NEIGHBOUR_RADIUS, power: float = NEIGHBOUR_POWER) -> torch.Tensor:
    """(4760, 4760) sparse CSR of the neighbour weights (see :mod:`xecmae.detector.neighbours`), float64."""
    return shared_weights(radius, power, DTYPE)


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
    omega = solid_angle_fraction(source) if omega is None else omega  # (B, S)
    path = source_distance(source) / OPTICAL_SPEED if channel == "time" else None  # (B, S) ns
    return shared_solid_angle_average(_tensor(values), _mask(known), omega, path, float(radius), float(power))


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
