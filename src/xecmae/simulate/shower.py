"""Where a converted gamma deposits its energy: point deposits (cm) with energies (MeV).

Ideal (the generator's original model): five point deposits, the e+e- pair's ionisation at
the first interaction point (``min(0.7 E, 18.5 MeV)``, about what two electrons lose in their
first radiation length), and four equal shares of the rest at depths ~ Gamma(1.6, 2 X0) along
the direction with a Gaussian lateral spread of 1.5 cm.

Realistic (component ``shower``, parameters in :mod:`xecmae.simulate.spec`): the same pair
deposit, then an event-by-event leaking fraction ``f ~ Exp(leakage_mean)`` of E lost (punch-
through and soft photons escaping: the low tail of the energy response), up to two
bremsstrahlung satellites (Poisson(brems_mean), energies ~ Exp(brems_energy)) emitted early on
the axis, tilted by ~0.15 rad, converting after ~ Exp(brems_path), and ``shower_deposits``
deposits sharing the rest with Gamma(share_shape) weights, at depths ``X0 Gamma(a, 1/b)`` and
lateral distances drawn from ``exp(-r / r0)`` per unit area, ``r0 = R_M / 3.89`` so that 90% of
the energy lies within the Moliere radius. Deposits outside the xenon leak (give no light).
The energies before that geometric leakage add up to E exactly.
"""

from __future__ import annotations

import numpy as np

from xecmae.detector.light import in_xenon
from xecmae.simulate.spec import DetectorSpec

RADIATION_LENGTH = 2.87  # X0 of liquid xenon, cm (ideal model)
SHOWER_SHAPE = 1.6  # ideal longitudinal profile Gamma(1.6, 2 X0)
SHOWER_SCALE = 2 * RADIATION_LENGTH
LATERAL_SIGMA = 1.5  # cm
TRACK_ENERGY = 18.5  # MeV deposited by the pair's ionisation near the first interaction
TRACK_MAX_FRACTION = 0.7
SHOWER_DEPOSITS = 4
N_DEPOSITS = 1 + SHOWER_DEPOSITS
MAX_SATELLITES = 2
SATELLITE_TILT = 0.15  # rad, sigma of a satellite photon's angle to the shower axis
MOLIERE_CONTAINMENT = 3.89  # r / r0 holding 90% of an exp(-r / r0) per-area profile: 1 - (1 + x) e^-x = 0.9
MAX_LEAKAGE = 0.9


def transverse_axes(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors e1 = direction x z and e2 = direction x e1 spanning the plane across (n, 3) directions."""
    n = len(direction)
    e1 = np.stack([direction[:, 1], -direction[:, 0], np.zeros(n)], 1)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(direction, e1)
    return e1, e2


def ideal_shower(rng: np.random.Generator, energy: np.ndarray, direction: np.ndarray, first: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(n, 5, 3) deposit positions cm and (n, 5) energies MeV (0 outside the xenon) of the ideal model."""
    n = len(energy)
    e1 = np.stack([direction[:, 1], -direction[:, 0], np.zeros(n)], 1)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.stack([direction[:, 1] * e1[:, 2] - direction[:, 2] * e1[:, 1],
                   direction[:, 2] * e1[:, 0] - direction[:, 0] * e1[:, 2],
                   direction[:, 0] * e1[:, 1] - direction[:, 1] * e1[:, 0]], 1)
    depth = rng.gamma(SHOWER_SHAPE, SHOWER_SCALE, (n, SHOWER_DEPOSITS))
    lateral = rng.normal(0.0, LATERAL_SIGMA, (n, SHOWER_DEPOSITS, 2))
    deposits = np.empty((n, N_DEPOSITS, 3))
    deposits[:, 0] = first
    deposits[:, 1:] = (first[:, None] + depth[..., None] * direction[:, None]
                       + lateral[..., :1] * e1[:, None] + lateral[..., 1:] * e2[:, None])
    track = np.minimum(TRACK_MAX_FRACTION * energy, TRACK_ENERGY)
    deposit_energy = np.empty((n, N_DEPOSITS))
    deposit_energy[:, 0] = track
    deposit_energy[:, 1:] = ((energy - track) / SHOWER_DEPOSITS)[:, None]
    deposit_energy *= in_xenon(deposits)
    return deposits, deposit_energy


def realistic_shower(rng: np.random.Generator, spec: DetectorSpec, energy: np.ndarray, direction: np.ndarray,
                     first: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, K, 3) deposits cm, (n, K) energies MeV (0 outside the xenon) and (n,) leaked MeV, K =
    1 + shower_deposits + MAX_SATELLITES: the pair deposit, the shower, then the satellite slots."""
    n, d = len(energy), spec.shower_deposits
    x0 = spec.radiation_length
    e1, e2 = transverse_axes(direction)
    track = np.minimum(TRACK_MAX_FRACTION * energy, TRACK_ENERGY)
    rest = energy - track
    leak = np.minimum(rng.exponential(spec.leakage_mean, n) if spec.leakage_mean > 0 else np.zeros(n),
                      MAX_LEAKAGE) * energy
    leak = np.minimum(leak, rest)
    # satellites: bremsstrahlung photons from early in the shower, converting several cm away
    count = np.minimum(rng.poisson(spec.brems_mean, n), MAX_SATELLITES)
    sat_energy = rng.exponential(spec.brems_energy, (n, MAX_SATELLITES)) * (np.arange(MAX_SATELLITES) < count[:, None])
    budget = 0.5 * (rest - leak)
    total = sat_energy.sum(1)
    sat_energy *= np.where(total > budget, budget / np.maximum(total, 1e-12), 1.0)[:, None]
    origin_depth = rng.exponential(x0, (n, MAX_SATELLITES))
    tilt = rng.normal(0.0, SATELLITE_TILT, (n, MAX_SATELLITES, 2))
    sat_dir = direction[:, None] + tilt[..., :1] * e1[:, None] + tilt[..., 1:] * e2[:, None]
    sat_dir /= np.linalg.norm(sat_dir, axis=2, keepdims=True)
    path = rng.exponential(spec.brems_path, (n, MAX_SATELLITES))
    satellites = first[:, None] + origin_depth[..., None] * direction[:, None] + path[..., None] * sat_dir
    # the shower proper: fluctuating shares at Gamma-distributed depths, Moliere lateral profile
    shares = rng.gamma(spec.share_shape, 1.0, (n, d))
    shares /= shares.sum(1, keepdims=True)
    main = (rest - leak - sat_energy.sum(1))[:, None] * shares
    depth = x0 * rng.gamma(spec.profile_shape, 1.0 / spec.profile_rate, (n, d))
    radius = spec.moliere_radius / MOLIERE_CONTAINMENT * rng.gamma(2.0, 1.0, (n, d))
    azimuth = rng.uniform(0.0, 2 * np.pi, (n, d))
    shower = (first[:, None] + depth[..., None] * direction[:, None]
              + (radius * np.cos(azimuth))[..., None] * e1[:, None]
              + (radius * np.sin(azimuth))[..., None] * e2[:, None])
    deposits = np.concatenate([first[:, None], shower, satellites], 1)
    deposit_energy = np.concatenate([track[:, None], main, sat_energy], 1)
    deposit_energy *= in_xenon(deposits)
    return deposits, deposit_energy, leak
