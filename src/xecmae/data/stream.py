"""Streaming, sharded, normalized batches of XEC events for training and validation.

How events reach the model:

1. **Plan** (main process, cheap): the inputs are resolved to files, each file is opened and
   checked (tree, branches, lengths) and its entries counted without reading data. Files are
   cut into pieces of about ``chunksize`` entries, on basket boundaries.
2. **Deal**: the pieces (for training in an order shuffled per epoch, the same on every rank)
   form one sequence of events that is cut into ``world_size * num_workers`` contiguous shares
   of equal size (within one event); shard ``rank * num_workers + worker`` reads its share. No
   event is read twice, every event is read once per epoch, and any number of files works,
   also fewer files than shards.
3. **Read**: each DataLoader worker reads its pieces with uproot in basket-aligned reads of
   ``READ_STEP_BYTES`` (32 MB, about 880 events; at least one batch), on a thread that reads
   the next one while the worker normalises. The sensor arrays are byte-swapped straight into
   a few reused buffers (:class:`xecmae.data.rootio.ReadBuffers`): fresh arrays for every read
   made the kernel zero more memory than the reads carried. Baskets are decompressed on the
   reading thread: decompression threads of their own each allocate from a heap of their own,
   whose fresh pages made reading half again as expensive. Dead, NaN and inf values are
   counted in one log line per ``chunksize`` events.
4. **Shuffle** (training): each worker holds back its part of ``shuffle_buffer`` events and
   lets random ones go as new ones arrive (seeded by seed, epoch, rank and worker). Off for
   validation, which keeps file order.
5. **Normalize and batch**: whole batches are built in the worker, normalised by
   ``num_threads`` threads straight into shared memory (:mod:`xecmae.data.fastnorm`), and
   handed over as dicts of tensors. Under :func:`make_loader` a worker writes into the
   shared memory of batches the main process has let go of (:mod:`xecmae.data.shared`).

Memory per worker is about 38 kB x (its part of the shuffle buffer) plus a few reads of 32 MB.
Every rank yields the same number of batches (``len(loader)``) in training, so DDP never waits
on a rank that ran out of data; in validation every event is yielded once.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from xecmae.data.fastnorm import BLOCK_EVENTS, count_bad, normalize_into
from xecmae.data.rootio import ID_BRANCHES, TRUTH_SHAPES, DataError, ReadBuffers, expected_shapes, read_range, scan
from xecmae.data.shared import Allocator, SharedBuffers, fresh, fresh_shared
from xecmae.data.sources import is_sim, resolve_inputs
from xecmae.detector.geometry import N_SENSORS
from xecmae.detector.normalize import Normalizer
from xecmae.errors import UserError
from xecmae.runtime import map_large_blocks

log = logging.getLogger(__name__)

EVENT_BYTES = 2 * N_SENSORS * 4
"""Bytes of one event's two float32 sensor arrays (38 kB)."""
READ_STEP_BYTES = 32 * 2**20
"""Sensor data per uproot read (about 880 events): large enough that the per-read overhead does
not show, small enough that uproot's own per-basket buffers (16 MB per branch) come from the
heap, which reuses them, instead of being mapped afresh for every read."""

_warned_empty: set[str] = set()
_warned_all_invalid: set[str] = set()


# --- planning: pieces, shares, steps ---------------------------------------------------------------
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


# --- the shuffle buffer ------------------------------------------------------------------------------
Rows = slice | np.ndarray
Segment = tuple[dict[str, np.ndarray], Rows]


def _rows(index: np.ndarray) -> Rows:
    """A slice (a view, no copy) where the rows are consecutive, else the indices themselves."""
    if index.size and index[-1] - index[0] == index.size - 1 and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _length(rows: Rows) -> int:
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
        length = _length(rows)
        blocks += [(source, _part(rows, b, min(b + BLOCK_EVENTS, length)), offset + b)
                   for b in range(0, length, BLOCK_EVENTS)]
        offset += length
    return blocks


def normalize_blocks(normalizer: Normalizer, blocks: list[Block], x: np.ndarray, valid: np.ndarray) -> None:
    """Normalise the blocks' raw rows into their rows of the batch arrays ``x`` and ``valid`` (B, 4760, 2)."""
    for source, rows, out in blocks:
        end = out + _length(rows)
        normalize_into(normalizer, source["npho"][rows], source["time"][rows], x[out:end], valid[out:end])


# --- reading ahead --------------------------------------------------------------------------------
_END = object()


def _read_ahead(chunks: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """Run ``chunks`` on a thread that reads the next chunk while the caller works on this one.

    The thread starts a read only after the caller has taken the previous chunk, so one chunk
    beyond those the caller holds is alive. Errors of the thread are raised in the caller.
    """
    taken = threading.Semaphore(1)
    ready: queue.Queue = queue.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            while True:
                while not taken.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                chunk = next(chunks, _END)
                ready.put(chunk)
                if chunk is _END:
                    return
                del chunk
        except BaseException as exc:  # handed to the caller, raised there
            ready.put(exc)

    thread = threading.Thread(target=produce, name="xecmae-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            taken.release()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
            del item
    finally:
        stop.set()
        thread.join()
        chunks.close()


# --- the dataset -----------------------------------------------------------------------------------
class XECStream(IterableDataset):
    """Whole batches of normalised events from ROOT files or a ``sim://`` source.

    Yields dicts of tensors: ``x`` float32 (B, 4760, 2) = normalised (npho, time) with
    sentinels, ``valid`` bool (B, 4760, 2), ``run`` and ``event`` int64 (B,), and with
    ``truth`` the truth branches as float32 (B,), (B, 3) or (B, 2). Use with
    ``DataLoader(stream, batch_size=None, num_workers=num_workers)``; ``len(stream)`` is the
    number of batches this rank yields per epoch (equal on every rank when ``even_steps``).

    Args:
        source: ROOT file(s) as accepted by :func:`resolve_inputs`, or a ``sim://`` URL.
        chunksize: events per piece of a file (the unit that is dealt to shards and shuffled,
            cut on basket boundaries) and per summary line of invalid sensors.
        shuffle_buffer: events held back for shuffling by this rank, split evenly among its
            workers (38 kB each); 0 = keep the input order (and the piece order) as it is.
        drop_last: drop each worker's ragged tail, so every batch has ``batch_size`` events;
            otherwise the tail comes as a smaller final batch.
        max_events: events per epoch over all ranks together; None = all.
        num_threads: threads per worker that normalise a batch.
        num_workers: the DataLoader workers this stream will be iterated by (0 = in process).
        even_steps: cut every rank to the same number of batches (training under DDP).
        read_ahead: read on a thread of its own, one read ahead of the normalization.
        loader_prefetch: the ``prefetch_factor`` of the DataLoader that iterates this stream
            with workers, as :func:`make_loader` sets it: workers then recycle the shared
            memory of batches the main process is done with (:mod:`xecmae.data.shared`).
            None (the default, for a DataLoader built elsewhere): every batch is new memory.
    """

    def __init__(self, source: str | Sequence[str], normalizer: Normalizer, *, tree_name: str = "tree",
                 npho_branch: str = "npho", time_branch: str = "relative_time", batch_size: int = 1024,
                 chunksize: int = 10000, shuffle_buffer: int = 0, seed: int = 0, drop_last: bool = True,
                 truth: bool = False, max_events: int | None = None, num_threads: int = 1, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, even_steps: bool = True, epoch: int = 0,
                 read_ahead: bool = True, loader_prefetch: int | None = None, name: str = "data"):
        super().__init__()
        if batch_size <= 0 or chunksize <= 0 or num_threads <= 0 or shuffle_buffer < 0:
            raise ValueError("batch_size, chunksize and num_threads must be positive, shuffle_buffer >= 0")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.normalizer = normalizer
        self.tree_name, self.npho_branch, self.time_branch = tree_name, npho_branch, time_branch
        self.batch_size, self.chunksize, self.shuffle_buffer = batch_size, chunksize, shuffle_buffer
        self.seed, self.drop_last, self.truth, self.max_events = seed, drop_last, truth, max_events
        self.num_threads, self.rank, self.world_size = num_threads, rank, world_size
        self.num_workers, self.even_steps, self.name = num_workers, even_steps, name
        # in shared memory: workers that live across epochs (persistent_workers) see set_epoch
        self._epoch = torch.full((), int(epoch), dtype=torch.int64).share_memory_()
        self.read_ahead = read_ahead
        self.loader_prefetch = loader_prefetch
        self.consumer_pid = os.getpid()  # the process that builds the stream iterates the loader
        self.read_events = max(batch_size, min(chunksize, READ_STEP_BYTES // EVENT_BYTES))
        self.sim_spec: Any = None
        self.pieces: list[Piece] = []
        self.files: list[str] = []
        self._boundaries: dict[str, np.ndarray] = {}
        if is_sim(source):
            from xecmae.simulate import parse_sim_url

            self.sim_url = source[0] if isinstance(source, list | tuple) else source.strip()
            self.sim_spec = parse_sim_url(self.sim_url)
            available = int(self.sim_spec.events)
        else:
            self.files = resolve_inputs(list(source) if isinstance(source, list | tuple) else source)
            counts = self._scan_files()
            self.pieces = split_pieces(counts, chunksize)
            available = sum(entries for _, entries, _ in counts)
        self.total_events = min(available, max_events) if max_events is not None else available
        self.counts = worker_batches(self.total_events, batch_size, world_size, num_workers, drop_last, even_steps)
        if rank == 0:
            self._log_plan(available)

    # -- planning --
    def _scan_files(self) -> list[tuple[str, int, np.ndarray]]:
        expected = expected_shapes(self.npho_branch, self.time_branch, self.truth)
        counts, self._has_ids = [], {}
        for path in self.files:
            info = scan(path, self.tree_name, expected)
            if info.entries == 0:
                if path not in _warned_empty:
                    _warned_empty.add(path)
                    log.warning("%s: tree %r has no entries; skipped", path, self.tree_name)
                continue
            counts.append((path, info.entries, info.boundaries))
            self._boundaries[path] = info.boundaries
            self._has_ids[path] = info.has_ids
        if not counts:
            raise DataError(f"{self.name}: no events: all {len(self.files)} input file(s) have empty trees")
        return counts

    def _log_plan(self, available: int) -> None:
        shards = self.world_size * max(self.num_workers, 1)
        steps = int(self.counts[self.rank].sum())
        used = steps * self.batch_size
        source = self.sim_url if self.sim_spec is not None else f"{len(self.files)} file(s)"
        log.info("%s: %s, %d events%s -> %d shard(s) (%d rank(s) x %d worker(s)), %d batches of %d per rank%s",
                 self.name, source, available,
                 f" (max_events {self.total_events})" if self.total_events < available else "",
                 shards, self.world_size, max(self.num_workers, 1), steps, self.batch_size,
                 f", about {self.total_events - used * self.world_size} events per epoch left out"
                 if self.drop_last and used * self.world_size < self.total_events else "")
        if steps == 0:
            log.warning("%s: %d events are fewer than one batch of %d per worker: this rank yields nothing",
                        self.name, self.total_events, self.batch_size)

    def __len__(self) -> int:
        return int(self.counts[self.rank].sum())

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: it seeds the piece order, the shuffle buffer and simulated events.

        The value lives in shared memory, so DataLoader workers started in an earlier epoch
        read it when their next iteration begins.
        """
        self._epoch.fill_(int(epoch))

    @property
    def shuffle(self) -> bool:
        return self.shuffle_buffer > 0

    # -- iteration --
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(self.num_workers, 1):
            raise ValueError(f"{self.name}: stream planned for num_workers={self.num_workers} "
                             f"but iterated by {workers} worker(s)")
        return self._batches(worker, workers, shared=info is not None)

    def _batches(self, worker: int, workers: int, shared: bool) -> Iterator[dict[str, torch.Tensor]]:
        buffers = None
        if shared and self.loader_prefetch is not None and os.getppid() == self.consumer_pid:
            buffers = SharedBuffers(self.consumer_pid, received_after=self.loader_prefetch + 1)
        allocate = buffers.take if buffers is not None else fresh_shared if shared else fresh
        shard, shards = self.rank * workers + worker, self.world_size * workers
        limit = int(self.counts[self.rank, worker])
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker]) if self.shuffle else None
        pool = EventPool(self.batch_size, self.shuffle_buffer // workers, rng)
        share = int(share_sizes(self.total_events, shards)[shard])
        events = 0
        if limit > 0:
            with ThreadPoolExecutor(self.num_threads, thread_name_prefix="xecmae-data") as executor:
                for batch in self._pooled(pool, shard, shards, executor, allocate):
                    yield batch
                    events += len(batch["event"])
                    limit -= 1
                    if limit == 0:
                        break
        if buffers is not None:
            log.debug("%s: rank %d worker %d recycled the shared memory of %d of its %d batches", self.name,
                      self.rank, worker, buffers.recycled, buffers.serial)
        if events < share:
            log.info("%s: rank %d worker %d yielded %d of its %d events; the rest is dropped (%s)", self.name,
                     self.rank, worker, events, share,
                     "ragged tail" if share - events < self.batch_size else "ragged tail, even steps over ranks")

    def _pooled(self, pool: EventPool, shard: int, shards: int, executor: Executor,
                allocate: Allocator) -> Iterator[dict[str, torch.Tensor]]:
        chunks = self._chunks(shard, shards)
        if self.read_ahead:
            chunks = _read_ahead(chunks)
        for chunk in chunks:
            for segments in pool.push(chunk):
                yield self._assemble(segments, executor, allocate)
            segments = chunk = None  # hold one read at a time
        for segments in pool.flush(self.drop_last):
            yield self._assemble(segments, executor, allocate)

    def _chunks(self, shard: int, shards: int) -> Iterator[dict[str, np.ndarray]]:
        """Standardised reads of this shard; invalid values counted in one line per ``chunksize`` events."""
        source = self._sim_reads(shard, shards) if self.sim_spec is not None else self._root_reads(shard, shards)
        tally: list = []  # [label, first, events, counts]
        for label, first, chunk, last in source:
            counts = count_bad(chunk["npho"], chunk["time"])
            if not tally:
                tally = [label, first, 0, np.zeros(3, dtype=np.int64)]
            tally[2] += len(chunk["npho"])
            tally[3] += counts
            if last or tally[2] >= self.chunksize:
                self._log_invalid(*tally)
                tally = []
            yield chunk
            del chunk
        if tally:
            self._log_invalid(*tally)

    def _root_reads(self, shard: int, shards: int) -> Iterator[tuple[str, int, dict, bool]]:
        """(file name, first entry, read, last read of its piece) for this shard's pieces."""
        order_seed = [self.seed, self.epoch] if self.shuffle else None
        mine = deal(self.pieces, shards, order_seed, self.max_events)[shard]
        branches = [self.npho_branch, self.time_branch]
        buffers = ReadBuffers()  # the sensor arrays of every read land in reused memory
        if self.truth:
            branches += list(TRUTH_SHAPES)
        for piece in mine:
            has_ids = self._has_ids[piece.path]
            names = branches + list(ID_BRANCHES) if has_ids else branches
            name, start = os.path.basename(piece.path), piece.start
            for arrays in read_range(piece.path, self.tree_name, names, piece.start, piece.stop, self.read_events,
                                     self._boundaries[piece.path], buffers, into=branches[:2]):
                n = len(arrays[self.npho_branch])
                if not has_ids:
                    arrays["run"] = np.full(n, -1, dtype=np.int64)
                    arrays["event"] = np.arange(start, start + n, dtype=np.int64)
                chunk = self._standardise(arrays, f"{piece.path} entries {start}-{start + n}")
                del arrays
                yield name, start, chunk, start + n == piece.stop
                start += n
                del chunk
        log.debug("%s: shard %d read its %d piece(s) into %d reused buffer(s)", self.name, shard, len(mine),
                  len(buffers))

    def _sim_reads(self, shard: int, shards: int) -> Iterator[tuple[str, int, dict, bool]]:
        """(source, first event, events, False) of this shard of the simulated epoch."""
        from xecmae.simulate import sim_chunks

        remaining = int(share_sizes(self.total_events, shards)[shard])
        for arrays in sim_chunks(self.sim_spec, shard, shards, self.read_events, epoch=self.epoch):
            if remaining <= 0:
                return
            arrays = dict(arrays)
            if self.npho_branch not in arrays and "npho" in arrays:
                arrays[self.npho_branch] = arrays["npho"]
            if self.time_branch not in arrays and "relative_time" in arrays:
                arrays[self.time_branch] = arrays["relative_time"]
            n = min(len(arrays[self.npho_branch]), remaining)
            arrays = {k: v[:n] for k, v in arrays.items()}
            remaining -= n
            chunk = self._standardise(arrays, f"{self.sim_url} shard {shard}")
            yield self.sim_url, int(chunk["event"][0]), chunk, False
            del chunk

    def _standardise(self, arrays: dict[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
        """Canonical keys and dtypes: npho/time float32 (n, 4760), run/event int64, truth float32."""
        out = {"npho": np.ascontiguousarray(arrays[self.npho_branch], dtype=np.float32),
               "time": np.ascontiguousarray(arrays[self.time_branch], dtype=np.float32)}
        n = len(out["npho"])
        for key in ("npho", "time"):
            if out[key].shape != (n, N_SENSORS):
                raise DataError(f"{label}: {key} has shape {out[key].shape}, expected ({n}, {N_SENSORS})")
        for key in ID_BRANCHES:
            out[key] = np.asarray(arrays[key], dtype=np.int64).reshape(n)
        if self.truth:
            for key, shape in TRUTH_SHAPES.items():
                if key not in arrays:
                    raise DataError(f"{label}: truth branch {key!r} missing")
                out[key] = np.asarray(arrays[key], dtype=np.float32).reshape(n, *shape)
        return out

    def _log_invalid(self, label: str, first: int, events: int, counts: np.ndarray) -> None:
        """One summary line per chunk of the values that become invalid sensors, never one per sensor.

        A WARNING when NaN or inf values are present (a broken input), DEBUG for 1e10 dead channels.
        """
        bad_npho, bad_time, nonfinite = (int(v) for v in counts)
        values = max(events * N_SENSORS, 1)
        if events and bad_npho >= events * N_SENSORS and label not in _warned_all_invalid:
            _warned_all_invalid.add(label)
            log.warning("%s[%d:%d]: every sensor of these %d events is invalid (dead, NaN or inf): they carry no "
                        "information to learn from", label, first, first + events, events)
        log.log(logging.WARNING if nonfinite else logging.DEBUG,
                "%s[%d:%d]: %d events; dead, NaN or inf values: npho %d (%.2f%%), time %d (%.2f%%); "
                "NaN/inf values %d", label, first, first + events, events, bad_npho, 100 * bad_npho / values,
                bad_time, 100 * bad_time / values, nonfinite)

    def _assemble(self, segments: list[Segment], executor: Executor, allocate: Allocator
                  ) -> dict[str, torch.Tensor]:
        """Normalise the segments' rows into one batch of tensors from ``allocate``.

        The batch is cut into ``num_threads`` parts of whole blocks; the calling thread takes one
        itself, so a batch costs one hand-over per extra thread, not one per block.
        """
        size = sum(_length(rows) for _, rows in segments)
        specs = [((size, N_SENSORS, 2), torch.float32), ((size, N_SENSORS, 2), torch.bool)]  # x, valid
        x, valid = allocate(specs)
        x_np, valid_np = x.numpy(), valid.numpy()
        blocks = segment_blocks(segments)
        parts = [blocks[i::self.num_threads] for i in range(self.num_threads)]
        jobs = [executor.submit(normalize_blocks, self.normalizer, part, x_np, valid_np) for part in parts[1:] if part]
        batch = {"x": x, "valid": valid}
        keys = list(ID_BRANCHES) + (list(TRUTH_SHAPES) if self.truth else [])
        for key in keys:
            batch[key] = torch.from_numpy(np.concatenate([source[key][rows] for source, rows in segments]))
        normalize_blocks(self.normalizer, parts[0], x_np, valid_np)
        for job in jobs:
            job.result()
        return batch


# --- loaders ---------------------------------------------------------------------------------------
def make_stream(cfg: Any, split: str, rank: int = 0, world_size: int = 1, epoch: int = 0,
                truth: bool = False) -> XECStream:
    """The stream of one split ("train": shuffled, even steps; "val": file order, every event)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    data = cfg.data
    train = split == "train"
    source = data.train_path if train else data.val_path
    if source is None or source == [] or source == "":
        raise UserError(f"data.{split}_path is not set")
    return XECStream(
        source, cfg.normalizer(), tree_name=data.tree_name, npho_branch=data.npho_branch,
        time_branch=data.time_branch, batch_size=data.batch_size, chunksize=data.chunksize,
        shuffle_buffer=data.shuffle_buffer if train else 0, seed=cfg.training.seed,
        drop_last=data.drop_last if train else False, truth=truth,
        max_events=data.max_events if train else data.val_max_events, num_threads=data.num_threads,
        rank=rank, world_size=world_size, num_workers=data.num_workers, even_steps=train, epoch=epoch,
        loader_prefetch=data.prefetch_factor if data.num_workers > 0 else None, name=split)


def make_loader(cfg: Any, split: str, rank: int = 0, world_size: int = 1, epoch: int = 0,
                truth: bool = False) -> DataLoader:
    """A DataLoader over :func:`make_stream` for one epoch, with workers that end with it.

    ``len(loader)`` is the number of batches it yields, the same on every rank for "train".
    A run that goes on for epochs uses :class:`xecmae.data.loaders.EpochLoader` instead.
    """
    return stream_loader(cfg, make_stream(cfg, split, rank, world_size, epoch, truth))


def stream_loader(cfg: Any, stream: XECStream, persistent: bool = False) -> DataLoader:
    """The DataLoader over ``stream``: its workers, prefetch and pinning from ``cfg.data``.

    ``persistent`` keeps the workers (and their read buffers) alive from one iteration to the
    next; the stream's :meth:`~XECStream.set_epoch` still reaches them.
    """
    workers = cfg.data.num_workers
    extra: dict[str, Any] = {}
    if workers > 0:  # map_large_blocks: a worker forked from a training process gets glibc's thresholds back
        extra = {"prefetch_factor": cfg.data.prefetch_factor, "worker_init_fn": map_large_blocks,
                 "persistent_workers": persistent}
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(), **extra)
