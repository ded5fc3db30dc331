"""The ideal light model of the XEC: the xenon volume and the solid angle of every sensor.

This is the one place the event generator, the classical baselines and anything else that needs
a classical light estimate read. Lengths in cm, times in ns.

- **Volume**: liquid xenon between r = 64.84 and 106.27 cm, ``|phi| < 62.76 deg``
  (``phi = atan2(y, -x)``) and ``|z| < 33.515 + 0.34963 (r - 64.84)`` (:func:`in_xenon`).
- **Solid angle**: ``Omega / 4 pi = cos / 2 * (1 - d / sqrt(d^2 + a^2))``, the on-axis solid
  angle of a disc of the sensor's active area (``a^2 = area / pi``; MPPC 1.392 cm^2, PMT
  radius 2.25 cm) times the cosine of the incidence angle, zero for a point behind the sensor's
  plane. Exact on the axis, ``A cos / 4 pi d^2`` far away, below 1/2 touching the sensor.
- **Yield**: :data:`PHOTONS_PER_MEV` scintillation photons per MeV, emitted isotropically.
- **Angular acceptance** (not part of the ideal model, but what a real-world fit multiplies
  its MPPC light by): the unpolarised Fresnel transmission from xenon (n 1.69) into silicon
  (n 0.8 + 2.2i) relative to normal incidence, 0.82 at 60 deg and 0.40 at 80 deg; PMTs see the
  transmission into their quartz window (n 1.60), which reflects everything beyond the critical
  angle of 71.2 deg. :func:`acceptance_table` tabulates both on a grid of cos(incidence).

Two implementations of the same formula: float64 with an analytic gradient for fits
(:func:`solid_angle_fraction`), and float32 in a shifted frame, one deposit at a time, for the
generator's hot path (:func:`deposit_light`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from xecmae.detector import geometry as geo
from xecmae.detector.threads import single_thread

# --- the volume and the light (cm, ns, MeV) -------------------------------------------------------
C_LIGHT = 29.9792458  # cm/ns
OPTICAL_SPEED = 18.62  # cm/ns, c / 1.61 in liquid xenon
XENON_INNER_RADIUS = 64.84
XENON_OUTER_RADIUS = geo.OUTER_RADIUS  # 106.27
XENON_HALF_Z = 33.515  # at the inner radius; grows by XENON_Z_SLOPE per cm of radius
XENON_Z_SLOPE = 0.34963
XENON_PHI = geo.HEX_PLANE_PHI  # 62.76 deg, the top and bottom PMT planes
PHOTONS_PER_MEV = 40_000.0
XENON_INDEX = 1.69  # refractive index for interface optics at 178 nm
SILICON_INDEX = 0.8 + 2.2j  # MPPC surface at 178 nm
QUARTZ_INDEX = 1.60  # PMT window at 178 nm
N_MPPC = 4092  # ids 0..4091 are the inner face's MPPCs, 4092..4759 PMTs
ACCEPTANCE_GRID = 1024  # cos(incidence) steps of the acceptance tables
FRAME_ORIGIN = np.array([-85.0, 0.0, 0.0])  # near the detector's centre; keeps float32 d^2 accurate
DTYPE = torch.float64


def as_tensor(a, dtype: torch.dtype) -> torch.Tensor:
    """``a`` as a tensor of ``dtype``: a tensor stays on its device (no copy, no host traffic when it
    has the dtype already); arrays and lists become CPU tensors."""
    return (a if isinstance(a, torch.Tensor) else torch.as_tensor(a)).to(dtype)


def in_xenon(xyz: np.ndarray) -> np.ndarray:
    """(..., 3) cm -> (...) True inside the active xenon volume."""
    r = np.hypot(xyz[..., 0], xyz[..., 1])
    phi = np.degrees(np.arctan2(xyz[..., 1], -xyz[..., 0]))
    return ((r > XENON_INNER_RADIUS) & (r < XENON_OUTER_RADIUS)
            & (np.abs(xyz[..., 2]) < XENON_HALF_Z + XENON_Z_SLOPE * (r - XENON_INNER_RADIUS))
            & (np.abs(phi) < XENON_PHI))


# --- angular acceptance ---------------------------------------------------------------------------
def fresnel_transmission(cos_incidence: np.ndarray, n1: float = XENON_INDEX, n2: complex = SILICON_INDEX
                         ) -> np.ndarray:
    """Unpolarised Fresnel transmission ``1 - (|r_s|^2 + |r_p|^2) / 2`` from index n1 into n2 (complex ok)."""
    c1 = np.clip(np.asarray(cos_incidence, dtype=float), 0.0, 1.0)
    s1 = np.sqrt(1.0 - c1 * c1)
    c2 = np.sqrt(1.0 - (n1 * s1 / n2) ** 2 + 0j)
    rs = (n1 * c1 - n2 * c2) / (n1 * c1 + n2 * c2)
    rp = (n2 * c1 - n1 * c2) / (n2 * c1 + n1 * c2)
    return np.clip(1.0 - (np.abs(rs) ** 2 + np.abs(rp) ** 2) / 2.0, 0.0, 1.0)


@cache
def acceptance_table(xenon_index: float = XENON_INDEX, window_index: float = QUARTZ_INDEX) -> np.ndarray:
    """(2, ACCEPTANCE_GRID + 1) relative acceptance T(cos) / T(1) at cos = j / GRID: row 0 MPPC, row 1 PMT."""
    cos = np.arange(ACCEPTANCE_GRID + 1) / ACCEPTANCE_GRID
    mppc = fresnel_transmission(cos, xenon_index, SILICON_INDEX)
    pmt = fresnel_transmission(cos, xenon_index, window_index)
    table = np.stack([mppc / mppc[-1], pmt / pmt[-1]])
    table.setflags(write=False)
    return table


def mppc_fresnel_factor(cos_incidence) -> np.ndarray:
    """MPPC acceptance relative to normal incidence at the given cos(incidence) (linear interpolation)."""
    grid = np.arange(ACCEPTANCE_GRID + 1) / ACCEPTANCE_GRID
    return np.interp(np.clip(cos_incidence, 0.0, 1.0), grid, acceptance_table()[0])


# --- float64, with gradient: for fits ---------------------------------------------------------------
def sensor_tables(device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions (S, 3) cm, normals into the xenon (S, 3) and equivalent disc radius^2 (S,) cm^2, float64,
    on ``device`` (built once per device)."""
    return _sensor_tables(str(torch.device(device)))


@cache
def _sensor_tables(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor(geo.sensor_positions(), dtype=DTYPE, device=device),
            torch.tensor(geo.sensor_directions(), dtype=DTYPE, device=device),
            torch.tensor(geo.sensor_area() / np.pi, dtype=DTYPE, device=device))


@cache
def _light_rhs(device: str) -> torch.Tensor:
    """(5, 2S): columns of [s, |s|^2, 1] -> |s - p|^2 (first S) and (s - p) . n (last S)."""
    pos, normal, _ = sensor_tables(device)
    ones = torch.ones(len(pos), 1, dtype=DTYPE, device=device)
    dist = torch.cat([-2 * pos, ones, (pos * pos).sum(1, keepdim=True)], 1)  # (S, 5)
    facing = torch.cat([normal, torch.zeros_like(ones), -(pos * normal).sum(1, keepdim=True)], 1)
    return torch.cat([dist, facing], 0).T.contiguous()


@cache
def _mppc_fresnel_tensors(device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MPPC acceptance values and slopes per grid step (float64), and the (S,) MPPC mask."""
    table = torch.tensor(acceptance_table()[0], dtype=DTYPE, device=device)
    slope = torch.diff(table, append=table[-1:]) * ACCEPTANCE_GRID
    return table, slope, torch.tensor(geo.is_mppc(), device=device)


def solid_angle_fraction(source, grad: bool = False, fresnel: bool = False):
    """Omega / 4 pi of every sensor seen from a point: (B, 3) cm -> (B, 4760), float64.

    With ``grad`` also returns d(Omega / 4 pi)/d(source) (B, 3, 4760) in 1/cm. Zero for a
    source behind the sensor's plane. Uses ``1 - d / q = a^2 / (q (q + d))``,
    ``q = sqrt(d^2 + a^2)``, which is free of cancellation far from the sensor. With
    ``fresnel`` the MPPCs' values are multiplied by their relative Fresnel acceptance
    (piecewise linear in cos(incidence); its gradient included). Computed on the source's device
    (a tensor's; the CPU for anything else).
    """
    s = as_tensor(source, DTYPE)
    device = str(s.device)
    pos, normal, a2 = sensor_tables(device)
    lhs = torch.cat([s, (s * s).sum(1, keepdim=True), torch.ones_like(s[:, :1])], 1)  # (B, 5)
    d2, along = (lhs @ _light_rhs(device)).chunk(2, dim=1)  # (B, S) each; along = d * cos(incidence)
    d2 = d2.clamp_min(1e-6)
    front = along > 0
    inv_d = d2.rsqrt()
    d = d2 * inv_d
    root = (d2 + a2).rsqrt()  # 1 / q
    disc = a2 * root / (root.reciprocal() + d)  # on-axis disc solid angle / 2 pi
    cos = (along * inv_d).clamp_min(0.0)
    omega = 0.5 * cos * disc
    if fresnel:
        table, slope, mppc = _mppc_fresnel_tensors(device)
        index = (cos.clamp(0.0, 1.0) * ACCEPTANCE_GRID).floor().long().clamp_max(ACCEPTANCE_GRID)
        frac = cos.clamp(0.0, 1.0) - index.to(DTYPE) / ACCEPTANCE_GRID
        factor = torch.where(mppc, table[index] + slope[index] * frac, 1.0)
        omega_f = omega * factor
    if not grad:
        return omega_f if fresnel else omega
    # d(cos)/ds = n / d - along u / d^3;  d(disc)/ds = -a^2 u / (d q^3);  u = s - p
    along_term = torch.where(front, 0.5 * disc * inv_d, 0.0)  # multiplies n
    u_term = -0.5 * inv_d * (disc * cos * inv_d + cos * a2 * root**3)  # multiplies u (0 behind)
    d_omega = torch.stack([along_term * normal[:, k] + u_term * (s[:, k:k + 1] - pos[:, k]) for k in range(3)], 1)
    if not fresnel:
        return omega, d_omega  # (B, S), (B, 3, S)
    # d(omega F)/ds = F d(omega)/ds + omega F'(cos) d(cos)/ds
    d_factor = torch.where(mppc & front, slope[index], 0.0) * omega
    d_cos = torch.stack([inv_d * normal[:, k] - cos * inv_d * inv_d * (s[:, k:k + 1] - pos[:, k])
                         for k in range(3)], 1)
    return omega_f, factor[:, None] * d_omega + d_factor[:, None] * d_cos


# --- float32, shifted frame, one deposit at a time: the generator's hot path -------------------------
@dataclass(frozen=True)
class FastSensorTables:
    """Per-sensor constants as float32 tensors, in the frame shifted by FRAME_ORIGIN."""

    d2_rhs: torch.Tensor  # (5, S): [p, |p|^2, 1] @ d2_rhs = |s - p|^2
    dn_rhs: torch.Tensor  # (4, S): [p, 1] @ dn_rhs = (p - s) . n
    disc_a2: torch.Tensor  # (S,) equivalent disc radius squared, cm^2


@cache
def fast_sensor_tables() -> FastSensorTables:
    s = geo.sensor_positions() - FRAME_ORIGIN
    n = geo.sensor_directions()
    d2_rhs = np.concatenate([-2 * s, np.ones((len(s), 1)), (s * s).sum(1, keepdims=True)], 1).T
    dn_rhs = np.concatenate([n, -(s * n).sum(1, keepdims=True)], 1).T
    f32 = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    mppc = geo.is_mppc()
    assert mppc[:N_MPPC].all() and not mppc[N_MPPC:].any(), "the MPPCs are expected to be ids 0..4091"
    return FastSensorTables(f32(d2_rhs), f32(dn_rhs), f32(geo.sensor_area() / np.pi))


MPPC_POLY_DEGREE = 3  # the generator's MPPC acceptance: a polynomial fit to the table (max error 0.55%)


@cache
def mppc_acceptance_polynomial(xenon_index: float = XENON_INDEX) -> tuple[float, ...]:
    """Coefficients (highest power first) of the MPPC relative acceptance as a polynomial in cos."""
    grid = np.arange(ACCEPTANCE_GRID + 1) / ACCEPTANCE_GRID
    table = acceptance_table(xenon_index)[0]
    return tuple(float(c) for c in np.polyfit(grid, table, MPPC_POLY_DEGREE))


@dataclass(frozen=True)
class Optics:
    """What the light meets on its way beyond the ideal model.

    ``extinction_length`` (cm, None = none): direct light is removed by ``exp(-d / length)``
    (scattering and absorption together). ``pmt_table`` (GRID + 1,) float32 and ``mppc_poly``:
    the sensors' relative angular acceptance (None / () = none). ``exact``: the first ``exact``
    deposits get the optics at their own position; the others (a compact shower) share the
    factor of their energy-weighted centroid, which saves the per-deposit cost (the factor is
    smooth in position; the error is second order in the deposits' spread). None = all exact.
    """

    extinction_length: float | None = None
    pmt_table: torch.Tensor | None = None
    mppc_poly: tuple[float, ...] = ()
    exact: int | None = None

    @property
    def is_ideal(self) -> bool:
        return self.extinction_length is None and self.pmt_table is None


def make_optics(extinction_length: float | None, angular: bool, xenon_index: float = XENON_INDEX,
                window_index: float = QUARTZ_INDEX, exact: int | None = None) -> Optics:
    """:class:`Optics` for an extinction length (cm) and, with ``angular``, the sensors' acceptance."""
    if not angular:
        return Optics(extinction_length, None, (), exact)
    pmt = torch.tensor(acceptance_table(xenon_index, window_index)[1], dtype=torch.float32)
    return Optics(extinction_length, pmt, mppc_acceptance_polynomial(xenon_index), exact)


TILE_EVENTS = 16  # events per pass of deposit_light: six (16, 4760) float32 temporaries fit a 2 MB L2 cache


def deposit_light(pos: torch.Tensor, weight: torch.Tensor, t_conv: torch.Tensor | None,
                  attenuation_length: float | None = None, optics: Optics | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Expected photons (B, S) from deposits ``pos`` (B, K, 3) cm (shifted frame) with ``weight``
    (B, K) = photons into 4 pi / 2, and the optical arrival time (B, S) ns from deposit 0,
    ``t_conv`` (B,) ns being its time (None: no time).

    One deposit at a time, TILE_EVENTS events at a time: the temporaries stay in cache, which
    beats one (K*B, S) pass. Every sensor value is computed by the same operations whatever the
    tiling, so the result does not depend on it. Without ``optics`` this is exactly the ideal
    model (bit for bit what it always was).
    """
    b = weight.shape[0]
    photons = torch.empty(b, geo.N_SENSORS)
    t_opt = torch.empty(b, geo.N_SENSORS) if t_conv is not None else None
    scratch = _Scratch(min(b, TILE_EVENTS), optics)
    for lo in range(0, b, TILE_EVENTS):
        rows = slice(lo, min(lo + TILE_EVENTS, b))
        _deposit_light_tile(pos[rows], weight[rows], None if t_conv is None else t_conv[rows], attenuation_length,
                            optics, photons[rows], None if t_opt is None else t_opt[rows], scratch)
    return photons, t_opt


class _Scratch:
    """Reused (TILE_EVENTS, S) float32 buffers of one deposit_light call (no fresh memory per tile)."""

    def __init__(self, rows: int, optics: Optics | None):
        self.d2, self.dn, self.inv_d, self.group = (torch.empty(rows, geo.N_SENSORS) for _ in range(4))
        exact = optics is not None and not optics.is_ideal
        self.factor, self.work = (torch.empty(rows, geo.N_SENSORS), torch.empty(rows, geo.N_SENSORS)) if exact \
            else (None, None)

    def take(self, b: int) -> tuple[torch.Tensor, ...]:
        """The buffers cut to b rows (the last tile may be shorter)."""
        return tuple(None if t is None else t[:b] for t in (self.d2, self.dn, self.inv_d, self.group, self.factor,
                                                            self.work))


def _deposit_light_tile(pos: torch.Tensor, weight: torch.Tensor, t_conv: torch.Tensor | None,
                        attenuation_length: float | None, optics: Optics | None, photons: torch.Tensor,
                        t_opt: torch.Tensor | None, scratch: _Scratch) -> None:
    """:func:`deposit_light` of a few events, into the row views ``photons`` and ``t_opt``."""
    tab = fast_sensor_tables()
    b, k = weight.shape
    ideal = optics is None or optics.is_ideal
    exact = 0 if ideal else (k if optics.exact is None else min(optics.exact, k))
    ones = torch.ones(b, k, 1)
    lhs_d2 = torch.cat([pos, (pos * pos).sum(2, keepdim=True), ones], 2).transpose(0, 1).contiguous()  # (K, B, 5)
    lhs_dn = torch.cat([pos, ones], 2)
    lhs_dn[:, exact:].mul_(weight[:, exact:].unsqueeze(2))  # the exact deposits are weighted after the optics
    lhs_dn = lhs_dn.transpose(0, 1).contiguous()  # (K, B, 4)
    d2, dn, inv_d, group, factor, work = scratch.take(b)
    if not (exact and exact < k):
        group = photons
    for j in range(k):
        torch.mm(lhs_d2[j], tab.d2_rhs, out=d2)  # |p - s|^2, cm^2
        torch.mm(lhs_dn[j], tab.dn_rhs, out=dn)  # (weight *) (p - s).n, > 0 in front of the sensor
        torch.rsqrt(d2.clamp_min_(1e-2), out=inv_d)
        if j == 0 and t_opt is not None:
            torch.mul(d2, inv_d, out=t_opt).mul_(1.0 / OPTICAL_SPEED).add_(t_conv[:, None])  # ns
        if attenuation_length is not None:
            dn.mul_(torch.exp(-(d2 * inv_d) / attenuation_length))
        if j < exact:
            dn.mul_(optics_factor(optics, dn, d2, inv_d, factor, work)).mul_(weight[:, j:j + 1])
        # 1/d - 1/sqrt(d^2 + a^2) from the same d^2, so rounding errors cancel far away
        omega = inv_d.sub_(d2.add_(tab.disc_a2).rsqrt_()).mul_(dn.clamp_min_(0.0))  # weight * 2 Omega / 4 pi
        into = photons if j < exact or group is photons else group
        if j == 0 or (into is group and j == exact):
            into.copy_(omega)
        else:
            into.add_(omega)
    if group is not photons:  # the shower's deposits share the optics of their centroid
        w = weight[:, exact:]
        centroid = (pos[:, exact:] * w.unsqueeze(2)).sum(1) / w.sum(1, keepdim=True).clamp_min(1e-30)
        c_lhs = torch.cat([centroid, (centroid * centroid).sum(1, keepdim=True), torch.ones(b, 1)], 1)
        torch.mm(c_lhs, tab.d2_rhs, out=d2)
        torch.mm(torch.cat([centroid, torch.ones(b, 1)], 1), tab.dn_rhs, out=dn)
        torch.rsqrt(d2.clamp_min_(1e-2), out=inv_d)
        photons.add_(group.mul_(optics_factor(optics, dn.abs_(), d2, inv_d, factor, work)))


def optics_factor(optics: Optics, dn: torch.Tensor, d2: torch.Tensor, inv_d: torch.Tensor, out: torch.Tensor,
                  work: torch.Tensor) -> torch.Tensor:
    """Acceptance times extinction for ``dn`` = d cos(incidence), ``d2`` = d^2, ``inv_d`` = 1 / d,
    all (B, S), into ``out``; ``work`` is scratch of the same shape (no fresh memory in the hot path)."""
    factor = torch.mul(dn, inv_d, out=out).clamp_(0.0, 1.0)  # cos(incidence)
    if optics.pmt_table is not None:
        cos_pmt = factor[:, N_MPPC:]
        cos_pmt.copy_(optics.pmt_table.take(cos_pmt.mul(ACCEPTANCE_GRID).add_(0.5).long()))
        cos, value = factor[:, :N_MPPC], work[:, :N_MPPC]
        coeffs = optics.mppc_poly
        torch.mul(cos, coeffs[0], out=value).add_(coeffs[1])
        for c in coeffs[2:]:
            value.mul_(cos).add_(c)
        cos.copy_(value)
    else:
        factor.fill_(1.0)
    if optics.extinction_length is not None:
        factor.mul_(torch.mul(d2, inv_d, out=work).mul_(-1.0 / optics.extinction_length).exp_())
    return factor


def expected_photons(points: np.ndarray, energy_mev: np.ndarray, attenuation_length: float | None = None,
                     optics: Optics | None = None) -> np.ndarray:
    """Mean photons reaching each sensor from point deposits: the ideal light model.

    ``points`` (n, k, 3) or (n, 3) cm, ``energy_mev`` (n, k) or (n,). Returns (n, 4760) float32
    photons, before photon statistics and noise. Purely geometric: points outside the xenon are
    not removed here.
    """
    pts = np.asarray(points, dtype=np.float64)
    energy = np.asarray(energy_mev, dtype=np.float64)
    if pts.ndim == 2:
        pts, energy = pts[:, None], energy.reshape(-1, 1)
    pos = torch.from_numpy((pts - FRAME_ORIGIN).astype(np.float32))
    weight = torch.from_numpy((energy * (0.5 * PHOTONS_PER_MEV)).astype(np.float32))
    with single_thread():
        photons, _ = deposit_light(pos, weight, None, attenuation_length, optics)
    return photons.numpy()
