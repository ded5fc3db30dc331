"""Streaming, sharded, normalized batches of XEC events for training and validation.

The modules of a stream, one job each: :mod:`xecmae.data.spec` (what a stream is asked for),
:mod:`xecmae.data.plan` (pieces, shards, batches per rank and worker), :mod:`xecmae.data.pool`
(the shuffle buffer), this module (the iterable dataset: reading, counting invalid values,
assembling batches) and :mod:`xecmae.data.loaders` (the DataLoaders of a run).

How events reach the model:

1. **Plan** (main process, cheap): the inputs are resolved to files, each file is opened and
   checked (tree, branches, lengths) and its entries counted without reading data. Files are
   cut into pieces of about ``chunksize`` entries, on basket boundaries.
2. **Deal**: the pieces (for training in an order shuffled per epoch, the same on every rank)
   form one sequence of events that is cut into ``world_size * num_workers`` contiguous shares
   of equal size (within one event); shard ``rank * num_workers + worker`` reads its share. No
   event is read twice, every event is read once per epoch, and any number of files works,
   also fewer files than shards (:mod:`xecmae.data.plan`).
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
   validation, which keeps file order (:mod:`xecmae.data.pool`).
5. **Normalize and batch**: whole batches are built in the worker, normalised by
   ``num_threads`` threads straight into shared memory (:mod:`xecmae.data.fastnorm`), and
   handed over as dicts of tensors. Under :func:`~xecmae.data.loaders.make_loader` a worker writes into the
   shared memory of batches the main process has let go of (:mod:`xecmae.data.shared`).

Memory per worker is about 38 kB x (its part of the shuffle buffer) plus a few reads of 32 MB.
Every rank yields the same number of batches (``len(loader)``) in training, so DDP never waits
on a rank that ran out of data; in validation every event is yielded once.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from xecmae.data.fastnorm import count_bad
from xecmae.data.plan import Piece, deal, read_events, share_sizes, split_pieces, worker_batches
from xecmae.data.pool import EventPool, Segment, normalize_blocks, rows_length, segment_blocks
from xecmae.data.rootio import ID_BRANCHES, TRUTH_SHAPES, DataError, ReadBuffers, expected_shapes, read_range, scan
from xecmae.data.shared import Allocator, SharedBuffers, fresh, fresh_shared
from xecmae.data.sources import is_sim, resolve_inputs
from xecmae.data.spec import StreamSpec
from xecmae.detector.geometry import N_SENSORS
from xecmae.detector.normalize import Normalizer

log = logging.getLogger(__name__)

_warned_empty: set[str] = set()
_warned_all_invalid: set[str] = set()


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
        normalizer: raw npho (photons) and time (seconds) -> the model's input and validity.
        spec: how to read, deal, shuffle and batch (:class:`~xecmae.data.spec.StreamSpec`; a
            split's from :meth:`xecmae.config.DataConfig.stream_spec`); ``spec.num_workers``
            is the number of DataLoader workers the stream will be iterated by.
        seed: seeds the piece order and the shuffle buffer, with the epoch, rank and worker.
        rank, world_size: this process among the ranks of a distributed run.
        epoch: the first epoch (:meth:`set_epoch` selects later ones).
        truth: also read the truth branches.
        read_ahead: read on a thread of its own, one read ahead of the normalization.
        recycle: the stream is iterated by a DataLoader with ``spec.num_workers`` workers and
            ``spec.prefetch_factor``, as :func:`xecmae.data.loaders.stream_loader` builds it:
            workers then recycle the shared memory of batches the main process is done with
            (:mod:`xecmae.data.shared`). False (for a DataLoader built elsewhere): every batch is
            new memory.
        name: the stream's name in log lines.
    """

    def __init__(self, source: str | Sequence[str], normalizer: Normalizer, spec: StreamSpec, *, seed: int,
                 rank: int = 0, world_size: int = 1, epoch: int = 0, truth: bool = False, read_ahead: bool = True,
                 recycle: bool = False, name: str = "data"):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.normalizer, self.spec, self.seed, self.truth = normalizer, spec, seed, truth
        self.rank, self.world_size, self.name = rank, world_size, name
        # in shared memory: workers that live across epochs (persistent_workers) see set_epoch
        self._epoch = torch.full((), int(epoch), dtype=torch.int64).share_memory_()
        self.read_ahead = read_ahead
        self.recycle = recycle
        self.consumer_pid = os.getpid()  # the process that builds the stream iterates the loader
        self.read_events = read_events(spec.batch_size, spec.chunksize)
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
            self.pieces = split_pieces(counts, spec.chunksize)
            available = sum(entries for _, entries, _ in counts)
        self.total_events = min(available, spec.max_events) if spec.max_events is not None else available
        self.counts = worker_batches(self.total_events, spec.batch_size, world_size, spec.num_workers,
                                     spec.drop_last, spec.even_steps)
        if rank == 0:
            self._log_plan(available)

    # -- planning --
    def _scan_files(self) -> list[tuple[str, int, np.ndarray]]:
        expected = expected_shapes(self.spec.npho_branch, self.spec.time_branch, self.truth)
        counts, self._has_ids = [], {}
        for path in self.files:
            info = scan(path, self.spec.tree_name, expected)
            if info.entries == 0:
                if path not in _warned_empty:
                    _warned_empty.add(path)
                    log.warning("%s: tree %r has no entries; skipped", path, self.spec.tree_name)
                continue
            counts.append((path, info.entries, info.boundaries))
            self._boundaries[path] = info.boundaries
            self._has_ids[path] = info.has_ids
        if not counts:
            raise DataError(f"{self.name}: no events: all {len(self.files)} input file(s) have empty trees")
        return counts

    def _log_plan(self, available: int) -> None:
        shards = self.world_size * max(self.spec.num_workers, 1)
        steps = int(self.counts[self.rank].sum())
        used = steps * self.spec.batch_size
        source = self.sim_url if self.sim_spec is not None else f"{len(self.files)} file(s)"
        log.info("%s: %s, %d events%s -> %d shard(s) (%d rank(s) x %d worker(s)), %d batches of %d per rank%s",
                 self.name, source, available,
                 f" (max_events {self.total_events})" if self.total_events < available else "",
                 shards, self.world_size, max(self.spec.num_workers, 1), steps, self.spec.batch_size,
                 f", about {self.total_events - used * self.world_size} events per epoch left out"
                 if self.spec.drop_last and used * self.world_size < self.total_events else "")
        if steps == 0:
            log.warning("%s: %d events are fewer than one batch of %d per worker: this rank yields nothing",
                        self.name, self.total_events, self.spec.batch_size)

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

    # -- iteration --
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != max(self.spec.num_workers, 1):
            raise ValueError(f"{self.name}: stream planned for num_workers={self.spec.num_workers} "
                             f"but iterated by {workers} worker(s)")
        return self._batches(worker, workers, shared=info is not None)

    def _batches(self, worker: int, workers: int, shared: bool) -> Iterator[dict[str, torch.Tensor]]:
        buffers = None
        if shared and self.recycle and os.getppid() == self.consumer_pid:
            buffers = SharedBuffers(self.consumer_pid, received_after=self.spec.prefetch_factor + 1)
        allocate = buffers.take if buffers is not None else fresh_shared if shared else fresh
        shard, shards = self.rank * workers + worker, self.world_size * workers
        limit = int(self.counts[self.rank, worker])
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker]) if self.spec.shuffle else None
        pool = EventPool(self.spec.batch_size, self.spec.shuffle_buffer // workers, rng)
        share = int(share_sizes(self.total_events, shards)[shard])
        events = 0
        if limit > 0:
            with ThreadPoolExecutor(self.spec.num_threads, thread_name_prefix="xecmae-data") as executor:
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
                     "ragged tail" if share - events < self.spec.batch_size else "ragged tail, even steps over ranks")

    def _pooled(self, pool: EventPool, shard: int, shards: int, executor: Executor,
                allocate: Allocator) -> Iterator[dict[str, torch.Tensor]]:
        chunks = self._chunks(shard, shards)
        if self.read_ahead:
            chunks = _read_ahead(chunks)
        for chunk in chunks:
            for segments in pool.push(chunk):
                yield self._assemble(segments, executor, allocate)
            segments = chunk = None  # hold one read at a time
        for segments in pool.flush(self.spec.drop_last):
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
            if last or tally[2] >= self.spec.chunksize:
                self._log_invalid(*tally)
                tally = []
            yield chunk
            del chunk
        if tally:
            self._log_invalid(*tally)

    def _root_reads(self, shard: int, shards: int) -> Iterator[tuple[str, int, dict, bool]]:
        """(file name, first entry, read, last read of its piece) for this shard's pieces."""
        order_seed = [self.seed, self.epoch] if self.spec.shuffle else None
        mine = deal(self.pieces, shards, order_seed, self.spec.max_events)[shard]
        branches = [self.spec.npho_branch, self.spec.time_branch]
        buffers = ReadBuffers()  # the sensor arrays of every read land in reused memory
        if self.truth:
            branches += list(TRUTH_SHAPES)
        for piece in mine:
            has_ids = self._has_ids[piece.path]
            names = branches + list(ID_BRANCHES) if has_ids else branches
            name, start = os.path.basename(piece.path), piece.start
            for arrays in read_range(piece.path, self.spec.tree_name, names, piece.start, piece.stop, self.read_events,
                                     self._boundaries[piece.path], buffers, into=branches[:2]):
                n = len(arrays[self.spec.npho_branch])
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
            if self.spec.npho_branch not in arrays and "npho" in arrays:
                arrays[self.spec.npho_branch] = arrays["npho"]
            if self.spec.time_branch not in arrays and "relative_time" in arrays:
                arrays[self.spec.time_branch] = arrays["relative_time"]
            n = min(len(arrays[self.spec.npho_branch]), remaining)
            arrays = {k: v[:n] for k, v in arrays.items()}
            remaining -= n
            chunk = self._standardise(arrays, f"{self.sim_url} shard {shard}")
            yield self.sim_url, int(chunk["event"][0]), chunk, False
            del chunk

    def _standardise(self, arrays: dict[str, np.ndarray], label: str) -> dict[str, np.ndarray]:
        """Canonical keys and dtypes: npho/time float32 (n, 4760), run/event int64, truth float32."""
        out = {"npho": np.ascontiguousarray(arrays[self.spec.npho_branch], dtype=np.float32),
               "time": np.ascontiguousarray(arrays[self.spec.time_branch], dtype=np.float32)}
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
        size = sum(rows_length(rows) for _, rows in segments)
        specs = [((size, N_SENSORS, 2), torch.float32), ((size, N_SENSORS, 2), torch.bool)]  # x, valid
        x, valid = allocate(specs)
        x_np, valid_np = x.numpy(), valid.numpy()
        blocks = segment_blocks(segments)
        parts = [blocks[i::self.spec.num_threads] for i in range(self.spec.num_threads)]
        jobs = [executor.submit(normalize_blocks, self.normalizer, part, x_np, valid_np) for part in parts[1:] if part]
        batch = {"x": x, "valid": valid}
        keys = list(ID_BRANCHES) + (list(TRUTH_SHAPES) if self.truth else [])
        for key in keys:
            batch[key] = torch.from_numpy(np.concatenate([source[key][rows] for source, rows in segments]))
        normalize_blocks(self.normalizer, parts[0], x_np, valid_np)
        for job in jobs:
            job.result()
        return batch

