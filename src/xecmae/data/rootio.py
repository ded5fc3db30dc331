"""Validated reading of XEC TTrees in chunks, and the one writer of ROOT files (atomic, in chunks).

Layout of an input file: a TTree (``tree`` by default) with per-event
fixed-size arrays ``npho`` float32[4760] (photons) and ``relative_time`` float32[4760]
(seconds); optional scalars ``run`` and ``event``; truth branches for fine-tuning. Every
problem found here is a :class:`DataError` naming the file and what is wrong, never a
traceback from inside uproot.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import uproot

from xecmae.data.atomic import CloseOrAbort, Partial
from xecmae.data.readbuffers import ReadBuffers
from xecmae.data.sources import REMOTE_SCHEMES
from xecmae.detector.geometry import N_SENSORS
from xecmae.errors import UserError

log = logging.getLogger(__name__)

TRUTH_SHAPES: dict[str, tuple[int, ...]] = {
    "energyTruth": (),  # GeV
    "timeTruth": (),  # ns
    "uvwTruth": (3,),  # cm, local (u = z, v = arc on the inner face, w = depth)
    "xyzTruth": (3,),  # cm, first interaction
    "xyzVTX": (3,),  # cm, vertex
    "emiVec": (3,),  # unit vector, vertex -> first interaction
    "emiAng": (2,),  # degrees, (theta from +z, phi = atan2(vy, -vx))
}
ID_BRANCHES = ("run", "event")
_MAX_LISTED = 40


class DataError(UserError):
    """A bad input file or chunk, worded as one line that names the file.

    A DataLoader worker re-raises its exceptions in the main process as ``type(message)`` where
    the message carries the worker's traceback; the constructor keeps only the original line,
    so the command line still prints one line.
    """

    def __init__(self, message: str):
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


@dataclass(frozen=True)
class TreeInfo:
    """What a scan of one file found: entries, optional branches, where baskets start and end."""

    path: str
    entries: int
    has_ids: bool  # both `run` and `event` are present
    boundaries: np.ndarray  # entry numbers at which every sensor branch starts a new basket, 0 ... entries


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_MAX_LISTED])
    return (shown + f", ... ({len(names)} in all)") if len(names) > _MAX_LISTED else (shown or "none")


# --- opening -------------------------------------------------------------------------------
def open_file(path: str):
    """Open a ROOT file for reading; local files are read with threads, not memory-mapped.

    Memory-mapping would count every page of the file read so far in the process's resident
    memory; plain reads keep the resident size to the arrays actually held.
    """
    local = not path.startswith(REMOTE_SCHEMES)
    options = {"handler": uproot.source.file.MultithreadedFileSource} if local else {}
    try:
        file = uproot.open(path, array_cache=None, **options)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot be opened as a ROOT file ({_brief(exc)})") from None
    if local:
        size = os.path.getsize(path)
        expected = int(file.file.fEND)
        if expected > size:
            file.close()
            raise DataError(f"{path}: truncated ROOT file: its header says {expected} bytes, the file has {size}")
    return file


def get_tree(file, path: str, tree_name: str):
    """The TTree ``tree_name`` of an open file; a missing or non-TTree object lists what is there."""
    try:
        classes = {key.split(";")[0]: cls for key, cls in file.classnames().items()}
    except Exception as exc:
        raise DataError(f"{path}: cannot list the file's contents ({_brief(exc)})") from None
    if tree_name not in classes:
        trees = [name for name, cls in classes.items() if cls in ("TTree", "TNtuple", "ROOT::RNTuple")]
        raise DataError(f"{path}: no tree named {tree_name!r}; trees present: {_listing(trees)}")
    if classes[tree_name] not in ("TTree", "TNtuple"):
        raise DataError(f"{path}: {tree_name!r} is a {classes[tree_name]}, not a TTree")
    try:
        return file[tree_name]
    except Exception as exc:
        raise DataError(f"{path}: cannot read tree {tree_name!r} ({_brief(exc)})") from None


def check_branches(tree, path: str, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Every expected branch exists, is numeric, fixed-size with the expected per-event shape."""
    present = list(tree.keys())
    missing = [name for name in expected if name not in present]
    if missing:
        raise DataError(f"{path}: tree {tree.name!r} has no branch {', '.join(map(repr, missing))}; "
                        f"branches present: {_listing(present)}")
    for name, shape in expected.items():
        branch = tree[name]
        try:
            interpretation = branch.interpretation
        except Exception as exc:
            raise DataError(f"{path}: branch {name!r} cannot be interpreted ({_brief(exc)})") from None
        typename = getattr(branch, "typename", "?")
        if not isinstance(interpretation, uproot.AsDtype):
            raise DataError(f"{path}: branch {name!r} has type {typename}, not a fixed-size array of numbers; "
                            f"expected {_describe_shape(shape)} per event")
        if interpretation.from_dtype.base.kind not in "biuf":
            raise DataError(f"{path}: branch {name!r} has type {typename}, not numbers")
        found = tuple(interpretation.inner_shape)
        if found != tuple(shape):
            raise DataError(f"{path}: branch {name!r} has the wrong length: {_describe_shape(found)} per event "
                            f"({typename}), expected {_describe_shape(shape)}")
        if branch.num_entries != tree.num_entries:
            raise DataError(f"{path}: branch {name!r} has {branch.num_entries} entries, "
                            f"the tree has {tree.num_entries}")


def _describe_shape(shape: tuple[int, ...]) -> str:
    if not shape:
        return "1 value"
    return f"{int(np.prod(shape))} values" if len(shape) == 1 else f"{'x'.join(map(str, shape))} values"


def scan(path: str, tree_name: str, expected: Mapping[str, tuple[int, ...]]) -> TreeInfo:
    """Open, check and count one file without reading event data (cached per file version)."""
    try:
        stat = os.stat(path)
        stamp = (stat.st_size, stat.st_mtime_ns)
    except OSError:
        stamp = (-1, -1)
    return _scan(path, stamp, tree_name, tuple((k, tuple(v)) for k, v in expected.items()))


@functools.lru_cache(maxsize=8192)
def _scan(path: str, stamp: tuple[int, int], tree_name: str, expected: tuple) -> TreeInfo:
    with open_file(path) as file:
        tree = get_tree(file, path, tree_name)
        entries = int(tree.num_entries)
        if entries == 0:
            return TreeInfo(path, 0, False, np.zeros(1, dtype=np.int64))
        check_branches(tree, path, dict(expected))
        present = set(tree.keys())
        ids = [name for name in ID_BRANCHES if name in present]
        if ids:
            check_branches(tree, path, {name: () for name in ids})
        sensors = [name for name, shape in expected if shape == (N_SENSORS,)]
        try:
            boundaries = np.asarray(tree.common_entry_offsets(filter_name=sensors), dtype=np.int64)
        except Exception as exc:
            raise DataError(f"{path}: cannot read the basket layout of {', '.join(sensors)} ({_brief(exc)})") from None
        return TreeInfo(path, entries, len(ids) == len(ID_BRANCHES), boundaries)


# --- reading -------------------------------------------------------------------------------
def read_steps(entry_start: int, entry_stop: int, step_size: int,
               boundaries: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Cut [entry_start, entry_stop) into reads of about ``step_size`` entries, ending on basket boundaries.

    A read that ended inside a basket would make the next read decompress that basket again;
    with ``boundaries`` every read (but the ends of the range) starts and stops where baskets
    do, and holds at least one basket.
    """
    steps, start = [], entry_start
    while start < entry_stop:
        stop = min(start + step_size, entry_stop)
        if boundaries is not None and stop < entry_stop:
            after = np.searchsorted(boundaries, stop)  # first boundary >= stop
            stop = min(int(boundaries[after]), entry_stop) if after < len(boundaries) else entry_stop
        steps.append((start, stop))
        start = stop
    return steps


def read_range(path: str, tree_name: str, branches: Sequence[str], entry_start: int, entry_stop: int,
               step_size: int, boundaries: np.ndarray | None = None, buffers: ReadBuffers | None = None,
               into: Sequence[str] = ()) -> Iterator[dict[str, np.ndarray]]:
    """Entries [entry_start, entry_stop) of ``branches`` in reads of about ``step_size`` events.

    Yields dicts of numpy arrays in native byte order, (n,) or (n, *shape). This is what
    ``uproot.iterate`` does, one ``TTree.arrays`` call per read (see :func:`read_steps`), but
    without the iterator's reference to the previous read while the next one runs: with the
    caller dropping its reference too, one read is held at a time. The branches named in
    ``into`` (fixed-size arrays of numbers) are converted to float32 straight into arrays from
    ``buffers``.
    """
    into = [name for name in into if name in branches] if buffers is not None else []
    rest = [name for name in branches if name not in into]
    with open_file(path) as file:
        tree = get_tree(file, path, tree_name)
        buffered = {name: tree[name] for name in into}
        for start, stop in read_steps(entry_start, entry_stop, step_size, boundaries):
            try:
                arrays = tree.arrays(rest, entry_start=start, entry_stop=stop, library="np") if rest else {}
                for name, branch in buffered.items():
                    out = buffers.take(name, stop - start, branch.interpretation.inner_shape, np.float32)
                    arrays[name] = _read_into(branch, out, start, stop)
            except Exception as exc:
                raise DataError(f"{path}: cannot read entries {start}-{stop} of tree {tree_name!r} "
                                f"({_brief(exc)})") from None
            yield arrays
            del arrays


def _read_into(branch, out: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Entries [start, stop) of a fixed-size numeric branch, converted into ``out``."""
    array = branch.array(interpretation=branch.interpretation.inplace(out), entry_start=start, entry_stop=stop,
                         library="np")
    if array.shape != out.shape or not np.shares_memory(array, out):
        raise ValueError(f"uproot returned {array.shape} instead of filling {out.shape} in place")
    return out


# --- writing -------------------------------------------------------------------------------
COMPRESSIONS = ("lz4", "zlib", "lzma", "none")


def codec(compression: str | uproot.compression.Compression | None):
    """An uproot codec from a name of :data:`COMPRESSIONS` (level 1 each), or a codec as given."""
    if not isinstance(compression, str):
        return compression
    table = {"lz4": lambda: uproot.LZ4(1), "zlib": lambda: uproot.ZLIB(1), "lzma": lambda: uproot.LZMA(1),
             "none": lambda: None}
    if compression not in table:
        raise UserError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")
    return table[compression]()


def branch_types(arrays: Mapping[str, np.ndarray]) -> dict[str, np.dtype]:
    """Per-event TTree branch types of a dict of (n, ...) arrays: float32[4760] for (n, 4760)."""
    return {name: np.dtype((a.dtype, a.shape[1:])) if a.ndim > 1 else a.dtype for name, a in arrays.items()}


def _metadata_column(value: str | float | int | np.generic) -> tuple[Any, Any]:
    """(branch type, one-entry array): strings as strings, numpy scalars keep their type, int -> int64."""
    if isinstance(value, str):
        import awkward as ak

        return "string", ak.Array([value])
    dtype = value.dtype if isinstance(value, np.generic) else np.int64 if isinstance(value, int) else np.float64
    return np.dtype(dtype), np.array([value], dtype=dtype)


class TreeWriter(CloseOrAbort):
    """The one ROOT writer: a TTree filled chunk by chunk, plus one-entry metadata trees, atomically.

    The file is written at ``.NAME.partial-PID`` (:mod:`xecmae.data.atomic`) and renamed when
    :meth:`close` completes; :meth:`abort`, or an exception in a ``with`` block, removes it
    (``atomic=False``: the caller writes to a partial path already). Branch types come from
    ``types`` or from the first chunk (``mktree``: uproot 5 would write an RNTuple otherwise).
    Each flush is one basket per branch; ``basket_events`` gathers small chunks up to that many
    events, since baskets of >= 100 kB per branch keep the file efficient.
    """

    def __init__(self, path: str | os.PathLike, tree: str = "tree", types: Mapping[str, Any] | None = None, *,
                 compression: str | uproot.compression.Compression | None = "lz4", title: str = "",
                 basket_events: int = 0, atomic: bool = True):
        self.path, self.tree_name, self.title = Path(path), tree, title
        self.basket_events, self.entries = basket_events, 0
        self._pending: list[Mapping[str, np.ndarray]] = []
        self._buffered = 0
        self._partial = Partial(self.path) if atomic else None
        try:
            self.file = uproot.recreate(self._partial.path if atomic else self.path, compression=codec(compression))
        except BaseException:
            self.abort()
            raise
        self.tree = self.file.mktree(tree, dict(types), title=title) if types is not None else None

    def extend(self, chunk: Mapping[str, np.ndarray]) -> None:
        """Append a dict of equal-length (n, ...) arrays."""
        self._pending.append(chunk)
        self._buffered += len(next(iter(chunk.values())))
        if self._buffered >= self.basket_events:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending, n = self._pending, [], self._buffered
        joined = pending[0] if len(pending) == 1 else {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
        if self.tree is None:
            self.tree = self.file.mktree(self.tree_name, branch_types(joined), title=self.title)
        self.tree.extend(dict(joined))
        self.entries += n
        self._buffered = 0

    def write_metadata(self, values: Mapping[str, Any], name: str = "metadata") -> None:
        """A one-entry TTree ``name``: strings, numpy scalars (their type), ints (int64), floats (float64)."""
        columns = {key: _metadata_column(value) for key, value in values.items()}
        tree = self.file.mktree(name, {key: kind for key, (kind, _) in columns.items()})
        tree.extend({key: array for key, (_, array) in columns.items()})

    def _complete(self) -> Path:
        """Write what is buffered, close the file and give it its final name."""
        self.flush()
        if self.tree is None:
            raise ValueError(f"{self.path}: a tree needs branch types when there are no chunks")
        self.file.close()
        return self._partial.commit() if self._partial else self.path

    def abort(self) -> None:
        """Close and remove the partial file (a no-op after :meth:`close`)."""
        if hasattr(self, "file"):
            self.file.close()
        if self._partial:
            self._partial.discard()


def write_tree(path: str | os.PathLike, chunks: Iterable[Mapping[str, np.ndarray]], tree_name: str = "tree",
               types: Mapping[str, np.dtype] | None = None, compression="lz4") -> int:
    """Write chunks (dicts of equal-length arrays) as one TTree, atomically; returns the number of entries."""
    with TreeWriter(path, tree_name, types, compression=compression) as out:
        for chunk in chunks:
            out.extend(chunk)
    return out.entries


def expected_shapes(npho_branch: str, time_branch: str, truth: bool) -> dict[str, tuple[int, ...]]:
    """Per-event shapes of the branches a stream needs."""
    shapes = {npho_branch: (N_SENSORS,), time_branch: (N_SENSORS,)}
    if truth:
        shapes.update(TRUTH_SHAPES)
    return shapes
