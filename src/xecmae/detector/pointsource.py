"""The point-source fit of the ideal light model: where the light of an event comes from.

``npho_i = I * Omega_i(s)``: a source of ``I`` photons (into 4 pi) at ``s`` inside the xenon,
``Omega`` the ideal solid-angle fraction of :mod:`xecmae.detector.light`. Fitted to the known
sensors by Levenberg-Marquardt with approximately Poisson weights ``1 / (max(npho, 0) + 10^2)``,
vectorised over events; it starts at the light-weighted centroid of the known sensors moved
into the xenon, and the intensity is solved in closed form after every step.

Read by the classical baselines (:mod:`xecmae.analysis.baselines`, which fit to convergence on
the CPU) and by the inpainter's solid-angle prior (:mod:`xecmae.models.priors`, a fixed few
iterations on the model's device, with no read-back to the host). float64 on the inputs' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from xecmae.detector.light import (
    XENON_HALF_Z,
    XENON_INNER_RADIUS,
    XENON_OUTER_RADIUS,
    XENON_PHI,
    XENON_Z_SLOPE,
    as_tensor,
    sensor_tables,
    solid_angle_fraction,
)

FIT_NOISE = 10.0  # photons, the floor of the fit's error model
FIT_ITERATIONS = 30
FIT_BLOCK = 16  # events fitted together on the CPU (small temporaries are much faster to touch)
FIT_MARGIN = 0.5  # cm kept between a fitted source and the walls of the xenon volume
DTYPE = torch.float64


def _tensor(a) -> torch.Tensor:
    return as_tensor(a, DTYPE)


def _mask(a) -> torch.Tensor:
    return as_tensor(a, torch.bool)


def into_xenon(points: torch.Tensor, margin: float = FIT_MARGIN) -> torch.Tensor:
    """(B, 3) cm -> the nearest point (in r, phi, z) at least ``margin`` cm inside the xenon volume.

    ``phi = atan2(y, -x)`` is clamped through its cosine and sine (no inverse trigonometry, which
    an exported graph's runtime may lack in float64).
    """
    x, y, z = points.unbind(-1)
    radius = torch.sqrt(x * x + y * y)  # no hypot in ONNX
    r = radius.clamp(XENON_INNER_RADIUS + margin, XENON_OUTER_RADIUS - margin)
    phi_max = math.radians(XENON_PHI) - margin / XENON_INNER_RADIUS
    on_axis = radius > 0
    cos = torch.where(on_axis, -x / torch.where(on_axis, radius, 1.0), 1.0)  # cos(phi); phi = 0 on the axis
    sin = torch.where(on_axis, y / torch.where(on_axis, radius, 1.0), 0.0)
    outside = cos < math.cos(phi_max)  # |phi| > phi_max
    cos = torch.where(outside, math.cos(phi_max), cos)
    sin = torch.where(outside, torch.where(y >= 0, 1.0, -1.0) * math.sin(phi_max), sin)
    z_max = XENON_HALF_Z + XENON_Z_SLOPE * (r - XENON_INNER_RADIUS) - margin
    z = torch.maximum(torch.minimum(z, z_max), -z_max)
    return torch.stack([-r * cos, r * sin, z], -1)


def source_distance(source) -> torch.Tensor:
    """(B, 3) cm -> (B, 4760) distance in cm from the point to every sensor centre."""
    source = _tensor(source)
    pos, _, _ = sensor_tables(source.device)
    return torch.linalg.vector_norm(source[:, None, :] - pos, dim=-1)


def light_centroid(npho, known) -> torch.Tensor:
    """(B, 3) cm: the known sensors' positions weighted by their (positive) photons."""
    npho, known = _tensor(npho), _mask(known)
    pos, _, _ = sensor_tables(npho.device)
    w = torch.where(known, npho.clamp_min(0.0), 0.0)  # (B, S)
    total = w.sum(1, keepdim=True)
    centroid = (w @ pos) / total.clamp_min(1e-12)
    return torch.where(total > 0, centroid, pos.mean(0))  # an event without light: the detector centre


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
                     start=None, fresnel: bool = False, block: int | None = FIT_BLOCK,
                     settle: bool = True) -> PointSource:
    """Fit ``npho_i = I * Omega_i(s)`` to the known sensors of every event.

    ``npho`` (B, 4760) photons, ``known`` (B, 4760) bool. Levenberg-Marquardt on (s, I), the
    intensity re-solved in closed form after each step and the position kept inside the xenon;
    ``start`` (B, 3) cm overrides the light-weighted centroid as the starting point. Events are
    fitted together in blocks of ``block`` (None: all at once, the choice on a GPU). ``settle``
    stops a block early once all its events have settled, which reads a flag back to the host
    every iteration; without it exactly ``iterations`` steps are taken. ``fresnel`` multiplies
    the model's MPPC light by the MPPC Fresnel acceptance (see
    :func:`~xecmae.detector.light.solid_angle_fraction`); the returned :class:`PointSource`
    then predicts with it too.
    """
    known = _mask(known)
    y = torch.where(known, _tensor(npho), 0.0)
    s = into_xenon(light_centroid(y, known) if start is None else _tensor(start).to(y.device))
    if block is None or torch.compiler.is_exporting() or torch.jit.is_tracing():  # one block: a graph keeps its batch
        parts = [_fit_block(y, known, s, iterations, noise, fresnel, settle)]
    else:
        parts = [_fit_block(y[k:k + block], known[k:k + block], s[k:k + block], iterations, noise, fresnel, settle)
                 for k in range(0, len(y), block)]
    if not parts:
        empty = torch.zeros(0, dtype=DTYPE, device=y.device)
        return PointSource(torch.zeros(0, 3, dtype=DTYPE, device=y.device), empty, empty,
                           torch.zeros(0, dtype=torch.long, device=y.device), fresnel)
    position, intensity, chi2 = (torch.cat(p) for p in zip(*parts, strict=True))
    return PointSource(position, intensity, chi2, known.sum(1), fresnel)


def solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, n, n) symmetric positive definite, (B, n) -> (B, n) solution of ``a x = b`` by an unrolled
    Cholesky factorisation: what an exported graph uses (ONNX has no linear solve); n is small."""
    n = a.shape[-1]
    low: list[list[torch.Tensor]] = [[] for _ in range(n)]  # low[i][k], k <= i
    for i in range(n):
        for k in range(i + 1):
            dot = sum((low[i][m] * low[k][m] for m in range(k)), torch.zeros_like(b[:, 0]))
            if k == i:
                low[i].append((a[:, i, i] - dot).clamp_min(torch.finfo(a.dtype).tiny).sqrt())
            else:
                low[i].append((a[:, i, k] - dot) / low[k][k])
    y: list[torch.Tensor] = []
    for i in range(n):  # L y = b
        y.append((b[:, i] - sum((low[i][m] * y[m] for m in range(i)), torch.zeros_like(b[:, 0]))) / low[i][i])
    x: list[torch.Tensor] = [torch.zeros_like(b[:, 0])] * n
    for i in reversed(range(n)):  # L^T x = y
        x[i] = (y[i] - sum((low[m][i] * x[m] for m in range(i + 1, n)), torch.zeros_like(b[:, 0]))) / low[i][i]
    return torch.stack(x, -1)


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a x = b`` without the singularity check of ``torch.linalg.solve``, which on a GPU reads a
    flag back to the host at every call (a synchronisation inside every training step); the damped
    system here is never singular."""
    if torch.compiler.is_exporting():
        return solve_spd(a, b)
    return torch.linalg.solve_ex(a, b, check_errors=False)[0]


def _fit_block(y: torch.Tensor, known: torch.Tensor, s: torch.Tensor, iterations: int, noise: float,
               fresnel: bool = False, settle: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Levenberg-Marquardt for a block of events: photons y (b, S), start s (b, 3) -> (s, I, chi2)."""
    w = torch.where(known, 1.0 / (y.clamp_min(0.0) + noise**2), 0.0)  # (b, S) 1/photons^2
    omega, d_omega = solid_angle_fraction(s, grad=True, fresnel=fresnel)
    intensity = _best_intensity(omega, y, w)
    chi2 = (w * (intensity[:, None] * omega - y) ** 2).sum(1)
    damping = torch.full_like(chi2, 1e-3)
    eye = torch.eye(4, dtype=DTYPE, device=y.device)
    for _ in range(iterations):
        jac = torch.cat([intensity[:, None, None] * d_omega, omega[:, None]], 1)  # (b, 4, S)
        residual = intensity[:, None] * omega - y  # (b, S)
        jw = jac * w[:, None]
        hess = jw @ jac.transpose(1, 2)  # (b, 4, 4)
        grad = (jw @ residual[..., None]).squeeze(-1)  # (b, 4)
        diag = torch.diagonal(hess, dim1=1, dim2=2).clamp_min(1e-30)
        system = hess + damping[:, None, None] * torch.diag_embed(diag) + 1e-30 * eye
        step = -_solve(system, grad)[:, :3]  # (b, 3) cm; the intensity is re-solved
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
        if settle and bool(((better & small) | (damping >= 1e5)).all()):  # every event of the block has settled
            break
    return s, intensity, chi2
