"""Light transport in the xenon: Rayleigh scattering and absorption (cm).

Every deposit emits its photons isotropically. Along a path of length L to the wall a photon
scatters first with probability ``(mu_R / mu) (1 - exp(-mu L))``, is absorbed first with
``(mu_A / mu) (1 - exp(-mu L))`` and reaches the wall unscattered with ``exp(-mu L)``
(``mu = 1 / lambda_R + 1 / lambda_abs``). The three add up to one, which is the photon budget:

- **direct** light to sensor i is the ideal light times ``exp(-mu d_i)`` (exact per sensor);
- **scattered** light: the single-scattering integral over emission directions is done by a
  fixed quadrature, so that it adds no sampling noise to an event: from the energy-weighted
  centroid of the deposits, ``scatter_rays`` directions (4: a regular tetrahedron with one
  vertex along the shower axis; 6: the octahedron of +-axis and the two transverse axes), each
  carrying ``1 / scatter_rays`` of the emitted photons; along each, the distance L to the wall
  is found by stepping, the scattered share ``(mu_R / mu) (1 - exp(-mu L))`` re-emerges
  isotropically from one point at the mean depth of the truncated exponential,
  ``1 / mu - L exp(-mu L) / (1 - exp(-mu L))``. So ``direct + absorbed + scattered = emitted``
  holds exactly for the quadrature (:func:`scatter_points` returns the budget), and the
  direct beams lose, in expectation over directions, what the scattering points re-emit;
- re-emitted light is attenuated by absorption only: a second scattering is neglected (a
  photon scattered twice is carried as once scattered, which keeps the budget).

Times of scattered light are not modelled: a sensor's time uses the direct path from the first
interaction point, as most early photons are direct.
"""

from __future__ import annotations

import numpy as np

from xecmae.detector.light import in_xenon
from xecmae.simulate.shower import transverse_axes

STEP = 2.5  # cm, the step of the search for the wall along a path (L is known to +-1.25 cm)
MAX_PATH = 140.0  # cm, longer than any chord of the volume


def wall_distance(start: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """(m, 3) points inside the xenon, (m, 3) unit directions -> (m,) cm to where the path first
    leaves the volume (to within STEP / 2)."""
    steps = np.arange(1, int(MAX_PATH / STEP) + 1) * STEP  # (T,)
    points = start[:, None] + steps[None, :, None] * direction[:, None]  # (m, T, 3)
    outside = ~in_xenon(points)
    first_out = np.where(outside.any(1), outside.argmax(1), len(steps) - 1)
    return (first_out + 0.5) * STEP


def quadrature_directions(direction: np.ndarray, rays: int) -> np.ndarray:
    """(n, 3) shower axes -> (n, rays, 3) unit directions of the tetrahedral (4) or octahedral (6) rule."""
    e1, e2 = transverse_axes(direction)
    axis = direction[:, None]
    if rays == 6:
        return np.stack([direction, -direction, e1, -e1, e2, -e2], 1)
    if rays != 4:
        raise ValueError(f"the scattering quadrature has 4 or 6 directions, not {rays}")
    cos_t, sin_t = -1.0 / 3.0, np.sqrt(8.0) / 3.0  # the other vertices of a regular tetrahedron
    phi = np.radians([0.0, 120.0, 240.0])[None, :, None]
    others = cos_t * axis + sin_t * (np.cos(phi) * e1[:, None] + np.sin(phi) * e2[:, None])
    return np.concatenate([axis, others], 1)


def scatter_points(deposits: np.ndarray, deposit_energy: np.ndarray, direction: np.ndarray, rays: int,
                   scattering_length: float | None, absorption_length: float | None
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Scattering points of n events: (n, rays, 3) cm, their re-emitted energy-equivalent (n, rays)
    MeV (0 without scattering), and the budget {emitted, direct, absorbed, scattered} (n,) MeV.

    ``deposits`` (n, K, 3) cm with ``deposit_energy`` (n, K) MeV (0 for deposits outside the
    xenon), ``direction`` (n, 3) the shower axes. Lengths in cm, None = the process is off.
    """
    n = len(deposits)
    mu_r = 0.0 if scattering_length is None else 1.0 / scattering_length
    mu_a = 0.0 if absorption_length is None else 1.0 / absorption_length
    mu = mu_r + mu_a
    emitted = deposit_energy.sum(1)
    centre = (deposits * deposit_energy[..., None]).sum(1) / np.maximum(emitted, 1e-30)[:, None]
    centre = np.where((emitted > 0)[:, None], centre, deposits[:, 0])
    rays_dir = quadrature_directions(direction, rays)  # (n, rays, 3)
    start = np.repeat(centre[:, None], rays, 1)
    if mu == 0.0:
        zero = np.zeros(n)
        return start, np.zeros((n, rays)), {"emitted": emitted, "direct": emitted.copy(), "absorbed": zero,
                                            "scattered": zero.copy()}
    inside = in_xenon(centre)
    length = np.zeros((n, rays))
    length[inside] = wall_distance(start[inside].reshape(-1, 3), rays_dir[inside].reshape(-1, 3)).reshape(-1, rays)
    survive = np.exp(-mu * length)
    interacts = 1.0 - survive  # (n, rays) probability to scatter or be absorbed before the wall
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(interacts > 1e-12, 1.0 / mu - length * survive / interacts, 0.5 * length)
    points = start + depth[..., None] * rays_dir
    share = emitted[:, None] / rays
    scattered = share * interacts * (mu_r / mu)
    budget = {"emitted": emitted, "direct": (share * survive).sum(1),
              "absorbed": (share * interacts * (mu_a / mu)).sum(1), "scattered": scattered.sum(1)}
    return points, scattered, budget
