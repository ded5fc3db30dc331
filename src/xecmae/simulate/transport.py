"""Light transport in the xenon: Rayleigh scattering and absorption (cm).

Every deposit emits its photons isotropically. Along a path of length L to the wall a photon
scatters first with probability ``(mu_R / mu) (1 - exp(-mu L))``, is absorbed first with
``(mu_A / mu) (1 - exp(-mu L))`` and reaches the wall unscattered with ``exp(-mu L)``
(``mu = 1 / lambda_R + 1 / lambda_abs``). The three add up to one, which is the photon budget:

- **direct** light to sensor i is the ideal light times ``exp(-mu d_i)`` (exact per sensor);
- **scattered** light: ``scatter_rays`` paths per event are sampled (a deposit chosen by its
  energy, an isotropic direction, the distance L to the wall found by stepping along it); each
  path carries ``1 / scatter_rays`` of the event's photons, of which the scattering fraction
  above re-emerges isotropically at a point drawn along the path from the truncated
  exponential. So the scattered photons are an unbiased (sampled) estimate of the light the
  direct beams lost to scattering, and the event's budget ``direct + absorbed + scattered =
  emitted`` holds exactly for the sampled paths (:func:`scatter_points` returns it);
- re-emitted light is attenuated by absorption only: a second scattering is neglected (a
  photon scattered twice is carried as once scattered, which keeps the budget).

Times of scattered light are not modelled: a sensor's time uses the direct path from the first
interaction point, as most early photons are direct.
"""

from __future__ import annotations

import numpy as np

from xecmae.detector.light import in_xenon

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


def scatter_points(rng: np.random.Generator, deposits: np.ndarray, deposit_energy: np.ndarray, rays: int,
                   scattering_length: float | None, absorption_length: float | None
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Scattering points of n events: (n, rays, 3) cm, their re-emitted energy-equivalent (n, rays)
    MeV (0 without scattering), and the budget {emitted, direct, absorbed, scattered} (n,) MeV.

    ``deposits`` (n, K, 3) cm with ``deposit_energy`` (n, K) MeV (0 for deposits outside the
    xenon). Lengths in cm, None = the process is off.
    """
    n = len(deposits)
    mu_r = 0.0 if scattering_length is None else 1.0 / scattering_length
    mu_a = 0.0 if absorption_length is None else 1.0 / absorption_length
    mu = mu_r + mu_a
    emitted = deposit_energy.sum(1)
    # a deposit per path, by energy: inverse CDF of each event's shares
    cdf = np.cumsum(deposit_energy, 1)
    u = rng.random((n, rays)) * cdf[:, -1:]
    pick = np.minimum((u[:, :, None] >= cdf[:, None, :]).sum(2), deposits.shape[1] - 1)  # (n, rays)
    start = np.take_along_axis(deposits, pick[..., None], 1)  # (n, rays, 3)
    cos_t = rng.uniform(-1.0, 1.0, (n, rays))
    phi = rng.uniform(0.0, 2 * np.pi, (n, rays))
    sin_t = np.sqrt(1.0 - cos_t**2)
    direction = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], -1)
    v = rng.random((n, rays))
    if mu == 0.0 or not emitted.any():
        zero = np.zeros(n)
        return start, np.zeros((n, rays)), {"emitted": emitted, "direct": emitted.copy(), "absorbed": zero,
                                            "scattered": zero.copy()}
    alive = emitted > 0
    length = np.zeros((n, rays))
    length[alive] = wall_distance(start[alive].reshape(-1, 3), direction[alive].reshape(-1, 3)).reshape(-1, rays)
    interacts = -np.expm1(-mu * length)  # (n, rays) probability to scatter or be absorbed before the wall
    where = -np.log1p(-v * interacts) / mu  # truncated exponential on [0, L]
    points = start + where[..., None] * direction
    share = emitted[:, None] / rays
    scattered = share * interacts * (mu_r / mu)
    budget = {"emitted": emitted, "direct": (share * (1.0 - interacts)).sum(1),
              "absorbed": (share * interacts * (mu_a / mu)).sum(1), "scattered": scattered.sum(1)}
    return points, scattered, budget
