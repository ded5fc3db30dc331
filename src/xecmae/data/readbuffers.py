"""Reusable output arrays for ROOT reads: a pool that hands out only buffers nobody refers to."""

from __future__ import annotations

import sys

import numpy as np


def _references(pool: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(buffer) for buffer in pool]


_IDLE_REFS = _references([np.empty(0)])[0]
"""References a buffer that only its pool holds has, counted by :func:`_references` itself."""


def _free_indices(pool: list[np.ndarray]) -> list[int]:
    """Where ``pool`` holds buffers that nothing outside the pool refers to."""
    return [i for i, count in enumerate(_references(pool)) if count <= _IDLE_REFS]


class ReadBuffers:
    """Output arrays for reads, reused once nothing refers to them any more.

    A fresh array for every read costs the kernel a page fault and a zeroed page per 4 kB (or
    2 MB) of it, and uproot, left to itself, fills one array in file byte order and then makes
    a second, byte-swapped one. Reading into a buffer of this pool does one byte-swapping copy
    into memory that is already mapped. A buffer counts as in use while any array refers to it:
    every numpy view of it holds a reference, so rows still queued, shuffled or being normalised
    are never overwritten, whoever holds them.
    """

    def __init__(self):
        self._pools: dict[tuple[str, np.dtype, tuple[int, ...]], list[np.ndarray]] = {}

    def take(self, name: str, rows: int, inner: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A (rows, *inner) array of ``dtype`` for branch ``name``, reused or new."""
        pool = self._pools.setdefault((name, np.dtype(dtype), tuple(inner)), [])
        free = _free_indices(pool)
        fitting = [i for i in free if len(pool[i]) >= rows]
        if fitting:
            return pool[fitting[0]][:rows]
        buffer = np.empty((rows, *inner), dtype)
        if free:  # a free one too small is replaced: the pool holds no more buffers than are in use at once
            pool[free[0]] = buffer
        else:
            pool.append(buffer)
        return buffer[:rows]

    def __len__(self) -> int:
        return sum(len(pool) for pool in self._pools.values())
