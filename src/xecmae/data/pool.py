"""The event pool: raw events waiting to leave in batches, in order or through a shuffle buffer.

Batches leave as lists of segments (a source and its rows) that the normalization reads
directly, so no row is copied on the way out; :func:`normalize_blocks` writes them into the
batch arrays in blocks of ``BLOCK_EVENTS`` events (:mod:`xecmae.data.fastnorm`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from xecmae.data.fastnorm import BLOCK_EVENTS, normalize_into
from xecmae.detector.normalize import Normalizer

Rows = slice | np.ndarray
Segment = tuple[dict[str, np.ndarray], Rows]


def _rows(index: np.ndarray) -> Rows:
    """A slice (a view, no copy) where the rows are consecutive, else the indices themselves."""
    if index.size and index[-1] - index[0] == index.size - 1 and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def rows_length(rows: Rows) -> int:
    """Rows in a slice or an index array."""
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _part(rows: Rows, begin: int, end: int) -> Rows:
    return slice(rows.start + begin, rows.start + end) if isinstance(rows, slice) else rows[begin:end]


class EventPool:
    """Raw events waiting to leave in batches: in order, or shuffled with a seeded generator.

    ``keep`` events are held back (a copy, in a store allocated once) and each arriving read
    lets as many leave, drawn at random from the held and the new events: a shuffle buffer.
    Without a generator ``keep`` is 0, order is kept and only a remainder of less than one
    batch is carried from one read to the next, by reference when it is the end of a read.
    Batches are lists of segments (a source and its rows) that the normalization reads
    directly, so no row is copied on the way out.
    """

    def __init__(self, batch_size: int, keep: int = 0, rng: np.random.Generator | None = None):
        self.batch_size = batch_size
        self.keep = keep if rng is not None else 0
        self.rng = rng
        self.store: dict[str, np.ndarray] = {}
        self.owned = False  # the store is our own allocation, not rows of a read
        self.slots = np.empty(0, dtype=np.int64)  # occupied store rows, in event order
        self.dropped = 0
        self._gathered: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.slots)

    def _order(self, n: int) -> np.ndarray:
        return self.rng.permutation(n) if self.rng is not None else np.arange(n)

    def push(self, chunk: dict[str, np.ndarray]) -> Iterator[list[Segment]]:
        """Add a read; yield every full batch that can leave now."""
        held = len(self.slots)
        union = held + len(chunk["npho"])
        order = self._order(union)  # row v: v < held is store slot slots[v], else chunk row v - held
        leaving = max(union - self.keep, 0) // self.batch_size * self.batch_size
        for begin in range(0, leaving, self.batch_size):
            yield self._segments(order[begin:begin + self.batch_size], chunk, held)
        self._retain(order[leaving:], chunk, held)

    def flush(self, drop_last: bool) -> Iterator[list[Segment]]:
        """Yield the rest; the final partial batch is yielded, or dropped and counted."""
        held = len(self.slots)
        order = self._order(held)
        full = held // self.batch_size * self.batch_size
        for begin in range(0, full, self.batch_size):
            yield self._segments(order[begin:begin + self.batch_size], None, held)
        if held > full and not drop_last:
            yield self._segments(order[full:], None, held)
        self.dropped += (held - full) if drop_last else 0
        self.slots = np.empty(0, dtype=np.int64)

    def _segments(self, rows: np.ndarray, chunk: dict[str, np.ndarray] | None, held: int) -> list[Segment]:
        in_store = rows < held
        segments: list[Segment] = []
        if in_store.any():
            segments.append((self.store, _rows(self.slots[rows[in_store]])))
        if chunk is not None and not in_store.all():
            segments.append((chunk, _rows(rows[~in_store] - held)))
        return segments

    def _gather_buffer(self, name: str, like: np.ndarray, rows: int) -> np.ndarray:
        buffer = self._gathered.get(name)
        if buffer is None or len(buffer) < rows:
            buffer = self._gathered[name] = np.empty((rows, *like.shape[1:]), like.dtype)
        return buffer[:rows]

    def _retain(self, rows: np.ndarray, chunk: dict[str, np.ndarray], held: int) -> None:
        in_store = rows < held
        kept = self.slots[rows[in_store]]
        new = rows[~in_store] - held
        if self.keep == 0 and not kept.size:  # in order, the end of this read: hold it by reference
            view = _rows(new)
            self.store, self.owned, self.slots = {k: a[view] for k, a in chunk.items()}, False, np.arange(new.size)
            return
        if new.size:
            capacity = self.keep + self.batch_size
            if not self.owned:
                carried = self.store
                self.store = {k: np.empty((capacity, *a.shape[1:]), a.dtype) for k, a in chunk.items()}
                self.owned = True
                if kept.size:  # rows held by reference move in
                    for name, array in self.store.items():
                        array[:kept.size] = carried[name][kept]
                    kept = np.arange(kept.size)
            free = np.setdiff1d(np.arange(capacity), kept, assume_unique=True)[:new.size]
            target = _rows(free)
            for name, array in self.store.items():  # mode="clip": numpy copies through a buffer otherwise
                if isinstance(target, slice):  # one copy, straight into the store
                    np.take(chunk[name], new, axis=0, out=array[target], mode="clip")
                else:  # gathered into a reused buffer (a fresh one costs a page fault per 4 kB), then placed
                    gathered = self._gather_buffer(name, array, new.size)
                    np.take(chunk[name], new, axis=0, out=gathered, mode="clip")
                    array[target] = gathered
            kept = np.concatenate([kept, free])
        self.slots = kept


Block = tuple[dict[str, np.ndarray], Rows, int]


def segment_blocks(segments: list[Segment]) -> list[Block]:
    """A batch's segments as blocks of at most ``BLOCK_EVENTS`` events: (source, rows, row in the batch)."""
    blocks, offset = [], 0
    for source, rows in segments:
        length = rows_length(rows)
        blocks += [(source, _part(rows, b, min(b + BLOCK_EVENTS, length)), offset + b)
                   for b in range(0, length, BLOCK_EVENTS)]
        offset += length
    return blocks


def normalize_blocks(normalizer: Normalizer, blocks: list[Block], x: np.ndarray, valid: np.ndarray) -> None:
    """Normalise the blocks' raw rows into their rows of the batch arrays ``x`` and ``valid`` (B, 4760, 2)."""
    for source, rows, out in blocks:
        end = out + rows_length(rows)
        normalize_into(normalizer, source["npho"][rows], source["time"][rows], x[out:end], valid[out:end])
