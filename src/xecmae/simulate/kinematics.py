"""Where the gamma comes from and where it first interacts (cm, ns, MeV).

A gamma of energy E (spectrum ``signal`` = 52.83 MeV, ``flat:EMIN:EMAX`` or ``background``)
leaves the target at a vertex ~ N(0, (1, 1, 3.5)) with a direction uniform in
``|cos theta| < 0.42``, ``|phi| < 66 deg`` (``phi = atan2(y, -x)``). It enters the xenon at
r = 64.84 and converts after an exponential path (mean 5.3 cm at 52.8 MeV; 7.0 at 20, 4.7 at
100, linear in log E). Gammas that would convert outside the active volume are redrawn (same
energy, new vertex, direction and path), so the spectrum is exactly the requested one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xecmae.detector.light import XENON_INNER_RADIUS, in_xenon
from xecmae.errors import UserError

SIGNAL_ENERGY = 52.83  # MeV, mu -> e gamma
VERTEX_SIGMA = (1.0, 1.0, 3.5)  # cm
COS_THETA_MAX = 0.42
PHI_MAX = 66.0  # deg
# conversion length (cm) at (MeV): interpolated linearly in log E, extrapolated, then clipped
CONVERSION_LENGTH = ((20.0, 7.0), (52.8, 5.3), (100.0, 4.7))
BACKGROUND_RANGE = (10.0, 60.0)  # MeV
BACKGROUND_SLOPE = 10.0  # MeV, dN/dE ~ exp(-E / slope)
FLAT_DEFAULT = (15.0, 60.0)
ENERGY_LIMITS = (1.0, 250.0)  # MeV, where the shower model is meant to hold
_TRIES = 4  # candidate geometries per event and round of the acceptance loop


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


def first_interaction(spectrum: Spectrum, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Energies (n,) MeV, vertices, unit directions and first interaction points (n, 3) cm of n gammas."""
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
    return {"energy": energy, "vertex": vertex, "direction": direction, "first": first}
