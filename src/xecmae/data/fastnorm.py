"""Normalization of raw event blocks straight into interleaved batch buffers, at memory speed.

The values are exactly those of :class:`xecmae.detector.normalize.Normalizer` (same float32 operations
in the same order); only the way they are computed differs, because this runs for every event
of every epoch:

- validity is found with integer compares on the float bits (``|bits| <= bits(9e9)`` is false
  for dead, inf and NaN alike), one pass per channel;
- the sentinels are blended in with integer arithmetic, ``s + (y - s) * valid`` on the bits.
  A select (``np.where``, ``torch.where``, a masked copy) branches per value, and whether a
  sensor's time is valid is close to a coin flip: that costs about 4 ns per value, more than
  everything else together;
- every intermediate lives in a :class:`Scratch` allocated once per thread, sized for
  ``BLOCK_EVENTS`` events (about 600 kB per array), so the passes run in cache and nothing
  is allocated per block.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from xecmae.detector.geometry import N_SENSORS
from xecmae.detector.normalize import INVALID_ABOVE, Normalizer

BLOCK_EVENTS = 32
"""Events per block: the handful of scratch arrays of one block stay in a core's L2 cache."""
_VALID_BITS = int(np.float32(INVALID_ABOVE).view(np.int32))
_ABS_BITS = 0x7FFFFFFF


class Scratch:
    """Reused intermediates of :func:`normalize_into`, for blocks of up to ``events`` events."""

    def __init__(self, events: int = BLOCK_EVENTS):
        shape = (events, N_SENSORS)
        self.values = np.empty(shape, np.float32)
        self.bits = np.empty(shape, np.int32)
        self.mask = np.empty(shape, np.int32)
        self.valid_npho = np.empty(shape, np.bool_)
        self.valid_time = np.empty(shape, np.bool_)
        self.flags = np.empty(shape, np.bool_)

    def rows(self, n: int) -> tuple[np.ndarray, ...]:
        return tuple(a[:n] for a in (self.values, self.bits, self.mask, self.valid_npho, self.valid_time,
                                     self.flags))


_local = threading.local()


def thread_scratch() -> Scratch:
    """This thread's scratch arrays (normalization threads of one worker never share them)."""
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = Scratch()
    return scratch


def normalize_into(normalizer: Normalizer, npho: np.ndarray, time: np.ndarray, x_out: np.ndarray,
                   valid_out: np.ndarray, scratch: Scratch | None = None) -> None:
    """Write ``normalizer(npho, time)`` for raw float32 (b, 4760) arrays into (b, 4760, 2) outputs.

    Blocks larger than the scratch are done in pieces; ``npho`` and ``time`` are only read.
    """
    scratch = scratch or thread_scratch()
    step = len(scratch.values)
    for start in range(0, len(npho), step):
        stop = min(start + step, len(npho))
        _normalize_block(normalizer, npho[start:stop], time[start:stop], x_out[start:stop],
                         valid_out[start:stop], scratch.rows(stop - start))


def _normalize_block(normalizer: Normalizer, npho: np.ndarray, time: np.ndarray, x_out: np.ndarray,
                     valid_out: np.ndarray, scratch: tuple[np.ndarray, ...]) -> None:
    values, bits, mask, valid_npho, valid_time, flags = scratch
    npho = np.ascontiguousarray(npho, dtype=np.float32)
    time = np.ascontiguousarray(time, dtype=np.float32)
    # validity (Normalizer.validity): finite and not the 1e10 dead marker; time also needs npho >= threshold
    np.bitwise_and(npho.view(np.int32), _ABS_BITS, out=bits)
    np.less_equal(bits, _VALID_BITS, out=valid_npho)
    np.greater_equal(npho, np.float32(normalizer.npho_threshold), out=valid_time)
    np.logical_and(valid_time, valid_npho, out=valid_time)
    np.bitwise_and(time.view(np.int32), _ABS_BITS, out=bits)
    np.less_equal(bits, _VALID_BITS, out=flags)
    np.logical_and(valid_time, flags, out=valid_time)
    valid_out[..., 0] = valid_npho
    valid_out[..., 1] = valid_time
    # npho: the scheme's map; values below its domain map to 0, as in Normalizer.npho_forward
    _npho_map(normalizer, npho, values, flags)
    _blend(values, valid_npho, normalizer.sentinel_npho, mask, x_out[..., 0])
    # time: (t / time_scale) - time_shift
    y = torch.from_numpy(values)
    torch.div(torch.from_numpy(time), normalizer.time_scale, out=y).sub_(normalizer.time_shift)
    _blend(values, valid_time, normalizer.sentinel_time, mask, x_out[..., 1])


def _npho_map(normalizer: Normalizer, npho: np.ndarray, out: np.ndarray, below: np.ndarray) -> None:
    """``normalizer.npho_forward(npho)`` into ``out``; log1p in torch, whose float32 log1p is vectorised."""
    if normalizer.npho_scheme != "log1p":
        out[...] = normalizer.npho_forward(torch.from_numpy(npho)).numpy()
        return
    y = torch.from_numpy(out)
    torch.clamp(torch.from_numpy(npho), min=normalizer.npho_domain_min, out=y)
    y.div_(normalizer.npho_scale).log1p_().div_(normalizer.npho_scale2)
    np.less(npho, np.float32(normalizer.npho_domain_min), out=below)
    if below.any():
        out[below] = 0.0


def _blend(values: np.ndarray, valid: np.ndarray, sentinel: float, mask: np.ndarray, out: np.ndarray) -> None:
    """``out = values where valid else sentinel``, without a branch per value (see the module doc).

    Integer arithmetic on the bits, ``s + (v - s) * valid``, is exact for any bit pattern,
    including the NaN or inf that an invalid raw value may have produced.
    """
    sentinel_bits = np.float32(sentinel).view(np.int32)
    v = values.view(np.int32)
    np.subtract(v, sentinel_bits, out=v)
    np.copyto(mask, valid.view(np.int8))
    np.multiply(v, mask, out=v)
    np.add(v, sentinel_bits, out=out.view(np.int32))


def count_bad(npho: np.ndarray, time: np.ndarray) -> np.ndarray:
    """(dead, NaN or inf npho values; the same for time; NaN or inf values) of raw (n, 4760) events.

    Dead means beyond ``INVALID_ABOVE`` in magnitude (the 1e10 marker), the rule of
    ``Normalizer.validity``. Counted in blocks of ``BLOCK_EVENTS`` events, whose passes run in cache.
    """
    counts = np.zeros(3, dtype=np.int64)
    for start in range(0, len(npho), BLOCK_EVENTS):
        counts += _count_block(npho[start:start + BLOCK_EVENTS], time[start:start + BLOCK_EVENTS])
    return counts


def _count_block(npho: np.ndarray, time: np.ndarray) -> np.ndarray:
    """:func:`count_bad` of one block. Sane input (no NaN or inf, which the maximum would show, and
    nothing below -9e9) takes one compare per value; anything else is counted value by value."""
    extremes = [f(a, initial=0.0) for a in (npho, time) for f in (np.max, np.min)]
    if not (np.all(np.isfinite(extremes)) and min(extremes) >= -INVALID_ABOVE):
        finite = np.count_nonzero(np.isfinite(npho)) + np.count_nonzero(np.isfinite(time))
        return np.array([npho.size - np.count_nonzero(np.abs(npho) <= INVALID_ABOVE),
                         time.size - np.count_nonzero(np.abs(time) <= INVALID_ABOVE),
                         npho.size + time.size - finite], dtype=np.int64)
    return np.array([np.count_nonzero(npho > INVALID_ABOVE), np.count_nonzero(time > INVALID_ABOVE), 0],
                    dtype=np.int64)
