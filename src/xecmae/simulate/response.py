"""Sensor response: photoelectrons, charge, noise and time of (events, sensors) expected photons.

Ideal: photoelectrons ~ Poisson(photons * PDE), PDE 0.12 (MPPC) / 0.16 (PMT), exact below 30
expected photoelectrons, a skew-corrected normal above; ``npho = nphe / PDE + N(0, 6 photons)``.
Time: flight at c from the vertex to the first interaction point, optical path from there at
18.62 cm/ns, the first of ``nphe`` scintillation photons (45 ns decay: an Exp(45 ns / nphe)
delay) and a jitter N(0, sqrt(1 ns^2 / nphe + (40 ps)^2)). A sensor without photoelectrons
reports a noise time uniform in 0-250 ns after the reference. ``relative_time`` (seconds) is
measured from the earliest sensor with more than 50 photoelectrons.

Realistic (components of :mod:`xecmae.simulate.spec`): ``gains`` multiplies each channel's PDE
by a fixed efficiency factor and its charge by a fixed gain factor (both ~ N(1, spread), clipped
at 3 sigma), drawn once per (calibration_seed, run) of the detector and not per event seed, so
files simulated with different event seeds for one run see the same channels. The analysis
still converts with the nominal PDE, as a real calibration would, so npho is off by the
product. ``excess_noise`` F widens the charge's photoelectron variance from nphe to F nphe
(crosstalk and afterpulsing; their mean gain is calibrated away), drawn together with the
baseline noise as one Gaussian; the time still counts the Poisson photoelectrons.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from xecmae.detector import geometry as geo
from xecmae.detector.normalize import DEAD_VALUE
from xecmae.simulate.poisson import flat_nonzero, sample_poisson

PDE_MPPC, PDE_PMT = 0.12, 0.16
NOISE_PHOTONS = 6.0  # sigma of the npho baseline noise
SCINT_DECAY = 45.0  # ns
JITTER_SINGLE_PE = 1.0  # ns, the sqrt(1/nphe) term
JITTER_FLOOR = 0.040  # ns
NOISE_TIME_WINDOW = 250.0  # ns after the reference, for sensors without photoelectrons
REFERENCE_NPHE = 50  # relative_time is measured from the earliest sensor above this
_SEED_TAG_CALIBRATION = 0xCA1


@dataclass(frozen=True)
class SensorResponse:
    """Per-channel conversion of expected photons to npho, float32 (S,) tensors.

    ``pde``: photons -> expected photoelectrons; ``charge``: photoelectrons -> reported photons
    (1 / nominal PDE times the gain); ``excess_noise``: F, or None for pure Poisson.
    """

    pde: torch.Tensor
    charge: torch.Tensor
    excess_noise: float | None = None


def nominal_pde() -> np.ndarray:
    """(4760,) PDE of every sensor as the analysis knows it."""
    return np.where(geo.is_mppc(), PDE_MPPC, PDE_PMT)


@cache
def ideal_response() -> SensorResponse:
    pde = nominal_pde()
    return SensorResponse(torch.tensor(pde, dtype=torch.float32), torch.tensor(1.0 / pde, dtype=torch.float32))


def channel_calibration(calibration_seed: int, run: int, efficiency_spread: float, gain_spread: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(4760,) efficiency and gain factors of one run of one detector, ~ N(1, spread) clipped at
    3 sigma; fixed by (calibration_seed, run), whatever the events' seed."""
    rng = np.random.default_rng(np.random.SeedSequence([_SEED_TAG_CALIBRATION, calibration_seed, run]))
    z = np.clip(rng.standard_normal((2, geo.N_SENSORS)), -3.0, 3.0)
    return 1.0 + efficiency_spread * z[0], 1.0 + gain_spread * z[1]


def realistic_response(calibration_seed: int, run: int, gains: bool, efficiency_spread: float,
                       gain_spread: float, excess_noise: float | None) -> SensorResponse:
    pde = nominal_pde()
    efficiency, gain = (channel_calibration(calibration_seed, run, efficiency_spread, gain_spread) if gains
                        else (1.0, 1.0))
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    if not gains:
        return SensorResponse(ideal_response().pde, ideal_response().charge, excess_noise)
    return SensorResponse(f32(pde * efficiency), f32(gain / pde), excess_noise)


def event_minimum(values: torch.Tensor, starts: np.ndarray) -> torch.Tensor:
    """(B,) minimum of each event's stretch of ``values`` (L,), event e holding ``values[starts[e]:
    starts[e + 1]]``; +inf for an event with none. (A segmented reduction: far cheaper than a
    scatter over L entries.)"""
    flat = values.numpy()
    if not len(flat):
        return torch.full((len(starts),), float("inf"))
    out = np.minimum.reduceat(flat, np.minimum(starts, len(flat) - 1))
    out[np.diff(starts, append=len(flat)) == 0] = np.inf
    return torch.from_numpy(out)


def detect(photons: torch.Tensor, t_opt: torch.Tensor, rng: np.random.Generator, gen: torch.Generator,
           npho: torch.Tensor, rel: torch.Tensor, dead: torch.Tensor, response: SensorResponse) -> torch.Tensor:
    """Photon statistics, noise and timing of (B, S) expected photons (overwritten); fills ``npho``
    (photons) and ``rel`` (relative_time, seconds) and returns the reference time (B,) in ns.

    ``dead`` holds the ids of dead sensors. With an excess noise factor F the baseline noise and
    the excess are one Gaussian of variance ``6^2 + (F - 1) nphe charge^2`` (photons^2).
    """
    b, s = photons.shape
    uv = torch.from_numpy(rng.random((2, b, s), dtype=np.float32))
    nphe, fresh = sample_poisson(photons.mul_(response.pde), uv[0], uv[1], gen)
    if response.excess_noise is None:
        noise = torch.empty(b, s).normal_(0.0, NOISE_PHOTONS, generator=gen)
        torch.addcmul(noise, nphe, response.charge, out=npho)
    else:  # one normal draw for both: baseline noise^2 + (F - 1) nphe charge^2
        noise = torch.empty(b, s).normal_(generator=gen)
        sigma = torch.mul(nphe, response.charge * response.charge * (response.excess_noise - 1.0))
        noise.mul_(sigma.add_(NOISE_PHOTONS**2).sqrt_())
        torch.addcmul(noise, nphe, response.charge, out=npho)
    # a sensor without photoelectrons reports noise, uniform in the window after the reference
    torch.mul(fresh, NOISE_TIME_WINDOW * 1e-9, out=rel)
    lit = nphe > 0
    if dead.numel():
        lit.index_fill_(1, dead, False)
    where = flat_nonzero(lit)  # (L,) flat indices of the lit sensors, ascending
    n = nphe.view(-1).index_select(0, where)
    # time (ns): flight + optical path + first-photon scintillation delay + jitter
    expo = torch.from_numpy(rng.standard_exponential(len(where), dtype=np.float32))
    jitter = torch.empty(len(where)).normal_(generator=gen)
    inv_n = n.reciprocal()
    time = torch.addcmul(t_opt.view(-1).index_select(0, where), expo, inv_n, value=SCINT_DECAY)
    time.addcmul_(inv_n.mul_(JITTER_SINGLE_PE**2).add_(JITTER_FLOOR**2).sqrt_(), jitter)
    # event of each lit sensor: (index + 1/2) / S is at least 1e-4 away from an integer
    event = where.float().add_(0.5).mul_(1.0 / s).long()
    starts = np.searchsorted(where.numpy(), np.arange(b) * s)  # each event's first entry in `where`
    t_ref = event_minimum(torch.where(n > REFERENCE_NPHE, time, float("inf")), starts)
    if not bool(torch.isfinite(t_ref).all()):  # a very dim event: any lit sensor, else the optics
        fallback = event_minimum(time, starts)
        fallback = torch.where(torch.isfinite(fallback), fallback, t_opt.amin(1))
        t_ref = torch.where(torch.isfinite(t_ref), t_ref, fallback)
    rel.view(-1).index_copy_(0, where, time.sub_(t_ref.index_select(0, event)).mul_(1e-9))
    if dead.numel():
        npho.index_fill_(1, dead, DEAD_VALUE)
        rel.index_fill_(1, dead, DEAD_VALUE)
    return t_ref
