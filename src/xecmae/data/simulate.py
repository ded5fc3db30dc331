"""The built-in event generator: physically grounded XEC events, as arrays, ROOT files or a stream.

One event (lengths in cm, times in ns, energies in MeV inside):

1. A gamma of energy E (spectrum ``signal`` = 52.83 MeV, ``flat:EMIN:EMAX`` or ``background``)
   leaves the target at a vertex ~ N(0, (1, 1, 3.5)) with a direction uniform in
   ``|cos theta| < 0.42``, ``|phi| < 66 deg`` (``phi = atan2(y, -x)``).
2. It enters the xenon at r = 64.84 and converts after an exponential path (mean 5.3 cm at
   52.8 MeV; 7.0 at 20, 4.7 at 100, linear in log E). Gammas that would convert outside the
   active volume are redrawn (same energy, new vertex, direction and path), so the spectrum is
   exactly the requested one.
3. The shower is five point deposits: the e+e- pair's ionisation at the first interaction point
   (``min(0.7 E, 18.5 MeV)``, about what two electrons lose in their first radiation length), and
   four equal shares of the rest at depths ~ Gamma(1.6, 2 X0) along the direction with a
   Gaussian lateral spread of 1.5 cm. Deposits outside the xenon leak (give no light).
4. Sensor i receives ``40000/MeV * sum_k E_k * Omega_ik / 4 pi`` photons. Omega is the on-axis
   solid angle of a disc of the sensor's active area (MPPC 1.392 cm^2, PMT radius 2.25 cm)
   scaled by the cosine of the incidence angle: ``Omega / 4 pi = cos / 2 * (1 - d / sqrt(d^2 + a^2))``.
   It is exact on the axis, tends to ``A cos / 4 pi d^2`` far away, stays below 1/2 for a
   deposit touching the sensor, and is zero for deposits behind the sensor's plane. An optional
   attenuation ``exp(-d / attenuation_length)`` is off by default.
5. Photoelectrons ~ Poisson(photons * PDE) with PDE 0.12 (MPPC) / 0.16 (PMT); exact below 12
   expected photoelectrons, a skew-corrected normal above. ``npho = nphe / PDE + N(0, 6 photons)``.
6. Time: flight at c from the vertex to the first interaction point, optical path from there at
   18.62 cm/ns, the first of ``nphe`` scintillation photons (45 ns decay: an Exp(45 ns / nphe)
   delay) and a jitter N(0, sqrt(1 ns^2 / nphe + (40 ps)^2)). A sensor without photoelectrons
   reports a noise time uniform in 0-250 ns after the reference. ``relative_time`` (seconds) is
   measured from the earliest sensor with more than 50 photoelectrons.
7. Dead channels, fixed per generator (seed and run), carry 1e10 in ``npho`` and ``relative_time``.

Truth: ``energyTruth`` GeV; ``timeTruth`` ns is the gamma's emission time at the vertex on the
``relative_time`` clock (so it is negative: the vertex precedes the earliest bright sensor by the
flight and optical path, about 3 ns); ``xyzTruth`` the first interaction point, ``uvwTruth`` its
(u, v, w); ``xyzVTX`` the vertex; ``emiVec`` the unit vector vertex -> first interaction;
``emiAng`` (theta from +z, atan2(vy, -vx)) in degrees; ``run``; ``event``.

Reproducibility: the kinematics of block b (BLOCK_EVENTS events) come from
``SeedSequence([tag, seed, run, epoch, b])`` and the sensors of each 64-event sub-block from a
sequence of their own, so event k is the same however a request is split (or spread over
threads). Sampling is vectorised over events and sensors: numpy for the kinematics and the
uniform/exponential draws, torch float32 on one thread for the per-sensor arithmetic and the
normal draws; results are bitwise reproducible for a given numpy/torch build.

Three ways out: :meth:`EventGenerator.generate` (arrays), :func:`write_root` (TTrees, also
``xecmae simulate``) and, with no files at all, a ``sim://`` source for the data pipeline, e.g.
``data.train_path: "sim://signal?seed=1&events=100000"`` (:func:`parse_sim_url`,
:func:`sim_chunks`): ``events`` per epoch, new events every epoch.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import torch

from xecmae import geometry as geo
from xecmae.data.sources import SIM_SCHEME
from xecmae.errors import UserError
from xecmae.normalize import DEAD_VALUE

log = logging.getLogger(__name__)

# --- physics constants (cm, ns, MeV) ---------------------------------------------------------
SIGNAL_ENERGY = 52.83  # MeV, mu -> e gamma
C_LIGHT = 29.9792458  # cm/ns
OPTICAL_SPEED = 18.62  # cm/ns, c / 1.61 in liquid xenon
XENON_INNER_RADIUS = 64.84
XENON_OUTER_RADIUS = geo.OUTER_RADIUS  # 106.27
XENON_HALF_Z = 33.515  # at the inner radius; grows by XENON_Z_SLOPE per cm of radius
XENON_Z_SLOPE = 0.34963
XENON_PHI = geo.HEX_PLANE_PHI  # 62.76 deg, the top and bottom PMT planes
VERTEX_SIGMA = (1.0, 1.0, 3.5)  # cm
COS_THETA_MAX = 0.42
PHI_MAX = 66.0  # deg
# conversion length (cm) at (MeV): interpolated linearly in log E, extrapolated, then clipped
CONVERSION_LENGTH = ((20.0, 7.0), (52.8, 5.3), (100.0, 4.7))
RADIATION_LENGTH = 2.87  # X0 of liquid xenon, cm
SHOWER_SHAPE = 1.6  # longitudinal profile Gamma(1.6, 2 X0)
SHOWER_SCALE = 2 * RADIATION_LENGTH
LATERAL_SIGMA = 1.5  # cm
TRACK_ENERGY = 18.5  # MeV deposited by the pair's ionisation near the first interaction
TRACK_MAX_FRACTION = 0.7
SHOWER_DEPOSITS = 4
N_DEPOSITS = 1 + SHOWER_DEPOSITS
PHOTONS_PER_MEV = 40_000.0
PDE_MPPC, PDE_PMT = 0.12, 0.16
NOISE_PHOTONS = 6.0  # sigma of the npho baseline noise
SCINT_DECAY = 45.0  # ns
JITTER_SINGLE_PE = 1.0  # ns, the sqrt(1/nphe) term
JITTER_FLOOR = 0.040  # ns
NOISE_TIME_WINDOW = 250.0  # ns after the reference, for sensors without photoelectrons
REFERENCE_NPHE = 50  # relative_time is measured from the earliest sensor above this
BACKGROUND_RANGE = (10.0, 60.0)  # MeV
BACKGROUND_SLOPE = 10.0  # MeV, dN/dE ~ exp(-E / slope)
FLAT_DEFAULT = (15.0, 60.0)
ENERGY_LIMITS = (1.0, 250.0)  # MeV, where the shower model is meant to hold
# dead-channel rates per face at dead_fraction = 0.01 (inner, us, ds, outer, top, bottom)
DEAD_RATE_AT_ONE_PERCENT = (0.005, 0.023, 0.023, 0.034, 0.085, 0.085)

# --- sampling layout ---------------------------------------------------------------------------
BLOCK_EVENTS = 128  # events whose kinematics come from one seed
_SUB_EVENTS = 64  # events simulated together, with their own seed
_EXACT_POISSON_BELOW = 30.0  # photoelectrons; above, a skew-corrected normal
_POISSON_GRID = 64  # grid means j / 64 photoelectrons
_POISSON_KMAX = 80
_POISSON_GUIDE = 256
_POISSON_LARGE = -128  # guide entry of the rows beyond the exact range
_TRIES = 4  # candidate geometries per event and round of the acceptance loop
_FRAME_ORIGIN = np.array([-85.0, 0.0, 0.0])  # near the detector's centre; keeps float32 d^2 accurate
_SEED_TAG_EVENTS, _SEED_TAG_SENSORS, _SEED_TAG_DEAD = 0x5EC, 0x5E5, 0xDEAD

BRANCHES: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
    "npho": (np.dtype(np.float32), (geo.N_SENSORS,)),
    "relative_time": (np.dtype(np.float32), (geo.N_SENSORS,)),
    "energyTruth": (np.dtype(np.float32), ()),
    "timeTruth": (np.dtype(np.float32), ()),
    "uvwTruth": (np.dtype(np.float32), (3,)),
    "xyzTruth": (np.dtype(np.float32), (3,)),
    "xyzVTX": (np.dtype(np.float32), (3,)),
    "emiVec": (np.dtype(np.float32), (3,)),
    "emiAng": (np.dtype(np.float32), (2,)),
    "run": (np.dtype(np.int32), ()),
    "event": (np.dtype(np.int32), ()),
}
"""ROOT branch name -> (dtype, per-event shape); also the keys of every generated dict."""


# --- spectra -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spectrum:
    """Gamma energy spectrum: ``signal`` (a line), ``flat`` or ``background`` between emin and emax (MeV)."""

    kind: str
    emin: float
    emax: float

    @property
    def name(self) -> str:
        if self.kind == "signal":
            return "signal"
        return f"{self.kind}:{self.emin:g}:{self.emax:g}"

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n,) energies in MeV."""
        if self.kind == "signal":
            return np.full(n, SIGNAL_ENERGY)
        u = rng.random(n)
        if self.kind == "flat":
            return self.emin + (self.emax - self.emin) * u
        # truncated exponential, inverted analytically
        s = BACKGROUND_SLOPE
        return self.emin - s * np.log1p(-u * -np.expm1(-(self.emax - self.emin) / s))


def parse_spectrum(text: str) -> Spectrum:
    """``signal`` | ``flat`` | ``flat:EMIN:EMAX`` | ``background`` | ``background:EMIN:EMAX`` (MeV)."""
    parts = str(text).strip().lower().split(":")
    kind = parts[0]
    usage = "use signal, flat:EMIN:EMAX (MeV) or background"
    if kind == "signal" and len(parts) == 1:
        return Spectrum("signal", SIGNAL_ENERGY, SIGNAL_ENERGY)
    if kind not in ("flat", "background") or len(parts) not in (1, 3):
        raise UserError(f"unknown spectrum {text!r}: {usage}")
    if len(parts) == 1:
        emin, emax = FLAT_DEFAULT if kind == "flat" else BACKGROUND_RANGE
    else:
        try:
            emin, emax = float(parts[1]), float(parts[2])
        except ValueError:
            raise UserError(f"spectrum {text!r}: EMIN and EMAX must be numbers in MeV, e.g. flat:15:60") from None
    lo, hi = ENERGY_LIMITS
    if not (math.isfinite(emin) and math.isfinite(emax) and lo <= emin < emax <= hi):
        raise UserError(f"spectrum {text!r}: need {lo:g} <= EMIN < EMAX <= {hi:g} MeV")
    return Spectrum(kind, emin, emax)


# --- dead channels -----------------------------------------------------------------------------
def dead_mask_from_ids(ids: Sequence[int] | np.ndarray, source: str = "dead map") -> np.ndarray:
    """Sensor ids (or a (4760,) bool mask) -> (4760,) bool mask; bad ids are a :class:`UserError`."""
    arr = np.asarray(ids)
    if arr.dtype == bool:
        if arr.shape != (geo.N_SENSORS,):
            raise UserError(f"{source}: a boolean mask needs {geo.N_SENSORS} entries, got shape {arr.shape}")
        return arr.copy()
    arr = arr.ravel()
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        as_float = arr.astype(float)
        if not np.all(np.isfinite(as_float) & (as_float == np.round(as_float))):
            raise UserError(f"{source}: sensor ids must be whole numbers")
        arr = as_float.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= geo.N_SENSORS)]
    if bad.size:
        raise UserError(f"{source}: sensor id {int(bad[0])} is outside 0-{geo.N_SENSORS - 1}"
                        + (f" ({bad.size} bad ids)" if bad.size > 1 else ""))
    mask = np.zeros(geo.N_SENSORS, dtype=bool)
    mask[arr] = True
    return mask


def load_dead_map(path: str | os.PathLike) -> np.ndarray:
    """Read a text file of dead sensor ids (whitespace or comma separated, ``#`` comments) -> bool mask."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"dead map {path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    ids: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            try:
                ids.append(int(token))
            except ValueError:
                raise UserError(f"dead map {path} line {number}: {token!r} is not a sensor id") from None
    return dead_mask_from_ids(np.array(ids, dtype=np.int64), source=f"dead map {path}")


def random_dead_mask(fraction: float, seed: int, run: int) -> np.ndarray:
    """About ``fraction`` of the sensors, face by face in the proportions of a real run.

    At 1% that is 0.5% of the inner MPPCs, 2.3% of the lateral, 3.4% of the outer and 8.5% of
    the top/bottom PMTs. Exactly ``round(fraction * 4760)`` sensors are drawn (weighted, without
    replacement), so large fractions saturate gracefully.
    """
    count = round(fraction * geo.N_SENSORS)
    mask = np.zeros(geo.N_SENSORS, dtype=bool)
    if count == 0:
        return mask
    rng = np.random.default_rng(np.random.SeedSequence([_SEED_TAG_DEAD, seed, run]))
    weight = np.asarray(DEAD_RATE_AT_ONE_PERCENT)[geo.face_of_sensor()]
    keys = np.log(rng.random(geo.N_SENSORS)) / weight  # weighted sampling without replacement
    mask[np.argsort(keys)[-count:]] = True
    return mask


# --- geometry of the volume ----------------------------------------------------------------------
def in_xenon(xyz: np.ndarray) -> np.ndarray:
    """(..., 3) cm -> (...) True inside the active xenon volume."""
    r = np.hypot(xyz[..., 0], xyz[..., 1])
    phi = np.degrees(np.arctan2(xyz[..., 1], -xyz[..., 0]))
    return ((r > XENON_INNER_RADIUS) & (r < XENON_OUTER_RADIUS)
            & (np.abs(xyz[..., 2]) < XENON_HALF_Z + XENON_Z_SLOPE * (r - XENON_INNER_RADIUS))
            & (np.abs(phi) < XENON_PHI))


def conversion_length(energy_mev: np.ndarray) -> np.ndarray:
    """Mean free path (cm) before the first interaction, linear in log E through CONVERSION_LENGTH."""
    log_e = np.log(np.asarray(energy_mev, dtype=float))
    xs = np.log([e for e, _ in CONVERSION_LENGTH])
    ys = np.array([length for _, length in CONVERSION_LENGTH])
    slope_lo = (ys[1] - ys[0]) / (xs[1] - xs[0])
    slope_hi = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    out = np.interp(log_e, xs, ys)
    out = np.where(log_e < xs[0], ys[0] + slope_lo * (log_e - xs[0]), out)
    out = np.where(log_e > xs[-1], ys[-1] + slope_hi * (log_e - xs[-1]), out)
    return np.clip(out, 3.0, 20.0)


@dataclass(frozen=True)
class _SensorTables:
    """Per-sensor constants as float32 tensors, in the frame shifted by _FRAME_ORIGIN."""

    d2_rhs: torch.Tensor  # (5, S): [p, |p|^2, 1] @ d2_rhs = |s - p|^2
    dn_rhs: torch.Tensor  # (4, S): [p, 1] @ dn_rhs = (p - s) . n
    disc_a2: torch.Tensor  # (S,) equivalent disc radius squared, cm^2
    pde: torch.Tensor  # (S,)
    inv_pde: torch.Tensor  # (S,)


@cache
def _sensor_tables() -> _SensorTables:
    s = geo.sensor_positions() - _FRAME_ORIGIN
    n = geo.sensor_directions()
    d2_rhs = np.concatenate([-2 * s, np.ones((len(s), 1)), (s * s).sum(1, keepdims=True)], 1).T
    dn_rhs = np.concatenate([n, -(s * n).sum(1, keepdims=True)], 1).T
    pde = np.where(geo.is_mppc(), PDE_MPPC, PDE_PMT)
    f32 = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return _SensorTables(f32(d2_rhs), f32(dn_rhs), f32(geo.sensor_area() / np.pi), f32(pde), f32(1.0 / pde))


@dataclass(frozen=True)
class _PoissonTables:
    """Poisson CDF rows on a grid of means and a guide for inverting them.

    ``cdf[j, k] = P(n <= k | mu = j / 64)`` for mu up to 30, the last column set to 2 so a search
    always ends. The guide cuts [0, 1) into GUIDE bins: ``guide[j * GUIDE + m]`` (int8) is the
    answer k for every u in [m, m + 1) / GUIDE when the bin holds no step of row j's CDF (most
    bins); ``-1 - k``, k the answer at the bin's lower edge, when it holds one or more; and -128
    on the rows beyond the exact range, so one test finds everything that needs more work.
    """

    cdf: torch.Tensor  # (rows, KMAX) float32
    guide: torch.Tensor  # (rows_with_sentinels * GUIDE,) int8


@cache
def _poisson_tables() -> _PoissonTables:
    rows = int(_EXACT_POISSON_BELOW * _POISSON_GRID) + 1
    mu = np.arange(rows)[:, None] / _POISSON_GRID
    k = np.arange(_POISSON_KMAX)[None, :]
    log_fact = np.cumsum(np.log(np.maximum(k, 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pmf = k * np.log(mu) - mu - log_fact
    log_pmf[0] = np.where(k[0] == 0, 0.0, -np.inf)  # mu = 0: all mass at 0
    cdf = np.cumsum(np.exp(log_pmf), axis=1).astype(np.float32)
    cdf[:, -1] = 2.0
    edges = np.arange(_POISSON_GUIDE + 1) / _POISSON_GUIDE
    answer = (cdf[:, None, :] > edges[None, :-1, None]).argmax(-1)  # (rows, GUIDE): at each bin's low edge
    clean = np.take_along_axis(cdf, answer, 1) >= edges[None, 1:]  # the same answer up to the high edge
    guide = np.where(clean, answer, -1 - answer)
    sentinel = np.full((_POISSON_GRID + 2, _POISSON_GUIDE), _POISSON_LARGE)  # mu clamped to 31
    guide = np.concatenate([guide, sentinel]).astype(np.int8)
    return _PoissonTables(torch.from_numpy(cdf), torch.from_numpy(guide.ravel().copy()))


def sample_poisson(mu: torch.Tensor, u: torch.Tensor, v: torch.Tensor, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Poisson counts (float32) for a contiguous float32 tensor of means.

    ``u`` and ``v`` are uniforms of mu's shape. Below 30 the draw is exact for a mixture of the
    two grid means around mu (chosen by stochastic rounding with ``v``: the mean is exactly mu,
    the variance exceeds it by at most 1/16384): the row's CDF is inverted at ``u`` through the
    guide table or, for the few u in a bin holding a step, by stepping or searching the row.
    Above, a normal from ``gen`` with the Cornish-Fisher skew term, ``mu + sqrt(mu) z + (z^2 - 1)
    / 6``, rounded.

    Also returns, for entries that drew zero, a fresh uniform independent of everything else (the
    position of u within its guide bin, or within [bin start, P(0)) after a search); elsewhere
    it is meaningless.
    """
    tab = _poisson_tables()
    flat_mu, flat_u = mu.reshape(-1), u.reshape(-1)
    row = torch.add(v.reshape(-1), flat_mu.clamp(0.0, _EXACT_POISSON_BELOW + 1.0), alpha=_POISSON_GRID).floor_()
    scaled = flat_u * _POISSON_GUIDE
    bin_ = scaled.floor()
    counts = tab.guide.index_select(0, torch.add(bin_, row, alpha=_POISSON_GUIDE).int()).float()
    fresh = scaled.sub_(bin_)
    special = (counts < 0).nonzero().squeeze(1)
    if not special.numel():
        return counts.view(mu.shape), fresh.view(mu.shape)
    kind = counts.index_select(0, special)
    large = special.index_select(0, (kind == _POISSON_LARGE).nonzero().squeeze(1))
    dirty = special.index_select(0, (kind != _POISSON_LARGE).nonzero().squeeze(1))
    if dirty.numel():  # u fell in a bin holding a step of the CDF: step from its lower edge's answer
        u_d = flat_u.index_select(0, dirty)
        k = counts.index_select(0, dirty).neg_().sub_(1.0)
        row_d = row.index_select(0, dirty).long()
        at = row_d * _POISSON_KMAX + k.long()  # flat cdf index
        p_first = tab.cdf.view(-1).index_select(0, at)
        step = u_d >= p_first
        k.add_(step)
        again = step.nonzero().squeeze(1)
        if again.numel():  # a second step; a bin with more than two steps is searched in full
            u_a = u_d.index_select(0, again)
            step = u_a >= tab.cdf.view(-1).index_select(0, at.index_select(0, again).add_(1))
            k.index_add_(0, again, step.float())
            rest = step.nonzero().squeeze(1)
            if rest.numel():
                which = again.index_select(0, rest)
                rows = tab.cdf.index_select(0, row_d.index_select(0, which))
                k.index_copy_(0, which, (u_a.index_select(0, rest).unsqueeze(1) >= rows).sum(1, dtype=torch.float32))
        counts.index_copy_(0, dirty, k)
        # a zero count here means u lies in [bin start, P(0)): rescale it to a uniform
        start = bin_.index_select(0, dirty).div_(_POISSON_GUIDE)
        fresh.index_copy_(0, dirty, (u_d - start).div_((p_first - start).clamp_min_(1e-12)).clamp_(0.0, 1.0))
    if large.numel():
        m = flat_mu.index_select(0, large)
        z = torch.empty_like(m).normal_(generator=gen)
        value = torch.addcmul(m, m.sqrt(), z).add_(z * z, alpha=1.0 / 6.0).add_(0.5 - 1.0 / 6.0)
        counts.index_copy_(0, large, value.floor_().clamp_min_(0.0))
    return counts.view(mu.shape), fresh.view(mu.shape)


# --- the generator -----------------------------------------------------------------------------
class EventGenerator:
    """Deterministic source of simulated XEC events (see the module docstring for the physics).

    Args:
        spectrum: ``signal``, ``flat:EMIN:EMAX`` or ``background`` (see :func:`parse_spectrum`).
        seed: non-negative integer; with ``run`` and ``epoch`` it fixes every event.
        dead_fraction: fraction of dead sensors, drawn once per (seed, run) face by face.
        dead_map: ids (or a (4760,) bool mask) of dead sensors; replaces ``dead_fraction``.
        run: the ``run`` branch; also part of the seed, as a different run is a different sample.
        epoch: folded into the event seeds (a streamed source gives new events every epoch);
            the dead channels do not depend on it.
        attenuation_length: optional light attenuation length in cm (None = no attenuation).
    """

    def __init__(self, spectrum: str = "signal", seed: int = 0, dead_fraction: float = 0.01,
                 dead_map: np.ndarray | Sequence[int] | None = None, run: int = 1, *, epoch: int = 0,
                 attenuation_length: float | None = None):
        self.spectrum = parse_spectrum(spectrum)
        for name, value in (("seed", seed), ("run", run), ("epoch", epoch)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise UserError(f"{name} must be a non-negative integer, got {value!r}")
        if not (isinstance(dead_fraction, int | float) and 0.0 <= dead_fraction < 1.0):
            raise UserError(f"dead fraction must be in [0, 1), got {dead_fraction!r}")
        if attenuation_length is not None and not attenuation_length > 0:
            raise UserError(f"attenuation length must be positive (cm), got {attenuation_length!r}")
        if run > np.iinfo(np.int32).max:
            raise UserError(f"run {run} does not fit the int32 run branch")
        self.seed, self.run, self.epoch = int(seed), int(run), int(epoch)
        self.attenuation_length = attenuation_length
        if dead_map is not None:
            self.dead = dead_mask_from_ids(dead_map)
            self.dead_fraction = float(self.dead.mean())
        else:
            self.dead = random_dead_mask(float(dead_fraction), self.seed, self.run)
            self.dead_fraction = float(dead_fraction)
        self.dead.setflags(write=False)
        self._dead_ids = torch.from_numpy(np.flatnonzero(self.dead))

    def __repr__(self) -> str:
        return (f"EventGenerator(spectrum={self.spectrum.name!r}, seed={self.seed}, run={self.run}, "
                f"epoch={self.epoch}, dead={int(self.dead.sum())} sensors)")

    @property
    def dead_ids(self) -> np.ndarray:
        """Sorted ids of the dead sensors."""
        return np.flatnonzero(self.dead)

    def generate(self, n: int, first_event: int = 0) -> dict[str, np.ndarray]:
        """Events ``first_event .. first_event + n - 1`` as a dict of arrays keyed by branch name.

        npho (n, 4760) float32 photons; relative_time (n, 4760) float32 seconds; 1e10 marks a
        dead channel in both. Truth as in the module docstring. Event k is the same whatever the
        split of the request.
        """
        if n < 0 or first_event < 0:
            raise ValueError(f"need n >= 0 and first_event >= 0, got {n}, {first_event}")
        if first_event + n > np.iinfo(np.int32).max:
            raise UserError(f"event number {first_event + n} does not fit the int32 event branch")
        out = empty_events(n)
        self.fill(out, first_event, n)
        return out

    def fill(self, out: dict[str, np.ndarray], first_event: int, n: int, workers: int = 1) -> None:
        """Write events ``first_event .. first_event + n - 1`` into rows 0..n-1 of ``out``, a dict of
        arrays shaped like :meth:`generate`'s (with at least n rows); reusing buffers saves memory.

        ``workers`` > 1 simulates sub-blocks in that many threads; every sub-block has its own
        random streams, so the events are the same.
        """
        pieces = []
        for k in range(first_event // _SUB_EVENTS, -(-(first_event + n) // _SUB_EVENTS)):
            lo, hi = max(k * _SUB_EVENTS, first_event), min((k + 1) * _SUB_EVENTS, first_event + n)
            base = k * _SUB_EVENTS
            pieces.append((k, slice(lo - first_event, hi - first_event), slice(lo - base, hi - base)))
        kins = {k * _SUB_EVENTS // BLOCK_EVENTS: None for k, _, _ in pieces}
        for block in kins:
            kins[block] = self._kinematics(block)
        with _one_torch_thread():
            if workers <= 1 or len(pieces) == 1:
                for k, dst, src in pieces:
                    self._sub_block(k, kins[k * _SUB_EVENTS // BLOCK_EVENTS], out, dst, src)
                return
            with ThreadPoolExecutor(workers, thread_name_prefix="xecmae-sim") as pool:
                jobs = [pool.submit(self._sub_block, k, kins[k * _SUB_EVENTS // BLOCK_EVENTS], out, dst, src)
                        for k, dst, src in pieces]
                for job in jobs:
                    job.result()

    def iter_chunks(self, n: int, chunk_events: int, first_event: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yield ``n`` events from ``first_event`` in dicts of at most ``chunk_events`` events."""
        for start in range(first_event, first_event + n, chunk_events):
            yield self.generate(min(chunk_events, first_event + n - start), start)

    # -- blocks ---------------------------------------------------------------------------------
    def _kinematics(self, block: int) -> dict[str, np.ndarray]:
        """Kinematics and truth of one block of BLOCK_EVENTS events (the last block is cached)."""
        cached = getattr(self, "_cached_block", None)
        if cached is not None and cached[0] == block:
            return cached[1]
        seq = np.random.SeedSequence([_SEED_TAG_EVENTS, self.seed, self.run, self.epoch, block])
        kin = _kinematics(self.spectrum, np.random.default_rng(seq), BLOCK_EVENTS)
        p, direction = kin["first"], kin["direction"]
        kin["truth"] = {
            "energyTruth": (kin["energy"] * 1e-3).astype(np.float32),
            "uvwTruth": geo.xyz_to_uvw(p).astype(np.float32),
            "xyzTruth": p.astype(np.float32),
            "xyzVTX": kin["vertex"].astype(np.float32),
            "emiVec": direction.astype(np.float32),
            "emiAng": np.stack([np.degrees(np.arccos(np.clip(direction[:, 2], -1, 1))),
                                np.degrees(np.arctan2(direction[:, 1], -direction[:, 0]))], 1).astype(np.float32),
            "run": np.full(BLOCK_EVENTS, self.run, np.int32),
            "event": np.arange(block * BLOCK_EVENTS, (block + 1) * BLOCK_EVENTS, dtype=np.int32),
        }
        kin["pos"] = torch.from_numpy((kin["deposits"] - _FRAME_ORIGIN).astype(np.float32))  # (B, K, 3)
        kin["weight"] = torch.from_numpy((kin["deposit_energy"] * (0.5 * PHOTONS_PER_MEV)).astype(np.float32))
        kin["t_conv_ns"] = torch.from_numpy(kin["t_conv"].astype(np.float32))
        self._cached_block = (block, kin)
        return kin

    def _sub_block(self, k: int, kin: dict, out: dict[str, np.ndarray], dst: slice, src: slice) -> None:
        """Simulate the sensors of sub-block k (_SUB_EVENTS events of the block whose kinematics
        are ``kin``, with its own random streams) and copy its events ``src`` (local indices)
        into ``out`` rows ``dst``."""
        block, first = divmod(k * _SUB_EVENTS, BLOCK_EVENTS)
        ev = slice(first, first + _SUB_EVENTS)
        seq = np.random.SeedSequence([_SEED_TAG_SENSORS, self.seed, self.run, self.epoch, block, first])
        rng = np.random.default_rng(seq)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        whole = src == slice(0, _SUB_EVENTS)
        npho = torch.from_numpy(out["npho"][dst]) if whole else torch.empty(_SUB_EVENTS, geo.N_SENSORS)
        rel = torch.from_numpy(out["relative_time"][dst]) if whole else torch.empty(_SUB_EVENTS, geo.N_SENSORS)
        photons, t_opt = _light(kin["pos"][ev], kin["weight"][ev], kin["t_conv_ns"][ev], self.attenuation_length)
        t_ref = self._detect(photons, t_opt, rng, gen, npho, rel)
        if not whole:
            out["npho"][dst] = npho[src].numpy()
            out["relative_time"][dst] = rel[src].numpy()
        for name, values in kin["truth"].items():
            out[name][dst] = values[ev][src]
        out["timeTruth"][dst] = -t_ref.numpy()[src]

    def _detect(self, photons: torch.Tensor, t_opt: torch.Tensor, rng: np.random.Generator,
                gen: torch.Generator, npho: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """Photon statistics, noise and timing of (B, S) expected photons; fills ``npho`` (photons)
        and ``rel`` (relative_time, seconds) and returns the reference time (B,) in ns."""
        tab = _sensor_tables()
        b, s = photons.shape
        uv = torch.from_numpy(rng.random((2, b, s), dtype=np.float32))
        nphe, fresh = sample_poisson(photons.mul_(tab.pde), uv[0], uv[1], gen)
        noise = torch.empty(b, s).normal_(0.0, NOISE_PHOTONS, generator=gen)
        torch.addcmul(noise, nphe, tab.inv_pde, out=npho)
        # a sensor without photoelectrons reports noise, uniform in the window after the reference
        torch.mul(fresh, NOISE_TIME_WINDOW * 1e-9, out=rel)
        lit = nphe > 0
        dead = self._dead_ids
        if dead.numel():
            lit.index_fill_(1, dead, False)
        where = lit.view(-1).nonzero().squeeze(1)  # (L,) flat indices of the lit sensors
        n = nphe.view(-1).index_select(0, where)
        # time (ns): flight + optical path + first-photon scintillation delay + jitter
        expo = torch.from_numpy(rng.standard_exponential(len(where), dtype=np.float32))
        jitter = torch.empty(len(where)).normal_(generator=gen)
        inv_n = n.reciprocal()
        time = torch.addcmul(t_opt.view(-1).index_select(0, where), expo, inv_n, value=SCINT_DECAY)
        time.addcmul_(inv_n.mul_(JITTER_SINGLE_PE**2).add_(JITTER_FLOOR**2).sqrt_(), jitter)
        # event of each lit sensor: (index + 1/2) / S is at least 1e-4 away from an integer
        event = where.float().add_(0.5).mul_(1.0 / s).long()
        inf = torch.full((b,), float("inf"))
        t_ref = inf.scatter_reduce(0, event, torch.where(n > REFERENCE_NPHE, time, float("inf")), "amin")
        if not bool(torch.isfinite(t_ref).all()):  # a very dim event: any lit sensor, else the optics
            fallback = inf.scatter_reduce(0, event, time, "amin")
            fallback = torch.where(torch.isfinite(fallback), fallback, t_opt.amin(1))
            t_ref = torch.where(torch.isfinite(t_ref), t_ref, fallback)
        rel.view(-1).index_copy_(0, where, time.sub_(t_ref.index_select(0, event)).mul_(1e-9))
        if dead.numel():
            npho.index_fill_(1, dead, DEAD_VALUE)
            rel.index_fill_(1, dead, DEAD_VALUE)
        return t_ref


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the per-sensor arithmetic on one thread, then restore the caller's setting.

    The tensors are small (64 events x 4760 sensors); splitting them over threads gains little
    and, on a busy machine, costs a lot. The second core is better used by the ROOT writer or by
    another data-loader worker.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _light(pos: torch.Tensor, weight: torch.Tensor, t_conv: torch.Tensor, attenuation_length: float | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected photons (B, S) from deposits ``pos`` (B, K, 3) cm (shifted frame) with ``weight``
    (B, K) = photons per MeV / 2 * energy, and the optical arrival time (B, S) ns from the first
    interaction point (deposit 0), ``t_conv`` (B,) ns being its time.

    One deposit at a time: the (B, S) temporaries stay in cache, which beats one (K*B, S) pass.
    """
    tab = _sensor_tables()
    b, k = weight.shape
    ones = torch.ones(b, k, 1)
    lhs_d2 = torch.cat([pos, (pos * pos).sum(2, keepdim=True), ones], 2).transpose(0, 1).contiguous()  # (K, B, 5)
    lhs_dn = torch.cat([pos, ones], 2).mul_(weight.unsqueeze(2)).transpose(0, 1).contiguous()  # (K, B, 4)
    photons, t_opt = torch.empty(b, geo.N_SENSORS), torch.empty(b, geo.N_SENSORS)
    d2, dn, inv_d = (torch.empty(b, geo.N_SENSORS) for _ in range(3))
    for j in range(k):
        torch.mm(lhs_d2[j], tab.d2_rhs, out=d2)  # |p - s|^2, cm^2
        torch.mm(lhs_dn[j], tab.dn_rhs, out=dn)  # weight * (p - s).n, > 0 in front of the sensor
        torch.rsqrt(d2.clamp_min_(1e-2), out=inv_d)
        if j == 0:
            torch.mul(d2, inv_d, out=t_opt).mul_(1.0 / OPTICAL_SPEED).add_(t_conv[:, None])  # ns
        if attenuation_length is not None:
            dn.mul_(torch.exp(-(d2 * inv_d) / attenuation_length))
        # 1/d - 1/sqrt(d^2 + a^2) from the same d^2, so rounding errors cancel far away
        omega = inv_d.sub_(d2.add_(tab.disc_a2).rsqrt_()).mul_(dn.clamp_min_(0.0))  # weight * 2 Omega / 4 pi
        if j == 0:
            photons.copy_(omega)
        else:
            photons.add_(omega)
    return photons, t_opt


def expected_photons(points: np.ndarray, energy_mev: np.ndarray, attenuation_length: float | None = None
                     ) -> np.ndarray:
    """Mean photons reaching each sensor from point deposits: the generator's light model.

    ``points`` (n, k, 3) or (n, 3) cm, ``energy_mev`` (n, k) or (n,). Returns (n, 4760) float32
    photons, before photon statistics and noise. Purely geometric: points outside the xenon are
    not removed here.
    """
    pts = np.asarray(points, dtype=np.float64)
    energy = np.asarray(energy_mev, dtype=np.float64)
    if pts.ndim == 2:
        pts, energy = pts[:, None], energy.reshape(-1, 1)
    pos = torch.from_numpy((pts - _FRAME_ORIGIN).astype(np.float32))
    weight = torch.from_numpy((energy * (0.5 * PHOTONS_PER_MEV)).astype(np.float32))
    with _one_torch_thread():
        photons, _ = _light(pos, weight, torch.zeros(len(pts)), attenuation_length)
    return photons.numpy()


def empty_events(n: int) -> dict[str, np.ndarray]:
    """Uninitialised arrays for n events, keyed and shaped like :data:`BRANCHES` (for ``fill``)."""
    return {name: np.empty((n, *shape), dtype) for name, (dtype, shape) in BRANCHES.items()}


def _kinematics(spectrum: Spectrum, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Energies, vertices, directions, first interaction points and shower deposits of n events."""
    energy = spectrum.sample(rng, n)
    mean_path = conversion_length(energy)
    vertex, direction, first = np.empty((n, 3)), np.empty((n, 3)), np.empty((n, 3))
    todo = np.arange(n)
    for _ in range(100):
        cand = np.repeat(todo, _TRIES)  # a few candidates per event; its first good one is kept
        m = len(cand)
        v = rng.normal(0.0, VERTEX_SIGMA, (m, 3))
        cos_t = rng.uniform(-COS_THETA_MAX, COS_THETA_MAX, m)
        phi = np.radians(rng.uniform(-PHI_MAX, PHI_MAX, m))
        sin_t = np.sqrt(1.0 - cos_t**2)
        u = np.stack([-sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], 1)
        # entry into the xenon: |v_xy + s u_xy| = 64.84 (the vertex is well inside that radius)
        a = sin_t**2
        b = v[:, 0] * u[:, 0] + v[:, 1] * u[:, 1]
        c = v[:, 0] ** 2 + v[:, 1] ** 2 - XENON_INNER_RADIUS**2
        s_entry = (-b + np.sqrt(b * b - a * c)) / a
        p = v + (s_entry + rng.exponential(mean_path[cand]))[:, None] * u
        ok = in_xenon(p).reshape(-1, _TRIES)
        found = ok.any(1)
        pick = (np.arange(len(todo)) * _TRIES + ok.argmax(1))[found]
        done = todo[found]
        vertex[done], direction[done], first[done] = v[pick], u[pick], p[pick]
        todo = todo[~found]
        if not len(todo):
            break
    else:  # pragma: no cover - the acceptance is about 3/4 per try
        raise RuntimeError("could not place the first interaction inside the xenon")
    # shower: the pair's ionisation at the first point, then SHOWER_DEPOSITS points deeper;
    # e1 = direction x z and e2 = direction x e1 span the plane across the shower axis
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
    t_conv = np.linalg.norm(first - vertex, axis=1) / C_LIGHT
    return {"energy": energy, "vertex": vertex, "direction": direction, "first": first,
            "deposits": deposits, "deposit_energy": deposit_energy, "t_conv": t_conv}


# --- streaming: sim:// sources -------------------------------------------------------------------
DEFAULT_EPOCH_EVENTS = 100_000


@dataclass(frozen=True)
class SimSpec:
    """A simulated source, as written in a ``sim://`` URL (see :func:`parse_sim_url`)."""

    spectrum: str = "signal"
    seed: int = 0
    events: int = DEFAULT_EPOCH_EVENTS
    dead_fraction: float = 0.01
    dead_map: str | None = None
    run: int = 1
    attenuation_length: float | None = None

    def generator(self, epoch: int = 0) -> EventGenerator:
        """The event generator of one epoch (the dead channels are the same in every epoch)."""
        dead = load_dead_map(self.dead_map) if self.dead_map else None
        return EventGenerator(self.spectrum, seed=self.seed, dead_fraction=self.dead_fraction, dead_map=dead,
                              run=self.run, epoch=epoch, attenuation_length=self.attenuation_length)

    @property
    def url(self) -> str:
        """The canonical URL of this source."""
        query = [f"seed={self.seed}", f"events={self.events}", f"run={self.run}"]
        query.append(f"dead_map={self.dead_map}" if self.dead_map else f"dead_fraction={self.dead_fraction:g}")
        if self.attenuation_length is not None:
            query.append(f"attenuation_length={self.attenuation_length:g}")
        return f"{SIM_SCHEME}{parse_spectrum(self.spectrum).name}?{'&'.join(query)}"


_SIM_KEYS = {"seed": int, "events": int, "dead_fraction": float, "dead_map": str, "run": int,
             "attenuation_length": float}


def parse_sim_url(url: str) -> SimSpec:
    """``sim://SPECTRUM?key=value&...`` -> :class:`SimSpec`; any problem is a :class:`UserError`.

    SPECTRUM is ``signal`` (default when empty), ``flat:EMIN:EMAX`` (MeV) or ``background``.
    Keys: ``seed`` (default 0), ``events`` per epoch (default 100000), ``dead_fraction``
    (default 0.01) or ``dead_map`` (a text file of sensor ids), ``run`` (default 1) and
    ``attenuation_length`` (cm, default none). Examples: ``sim://signal?seed=1&events=100000``,
    ``sim://flat:15:60?seed=3&dead_fraction=0``.
    """
    text = str(url).strip()
    if not text.startswith(SIM_SCHEME):
        raise UserError(f"{url!r} is not a sim:// source (e.g. sim://signal?seed=1)")
    parts = urlsplit(text)
    spectrum_text = (parts.netloc + parts.path).strip("/") or "signal"
    if parts.fragment:
        raise UserError(f"{url}: unexpected '#{parts.fragment}'")
    spectrum = parse_spectrum(spectrum_text).name
    values: dict[str, object] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise UserError(f"{url}: the query must be key=value pairs joined by '&'") from None
    for key, raw in pairs:
        if key not in _SIM_KEYS:
            raise UserError(f"{url}: unknown key {key!r} (known: {', '.join(_SIM_KEYS)})")
        if key in values:
            raise UserError(f"{url}: {key!r} is given twice")
        try:
            values[key] = _SIM_KEYS[key](raw)
        except ValueError:
            raise UserError(f"{url}: {key}={raw!r} is not a valid {_SIM_KEYS[key].__name__}") from None
    spec = SimSpec(spectrum=spectrum, **values)  # type: ignore[arg-type]
    if not 0 < spec.events <= np.iinfo(np.int32).max:
        raise UserError(f"{url}: events must be positive and fit an int32, got {spec.events}")
    if spec.dead_map is not None and "dead_fraction" in values:
        raise UserError(f"{url}: give dead_fraction or dead_map, not both")
    spec.generator()  # validates seed, run, dead settings and the dead map now, not in a worker
    return spec


def sim_chunks(spec: SimSpec, shard: int, num_shards: int, chunksize: int, epoch: int = 0
               ) -> Iterator[dict[str, np.ndarray]]:
    """Yield this shard's events of one epoch in dicts of at most ``chunksize`` events.

    The epoch's ``spec.events`` events are cut into ``num_shards`` contiguous shares (sizes
    differ by at most one), so the shards partition the epoch exactly. Another epoch draws new
    events (the epoch is part of the seed); event numbers restart at 0 in every epoch.
    """
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in 0..{num_shards - 1}")
    if chunksize <= 0:
        raise ValueError(f"chunksize must be positive, got {chunksize}")
    generator = spec.generator(epoch)
    start = shard * spec.events // num_shards
    stop = (shard + 1) * spec.events // num_shards
    yield from generator.iter_chunks(stop - start, chunksize, first_event=start)


# --- ROOT files --------------------------------------------------------------------------------
COMPRESSIONS = ("lz4", "zlib", "lzma", "none")


def _compression(name: str):
    import uproot

    table = {"lz4": lambda: uproot.LZ4(1), "zlib": lambda: uproot.ZLIB(1), "lzma": lambda: uproot.LZMA(1),
             "none": lambda: None}
    if name not in table:
        raise UserError(f"unknown compression {name!r}: use one of {', '.join(COMPRESSIONS)}")
    return table[name]()


def output_paths(path: str | os.PathLike, files: int) -> list[Path]:
    """``FILE.root`` for one file; ``FILE_0.root`` ... ``FILE_{K-1}.root`` for ``files`` = K > 1."""
    path = Path(path)
    if files == 1:
        return [path]
    suffix = path.suffix or ".root"
    return [path.with_name(f"{path.stem}_{k}{suffix}") for k in range(files)]


def check_writable(paths: Sequence[Path]) -> None:
    """Fail early, with a :class:`UserError`, if any output cannot be created."""
    for path in paths:
        parent = path.parent if str(path.parent) else Path(".")
        if path.is_dir():
            raise UserError(f"cannot write {path}: it is a directory")
        if not parent.is_dir():
            raise UserError(f"cannot write {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"cannot write {path}: directory {parent} is not writable")
        if path.exists() and not os.access(path, os.W_OK):
            raise UserError(f"cannot write {path}: the existing file is read-only")


def write_root(path: str | os.PathLike, n_events: int, generator: EventGenerator, *, chunk_events: int = 512,
               progress: bool = True, compression: str = "lz4", files: int = 1, tree: str = "tree",
               first_event: int = 0, background_writer: bool = True, workers: int = 1) -> list[Path]:
    """Generate ``n_events`` events into ROOT TTree(s) named ``tree``; returns the files written.

    Branches as :data:`BRANCHES` (``npho``/``relative_time`` are ``float[4760]``). Events are
    generated and written ``chunk_events`` at a time (one basket per branch each), so memory
    stays bounded; with ``background_writer`` a second thread compresses and writes a chunk
    while the next one is generated, and ``workers`` threads generate it. ``files`` = K splits
    the events into K contiguous parts, ``FILE_0.root`` ... ``FILE_{K-1}.root``, with event
    numbers continuing across them. Every
    file is written under a temporary name and renamed only when all are complete, so a failure
    (or Ctrl-C) leaves no partial file behind.
    """
    import uproot

    if isinstance(n_events, bool) or not isinstance(n_events, int | np.integer) or n_events <= 0:
        raise UserError(f"the number of events must be a positive integer, got {n_events!r}")
    if isinstance(files, bool) or not isinstance(files, int | np.integer) or files <= 0:
        raise UserError(f"the number of files must be a positive integer, got {files!r}")
    if files > n_events:
        raise UserError(f"cannot split {n_events} events into {files} files")
    if chunk_events <= 0:
        raise UserError(f"chunk_events must be positive, got {chunk_events}")
    if first_event < 0 or first_event + n_events > np.iinfo(np.int32).max:
        raise UserError(f"event numbers {first_event}..{first_event + n_events - 1} do not fit the int32 event branch")
    codec = _compression(compression)
    paths = output_paths(path, int(files))
    check_writable(paths)
    temps = [p.with_name(f".{p.name}.part-{os.getpid()}") for p in paths]
    bounds = [first_event + k * n_events // files for k in range(files + 1)]
    branch_types = {name: dtype if shape == () else np.dtype((dtype, shape))
                    for name, (dtype, shape) in BRANCHES.items()}
    bar = _progress_bar(n_events, progress)
    writer = _ChunkWriter(background_writer)
    # chunk buffers, reused (fresh memory is slow to touch): the generator fills native arrays, which
    # are copied into big-endian ones, ROOT's byte order, here, so the single writer thread does less
    buffers: queue.Queue = queue.Queue()
    for _ in range(3 if background_writer else 1):
        native = empty_events(chunk_events)
        buffers.put((native, {k: np.empty_like(v, dtype=v.dtype.newbyteorder(">")) for k, v in native.items()}))
    try:
        for temp, start, stop in zip(temps, bounds[:-1], bounds[1:], strict=True):
            with uproot.recreate(temp, compression=codec) as handle:
                handle.mktree(tree, branch_types, title="simulated XEC events")
                try:
                    for lo in range(start, stop, chunk_events):
                        m = min(chunk_events, stop - lo)
                        native, big_endian = buffers.get()
                        generator.fill(native, lo, m, workers=workers)
                        for name, values in native.items():
                            np.copyto(big_endian[name][:m], values[:m])
                        writer.put(handle[tree].extend, {k: v[:m] for k, v in big_endian.items()},
                                   done=lambda b=(native, big_endian): buffers.put(b))
                        bar.update(m)
                    writer.flush()
                except BaseException:
                    writer.abandon()  # nothing may touch the file once it is closed
                    raise
        for temp, final in zip(temps, paths, strict=True):
            os.replace(temp, final)
    except BaseException:
        for temp in temps:
            temp.unlink(missing_ok=True)
        raise
    finally:
        writer.close()
        bar.close()
    log.debug("wrote %d events to %s", n_events, paths[0] if files == 1 else f"{paths[0]} ... {paths[-1]}")
    return paths


class _ChunkWriter:
    """Runs ``extend(chunk)`` calls in order, in one background thread (or inline).

    The queue holds at most one pending chunk, so memory stays at about three chunks. The first
    error in the thread is kept and re-raised in the caller at the next ``put`` or ``flush``;
    after it (or after :meth:`abandon`) queued chunks are dropped.
    """

    def __init__(self, background: bool):
        self._queue: queue.Queue | None = queue.Queue(maxsize=1) if background else None
        self._error: BaseException | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        if self._queue is not None:
            self._thread = threading.Thread(target=self._run, name="xecmae-root-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                extend, chunk, done = item
                try:
                    if not self._stopped:
                        extend(chunk)
                finally:
                    done()
            except BaseException as exc:  # handed to the caller
                self._error, self._stopped = exc, True
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, extend, chunk: dict[str, np.ndarray], done=lambda: None) -> None:
        """Queue ``extend(chunk)``; ``done()`` runs after it (or after it is dropped)."""
        self._raise()
        if self._queue is None:
            try:
                extend(chunk)
            finally:
                done()
        else:
            self._queue.put((extend, chunk, done))

    def flush(self) -> None:
        """Wait until every queued chunk is written."""
        if self._queue is not None:
            self._queue.join()
        self._raise()

    def abandon(self) -> None:
        """Drop queued chunks and wait for the one being written."""
        self._stopped = True
        if self._queue is not None:
            self._queue.join()

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, desc="simulate", disable=not enabled, dynamic_ncols=True)
