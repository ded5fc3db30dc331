"""One dead-channel map, whatever its source: fixed, per run, or drawn like the generator's.

The parsers of :mod:`xecmae.data.deadchannels` (text files, tables) and
:mod:`xecmae.data.deadroot` (ROOT branches) build a :class:`DeadChannels`; callers ask it for the
mask of an event's run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xecmae.detector import geometry as geo
from xecmae.errors import UserError
from xecmae.simulate.deadmaps import clustered_dead_mask, dead_mask_from_ids, random_dead_mask

DEFAULT_RUN = 1  # the simulator's run, for an event without one
MAX_NAMED = 8  # bad items named in one error line


def listed(items: list, total: int | None = None) -> str:
    """Up to :data:`MAX_NAMED` items, then how many more."""
    total = len(items) if total is None else total
    text = ", ".join(str(i) for i in items[:MAX_NAMED])
    return text + (f" and {total - MAX_NAMED} more" if total > MAX_NAMED else "")


@dataclass(frozen=True)
class DeadChannels:
    """Dead channels of one source: one map for every run, a map per run, or the generator's maps.

    Exactly one of ``fixed`` (4760,), ``table`` (R, 4760) with its sorted ``runs`` (R,), or
    ``generated`` (kind, fraction, seed) is set.
    """

    source: str
    fixed: np.ndarray | None = None
    runs: np.ndarray | None = None
    table: np.ndarray | None = None
    generated: tuple[str, float, int] | None = None

    @property
    def per_run(self) -> bool:
        """The map depends on the event's run and the run must be in the table."""
        return self.table is not None

    def _generate(self, run: int) -> np.ndarray:
        kind, fraction, seed = self.generated
        run = DEFAULT_RUN if run < 0 else int(run)
        return (clustered_dead_mask if kind == "clustered" else random_dead_mask)(fraction, seed, run)

    def mask(self, run: int | None = None) -> np.ndarray:
        """(4760,) bool, True = dead, for an event of ``run`` (None: the source must not need one)."""
        if self.fixed is not None:
            return self.fixed.copy()
        if self.generated is not None:
            return self._generate(-1 if run is None else run)
        if run is None:
            raise UserError(f"dead channels {self.source}: a per-run table; give the run (e.g. --run N)")
        return self.masks(np.array([run]))[0]

    def check_runs(self, runs: np.ndarray, where: str = "the input") -> None:
        """Every run of ``runs`` has a map (a :class:`UserError` naming the missing ones)."""
        if not self.per_run:
            return
        wanted = np.unique(np.asarray(runs, dtype=np.int64))
        missing = wanted[~np.isin(wanted, self.runs)]
        if missing.size:
            have = listed(self.runs.tolist())
            raise UserError(f"dead channels {self.source}: {where} has run(s) {listed(missing.tolist())} "
                            f"that the table lacks (it has run(s) {have})")

    def masks(self, runs: np.ndarray) -> np.ndarray:
        """(N,) run numbers -> (N, 4760) bool, each event's map (read-only for a fixed map)."""
        runs = np.asarray(runs, dtype=np.int64).reshape(-1)
        if self.fixed is not None:
            return np.broadcast_to(self.fixed, (len(runs), geo.N_SENSORS))
        unique, inverse = np.unique(runs, return_inverse=True)
        if self.generated is not None:
            maps = np.stack([self._generate(r) for r in unique]) if len(unique) else np.zeros((0, geo.N_SENSORS), bool)
            return maps[inverse]
        self.check_runs(unique)
        return self.table[np.searchsorted(self.runs, unique)][inverse]


def table_from_pairs(source: str, runs: np.ndarray, ids: np.ndarray, extra_runs: np.ndarray | None = None
                      ) -> DeadChannels:
    """(run, sensor id) pairs -> a per-run :class:`DeadChannels`; ``extra_runs`` have no dead channel."""
    dead_mask_from_ids(ids, source=f"dead map {source}")  # range check, one line naming the bad ids
    known = np.unique(np.concatenate([runs, extra_runs if extra_runs is not None else runs[:0]]))
    table = np.zeros((len(known), geo.N_SENSORS), dtype=bool)
    table[np.searchsorted(known, runs), ids] = True
    return DeadChannels(source, runs=known, table=table)
