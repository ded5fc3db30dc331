"""Planning a stream: files cut into pieces, pieces dealt to shards, batches per rank and worker.

Files are cut into pieces of about ``chunksize`` entries on basket boundaries; the pieces (for
training in an order shuffled per epoch, the same on every rank) form one sequence of events
that is cut into ``world_size * num_workers`` contiguous shares of equal size (within one
event); shard ``rank * num_workers + worker`` reads its share. No event is read twice, every
event is read once per epoch, and any number of files works, also fewer files than shards.
Everything here is arithmetic on entry counts: no event data is read.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xecmae.detector.geometry import N_SENSORS

EVENT_BYTES = 2 * N_SENSORS * 4
"""Bytes of one event's two float32 sensor arrays (38 kB)."""
READ_STEP_BYTES = 32 * 2**20
"""Sensor data per uproot read (about 880 events): large enough that the per-read overhead does
not show, small enough that uproot's own per-basket buffers (16 MB per branch) come from the
heap, which reuses them, instead of being mapped afresh for every read."""


def read_events(batch_size: int, chunksize: int) -> int:
    """Events per read: about ``READ_STEP_BYTES`` of sensor data, at most a piece, at least a batch."""
    return max(batch_size, min(chunksize, READ_STEP_BYTES // EVENT_BYTES))


@dataclass(frozen=True)
class Piece:
    """Entries [start, stop) of one file."""

    path: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def split_pieces(files: Sequence[tuple[str, int, np.ndarray | None]], chunksize: int) -> list[Piece]:
    """(path, entries, basket boundaries or None) -> pieces of about ``chunksize`` entries.

    Each cut sits on the basket boundary nearest to a multiple of ``chunksize``, so no basket is
    read by two pieces.
    """
    pieces = []
    for path, entries, boundaries in files:
        cuts = np.arange(chunksize, entries, chunksize, dtype=np.int64)
        if boundaries is not None and cuts.size:
            above = np.clip(np.searchsorted(boundaries, cuts), 1, len(boundaries) - 1)
            below = boundaries[above - 1]
            cuts = np.where(cuts - below <= boundaries[above] - cuts, below, boundaries[above])
        edges = np.unique(np.concatenate([[0], cuts, [entries]]))
        pieces += [Piece(path, int(a), int(b)) for a, b in itertools.pairwise(edges.tolist())]
    return pieces


def share_sizes(total: int, num_shards: int) -> np.ndarray:
    """Events of each of ``num_shards`` equal contiguous shares of ``total`` (sizes differ by <= 1)."""
    bounds = np.arange(num_shards + 1, dtype=np.int64) * total // num_shards
    return np.diff(bounds)


def deal(pieces: Sequence[Piece], num_shards: int, order_seed: int | Sequence[int] | None = None,
         max_events: int | None = None) -> list[list[Piece]]:
    """Cut the pieces' events into ``num_shards`` contiguous shares of equal size (within one event).

    ``order_seed`` shuffles the piece order first (the same on every rank); ``max_events`` keeps
    only the first that many events of the sequence, so the cap holds across all ranks.
    """
    if order_seed is not None:
        order = np.random.default_rng(order_seed).permutation(len(pieces))
        pieces = [pieces[i] for i in order]
    total = sum(p.size for p in pieces)
    if max_events is not None:
        total = min(total, max_events)
    bounds = np.concatenate([[0], np.cumsum(share_sizes(total, num_shards))])
    shares: list[list[Piece]] = [[] for _ in range(num_shards)]
    offset = 0
    shard = 0
    for piece in pieces:
        begin, end = offset, min(offset + piece.size, total)
        while begin < end:
            while bounds[shard + 1] <= begin:
                shard += 1
            cut = min(end, int(bounds[shard + 1]))
            shares[shard].append(Piece(piece.path, piece.start + begin - offset, piece.start + cut - offset))
            begin = cut
        offset += piece.size
        if offset >= total:
            break
    return shares


def batches_of(events: np.ndarray | int, batch_size: int, drop_last: bool) -> np.ndarray:
    """Batches a worker yields from ``events`` events: the ragged tail dropped or kept."""
    events = np.asarray(events, dtype=np.int64)
    return events // batch_size if drop_last else -(-events // batch_size)


def worker_batches(total_events: int, batch_size: int, world_size: int, num_workers: int,
                   drop_last: bool = True, even: bool = True) -> np.ndarray:
    """(world_size, workers) batches each worker yields in one epoch.

    With ``even``, every rank yields the same number of batches, the minimum over ranks: the
    few extra batches of a rank are taken off its workers with the most batches. Ranks' shares
    differ by at most one event, so at most one batch per worker is given up.
    """
    workers = max(num_workers, 1)
    counts = batches_of(share_sizes(total_events, world_size * workers), batch_size, drop_last)
    counts = counts.reshape(world_size, workers)
    if even:
        steps = counts.sum(1).min()
        for rank in range(world_size):
            for _ in range(int(counts[rank].sum() - steps)):
                counts[rank, int(np.argmax(counts[rank]))] -= 1
    return counts


def steps_per_epoch(total_events: int, batch_size: int, world_size: int = 1, num_workers: int = 0,
                    drop_last: bool = True) -> int:
    """Optimizer steps per epoch that every rank can make: the minimum over ranks of their batches."""
    return int(worker_batches(total_events, batch_size, world_size, num_workers, drop_last).sum(1).min())
