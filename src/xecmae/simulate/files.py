"""ROOT files of simulated events: TTrees written chunk by chunk (:class:`~xecmae.data.rootio.TreeWriter`),
atomically, with a writer thread."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xecmae.data.atomic import atomic_paths
from xecmae.data.rootio import TreeWriter, codec
from xecmae.errors import UserError
from xecmae.simulate.generator import BRANCHES, EventGenerator, empty_events

log = logging.getLogger(__name__)

def output_paths(path: str | os.PathLike, files: int) -> list[Path]:
    """``FILE.root`` for one file; ``FILE_0.root`` ... ``FILE_{K-1}.root`` for ``files`` = K > 1."""
    path = Path(path)
    if files == 1:
        return [path]
    suffix = path.suffix or ".root"
    return [path.with_name(f"{path.stem}_{k}{suffix}") for k in range(files)]


def check_writable(paths: Sequence[Path]) -> None:
    """Fail early, with a :class:`UserError`, if any output cannot be created."""
    for path in paths:
        parent = path.parent if str(path.parent) else Path(".")
        if path.is_dir():
            raise UserError(f"cannot write {path}: it is a directory")
        if not parent.is_dir():
            raise UserError(f"cannot write {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"cannot write {path}: directory {parent} is not writable")
        if path.exists() and not os.access(path, os.W_OK):
            raise UserError(f"cannot write {path}: the existing file is read-only")


def write_root(path: str | os.PathLike, n_events: int, generator: EventGenerator, *, chunk_events: int = 512,
               progress: bool = True, compression: str = "lz4", files: int = 1, tree: str = "tree",
               first_event: int = 0, background_writer: bool = True, workers: int = 1) -> list[Path]:
    """Generate ``n_events`` events into ROOT TTree(s) named ``tree``; returns the files written.

    Branches as :data:`BRANCHES` (``npho``/``relative_time`` are ``float[4760]``). Events are
    generated and written ``chunk_events`` at a time (one basket per branch each), so memory
    stays bounded; with ``background_writer`` a second thread compresses and writes a chunk
    while the next one is generated, and ``workers`` threads generate it. ``files`` = K splits
    the events into K contiguous parts, ``FILE_0.root`` ... ``FILE_{K-1}.root``, with event
    numbers continuing across them. Every
    file is written under a temporary name and renamed only when all are complete, so a failure
    (or Ctrl-C) leaves no partial file behind.
    """
    if isinstance(n_events, bool) or not isinstance(n_events, int | np.integer) or n_events <= 0:
        raise UserError(f"the number of events must be a positive integer, got {n_events!r}")
    if isinstance(files, bool) or not isinstance(files, int | np.integer) or files <= 0:
        raise UserError(f"the number of files must be a positive integer, got {files!r}")
    if files > n_events:
        raise UserError(f"cannot split {n_events} events into {files} files")
    if chunk_events <= 0:
        raise UserError(f"chunk_events must be positive, got {chunk_events}")
    if first_event < 0 or first_event + n_events > np.iinfo(np.int32).max:
        raise UserError(f"event numbers {first_event}..{first_event + n_events - 1} do not fit the int32 event branch")
    compressor = codec(compression)
    paths = output_paths(path, int(files))
    check_writable(paths)
    bounds = [first_event + k * n_events // files for k in range(files + 1)]
    branch_types = {name: dtype if shape == () else np.dtype((dtype, shape))
                    for name, (dtype, shape) in BRANCHES.items()}
    bar = _progress_bar(n_events, progress)
    writer = _ChunkWriter(background_writer)
    # chunk buffers, reused (fresh memory is slow to touch): the generator fills native arrays, which
    # are copied into big-endian ones, ROOT's byte order, here, so the single writer thread does less
    buffers: queue.Queue = queue.Queue()
    for _ in range(3 if background_writer else 1):
        native = empty_events(chunk_events)
        buffers.put((native, {k: np.empty_like(v, dtype=v.dtype.newbyteorder(">")) for k, v in native.items()}))
    try:
        with atomic_paths(paths) as temps:
            for temp, start, stop in zip(temps, bounds[:-1], bounds[1:], strict=True):
                with TreeWriter(temp, tree, branch_types, compression=compressor, title="simulated XEC events",
                                atomic=False) as out:
                    try:
                        for lo in range(start, stop, chunk_events):
                            m = min(chunk_events, stop - lo)
                            native, big_endian = buffers.get()
                            generator.fill(native, lo, m, workers=workers)
                            for name, values in native.items():
                                np.copyto(big_endian[name][:m], values[:m])
                            writer.put(out.extend, {k: v[:m] for k, v in big_endian.items()},
                                       done=lambda b=(native, big_endian): buffers.put(b))
                            bar.update(m)
                        writer.flush()
                    except BaseException:
                        writer.abandon()  # nothing may touch the file once it is closed
                        raise
    finally:
        writer.close()
        bar.close()
    log.debug("wrote %d events to %s", n_events, paths[0] if files == 1 else f"{paths[0]} ... {paths[-1]}")
    return paths


class _ChunkWriter:
    """Runs ``extend(chunk)`` calls in order, in one background thread (or inline).

    The queue holds at most one pending chunk, so memory stays at about three chunks. The first
    error in the thread is kept and re-raised in the caller at the next ``put`` or ``flush``;
    after it (or after :meth:`abandon`) queued chunks are dropped.
    """

    def __init__(self, background: bool):
        self._queue: queue.Queue | None = queue.Queue(maxsize=1) if background else None
        self._error: BaseException | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        if self._queue is not None:
            self._thread = threading.Thread(target=self._run, name="xecmae-root-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                extend, chunk, done = item
                try:
                    if not self._stopped:
                        extend(chunk)
                finally:
                    done()
            except BaseException as exc:  # handed to the caller
                self._error, self._stopped = exc, True
            finally:
                self._queue.task_done()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, extend, chunk: dict[str, np.ndarray], done=lambda: None) -> None:
        """Queue ``extend(chunk)``; ``done()`` runs after it (or after it is dropped)."""
        self._raise()
        if self._queue is None:
            try:
                extend(chunk)
            finally:
                done()
        else:
            self._queue.put((extend, chunk, done))

    def flush(self) -> None:
        """Wait until every queued chunk is written."""
        if self._queue is not None:
            self._queue.join()
        self._raise()

    def abandon(self) -> None:
        """Drop queued chunks and wait for the one being written."""
        self._stopped = True
        if self._queue is not None:
            self._queue.join()

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="ev", unit_scale=True, desc="simulate", disable=not enabled, dynamic_ncols=True)
