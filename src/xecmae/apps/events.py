"""Events of any number of ROOT files, in file order, for applying a trained model.

Inputs are anything :func:`xecmae.data.sources.resolve_inputs` accepts (files, globs,
directories, lists of them). Every file is checked before the first event is read: the tree,
the sensor branches (any names), and the optional ``run``/``event`` and truth branches it has,
so a bad file is refused before any output exists. Empty trees are skipped with a warning.
Dead channels given by the user (:mod:`xecmae.data.deadchannels`) are set invalid (1e10) on
top of what the files already mark; a per-run table must hold every run of the files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from xecmae.data.deadchannels import DeadChannels, apply_dead_channels
from xecmae.data.rootio import ID_BRANCHES, TRUTH_SHAPES, DataError, check_branches, get_tree, open_file, read_range
from xecmae.data.sources import is_sim, resolve_inputs
from xecmae.detector.geometry import N_SENSORS
from xecmae.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputFile:
    path: str
    entries: int
    has_ids: bool
    truth: tuple[str, ...]  # truth branches present with the expected shapes


@dataclass(frozen=True)
class EventSource:
    """Where events come from and under which names."""

    inputs: str | Sequence[str]
    tree: str = "tree"
    npho_branch: str = "npho"
    time_branch: str = "relative_time"
    dead: DeadChannels | None = None
    """Channels to treat as dead besides those the files mark."""

    def plan(self, need_truth: Sequence[str] = ()) -> list[InputFile]:
        """Check every file; ``need_truth`` branches must be present in all of them."""
        if is_sim(self.inputs):
            raise UserError("a sim:// source has no file to read; simulate a file first (xecmae simulate)")
        files = resolve_inputs(list(self.inputs) if not isinstance(self.inputs, str) else self.inputs)
        planned = []
        for path in files:
            with open_file(path) as file:
                tree = get_tree(file, path, self.tree)
                entries = int(tree.num_entries)
                if entries == 0:
                    log.warning("%s: tree %r has no entries; skipped", path, self.tree)
                    continue
                check_branches(tree, path, {self.npho_branch: (N_SENSORS,), self.time_branch: (N_SENSORS,)})
                present = set(tree.keys())
                if need_truth:
                    check_branches(tree, path, {name: TRUTH_SHAPES[name] for name in need_truth})
                truth = tuple(name for name in TRUTH_SHAPES if name in present)
                check_branches(tree, path, {name: TRUTH_SHAPES[name] for name in truth})
                ids = all(name in present for name in ID_BRANCHES)
                if ids:
                    check_branches(tree, path, {name: () for name in ID_BRANCHES})
                if self.dead is not None and self.dead.per_run:
                    if not ids:
                        raise UserError(f"{path}: no run branch, which the per-run dead-channel table "
                                        f"{self.dead.source} needs")
                    self.dead.check_runs(tree["run"].array(library="np"), where=path)
                planned.append(InputFile(path, entries, ids, truth))
        if not planned:
            raise DataError(f"no events: all {len(files)} input file(s) have empty trees")
        return planned

    def chunks(self, planned: Sequence[InputFile], chunk_events: int) -> Iterator[dict[str, np.ndarray]]:
        """Dicts of ``npho``, ``time`` float32 (n, 4760), ``run``, ``event`` int64 and the truth present.

        Files without ``run``/``event`` get run -1 and the entry number as event. The
        :attr:`dead` channels carry the 1e10 dead marker in npho and time.
        """
        for item in planned:
            names = [self.npho_branch, self.time_branch, *item.truth] + list(ID_BRANCHES) * item.has_ids
            start = 0
            for arrays in read_range(item.path, self.tree, names, 0, item.entries, chunk_events):
                n = len(arrays[self.npho_branch])
                out = {"npho": np.ascontiguousarray(arrays[self.npho_branch], dtype=np.float32),
                       "time": np.ascontiguousarray(arrays[self.time_branch], dtype=np.float32)}
                if item.has_ids:
                    out["run"] = np.asarray(arrays["run"], dtype=np.int64)
                    out["event"] = np.asarray(arrays["event"], dtype=np.int64)
                else:
                    out["run"] = np.full(n, -1, dtype=np.int64)
                    out["event"] = np.arange(start, start + n, dtype=np.int64)
                for name in item.truth:
                    out[name] = np.asarray(arrays[name])
                if self.dead is not None:
                    out["npho"], out["time"] = apply_dead_channels(out["npho"], out["time"],
                                                                   self.dead.masks(out["run"]))
                start += n
                yield out


def common_truth(planned: Sequence[InputFile]) -> tuple[str, ...]:
    """Truth branches every planned file has (what an output with one set of branches can copy)."""
    shared = set(planned[0].truth)
    for item in planned[1:]:
        shared &= set(item.truth)
    return tuple(name for name in TRUTH_SHAPES if name in shared)
