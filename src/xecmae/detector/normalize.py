"""Normalization of raw sensor values and their validity.

Raw inputs: ``npho`` in photons (may be slightly negative after baseline subtraction) and
``relative_time`` in seconds. A dead or missing channel carries 1e10 (or NaN/inf) in both.
Validity is returned as booleans next to the values; invalid entries are replaced by the
sentinels, and no code should ever recover validity by comparing a value with a sentinel.

Every function accepts numpy arrays or torch tensors and returns the same kind.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from annotated_types import Ge, Gt

from xecmae.detector.specs import check_fields

NphoScheme = Literal["log1p", "anscombe", "sqrt", "linear"]
NPHO_SCHEMES: tuple[str, ...] = typing.get_args(NphoScheme)
NphoThreshold = Annotated[float, Ge(0)]
"""Photons below which a sensor's time is invalid (not input, not scored)."""
DEAD_VALUE = 1e10
INVALID_ABOVE = 9e9  # anything beyond this magnitude marks a dead channel


def _lib(a):
    return torch if isinstance(a, torch.Tensor) else np


def _exporting() -> bool:
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def _log1p(lib, x):
    """log(1 + x); in an exported graph (ONNX has no log1p) by the exact-rounding identity
    ``log(u) * x / (u - 1)``, u = 1 + x, which keeps float32 precision for small x."""
    if lib is not torch or not _exporting():
        return lib.log1p(x)
    u = 1.0 + x
    shifted = u - 1.0
    return torch.where(shifted == 0, x, torch.log(u) * x / torch.where(shifted == 0, 1.0, shifted))


def _expm1(lib, y):
    """exp(y) - 1; in an exported graph (ONNX has no expm1) as ``(u - 1) * y / log(u)``, u = exp(y)."""
    if lib is not torch or not _exporting():
        return lib.expm1(y)
    u = torch.exp(y)
    log_u = torch.log(u)
    return torch.where((u == 1.0) | (log_u == 0), y, (u - 1.0) * y / torch.where(log_u == 0, 1.0, log_u))


@dataclass(frozen=True)
class Normalizer:
    """The "new scheme": npho through one of four invertible maps, time shifted and scaled.

    The one normalisation spec: its fields' defaults and checks are the ``normalization``
    section of the configuration (:mod:`xecmae.detector.specs`), and a prediction file's
    metadata is its fields. ``npho_threshold`` (photons) is where time stops being trusted: a
    dim sensor keeps a valid npho but its time is invalid; its YAML key is
    ``training.time.npho_threshold``.
    """

    npho_scheme: NphoScheme = "log1p"
    npho_scale: Annotated[float, Gt(0)] = 1000.0  # photons
    npho_scale2: Annotated[float, Gt(0)] = 4.08
    time_scale: Annotated[float, Gt(0)] = 1.14e-7  # s
    time_shift: float = -0.46
    sentinel_npho: float = -1.0
    sentinel_time: float = -1.0
    npho_threshold: NphoThreshold = 100.0  # photons

    def __post_init__(self):
        check_fields(self)

    # --- npho --------------------------------------------------------------------------
    @property
    def npho_domain_min(self) -> float:
        """Smallest raw npho the scheme accepts; anything below maps to 0."""
        return {"log1p": -0.999 * self.npho_scale, "anscombe": -3 / 8, "sqrt": 0.0,
                "linear": -math.inf}[self.npho_scheme]

    def npho_forward(self, npho):
        """Raw photons -> normalized npho (0 below the domain minimum)."""
        lib, s1 = _lib(npho), self.npho_scale
        inside = npho >= self.npho_domain_min
        x = lib.where(inside, npho, 0.0)
        if self.npho_scheme == "log1p":
            y = _log1p(lib, x / s1) / self.npho_scale2
        elif self.npho_scheme == "anscombe":
            y = lib.sqrt(x + 3 / 8) / math.sqrt(s1 + 3 / 8)
        elif self.npho_scheme == "sqrt":
            y = lib.sqrt(x) / math.sqrt(s1)
        else:
            y = x / s1
        return lib.where(inside, y, 0.0)

    def npho_inverse(self, y):
        """Normalized npho -> raw photons (exact inverse of :meth:`npho_forward` on its domain)."""
        lib, s1 = _lib(y), self.npho_scale
        if self.npho_scheme == "log1p":
            return s1 * _expm1(lib, y * self.npho_scale2)
        if self.npho_scheme == "anscombe":
            return (y * math.sqrt(s1 + 3 / 8)) ** 2 - 3 / 8
        if self.npho_scheme == "sqrt":
            return (y * math.sqrt(s1)) ** 2
        return y * s1

    # --- time ---------------------------------------------------------------------------
    def time_forward(self, t):
        """Seconds -> normalized time."""
        return t / self.time_scale - self.time_shift

    def time_inverse(self, y):
        """Normalized time -> seconds."""
        return (y + self.time_shift) * self.time_scale

    # --- validity and the model input ------------------------------------------------------
    def validity(self, npho, time):
        """Booleans (valid_npho, valid_time) for raw arrays of any matching shape."""
        lib = _lib(npho)
        valid_npho = lib.isfinite(npho) & (lib.abs(npho) <= INVALID_ABOVE)
        valid_time = (valid_npho & (npho >= self.npho_threshold)
                      & lib.isfinite(time) & (lib.abs(time) <= INVALID_ABOVE))
        return valid_npho, valid_time

    def __call__(self, npho, time):
        """Raw (..., N) npho and time -> model input (..., N, 2) with sentinels and validity (..., N, 2)."""
        lib = _lib(npho)
        valid_npho, valid_time = self.validity(npho, time)
        y_npho = self.npho_forward(lib.where(valid_npho, npho, 0.0))
        y_time = self.time_forward(lib.where(valid_time, time, 0.0))
        y_npho = lib.where(valid_npho, y_npho, self.sentinel_npho)
        y_time = lib.where(valid_time, y_time, self.sentinel_time)
        return lib.stack([y_npho, y_time], -1), lib.stack([valid_npho, valid_time], -1)

    def denormalize(self, x):
        """Model-space (..., 2) -> raw (npho photons, time seconds); sentinels are not special-cased."""
        return self.npho_inverse(x[..., 0]), self.time_inverse(x[..., 1])
