"""Dead-channel maps from every source a user has, as one (4760,) bool mask (True = dead).

One string names a source, the same wherever ``--dead-channels SOURCE`` is taken (``simulate``,
``predict``, ``validate``, the benchmarks) and as the ``dead_map`` key of a ``sim://`` source:

- ``FILE`` (text): dead sensor ids separated by commas or whitespace, ``#`` starts a comment.
- ``FILE`` (text or CSV) whose first line is a header naming a ``run`` column and a sensor
  column (``sensor_id``, ``sensor``, ``channel`` or ``id``), e.g. ``run,sensor_id``: a per-run
  table, one dead sensor per line; an event takes the map of its own run.
- ``FILE.root:TREE/BRANCH`` (``FILE.root:BRANCH`` = tree ``tree``): a branch of sensor ids
  (one per entry, or an array per entry) or a per-entry bool[4760] mask. With a ``run`` branch
  beside it, the entries of each run make that run's map (a per-run table); without one, all
  entries together make one map. A channel dead in any entry of a run is dead in the run.
- ``clustered:F[:SEED]`` / ``random:F[:SEED]``: the generator's maps
  (:func:`~xecmae.simulate.deadmaps.clustered_dead_mask`, whole readout boards and scattered
  channels; :func:`~xecmae.simulate.deadmaps.random_dead_mask`, scattered only), a fraction F
  of the 4,760 sensors, fixed by (SEED, run) as in the simulator (SEED 0 by default; an event
  without a run number takes run 1, the simulator's default).

Every problem (an unreadable file, ids that are not whole numbers or outside 0-4759, a bad
line, a run missing from a table) is one :class:`~xecmae.errors.UserError` line naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from xecmae.data.deadmap import DeadChannels, listed, table_from_pairs
from xecmae.detector.normalize import DEAD_VALUE
from xecmae.errors import UserError
from xecmae.simulate.deadmaps import dead_mask_from_ids

GENERATED = re.compile(r"^(clustered|random):([^:]*)(?::([^:]*))?$")
SENSOR_COLUMNS = ("sensor_id", "sensor", "channel", "id")
# --- parsing the sources -------------------------------------------------------------------------
def _number(token: str) -> int | None:
    """A sensor id or run number written in a text file (``12``, ``12.0``), else None."""
    try:
        return int(token)
    except ValueError:
        try:
            value = float(token)
        except ValueError:
            return None
        return int(value) if np.isfinite(value) and value == round(value) else None


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"dead map {path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None


def _lines(text: str) -> list[tuple[int, list[str]]]:
    """(line number, tokens) of the lines that hold anything besides comments."""
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split("#", 1)[0].replace(",", " ").replace(";", " ").split()
        if tokens:
            out.append((number, tokens))
    return out


def _header(tokens: list[str]) -> tuple[int, int] | None:
    """Columns (run, sensor) when ``tokens`` is a table header, else None."""
    names = [t.strip().strip('"').lower() for t in tokens]
    if "run" not in names:
        return None
    sensor = next((names.index(c) for c in SENSOR_COLUMNS if c in names), None)
    return None if sensor is None else (names.index("run"), sensor)


def _bad_lines(path: str, bad: list[str], what: str) -> UserError:
    return UserError(f"dead map {path}: {listed(bad)} {'is' if len(bad) == 1 else 'are'} not {what}")


def read_id_file(path: str) -> np.ndarray:
    """A text file of dead sensor ids (commas or whitespace, ``#`` comments) -> (4760,) bool."""
    ids, bad = [], []
    for number, tokens in _lines(_read_text(path)):
        for token in tokens:
            value = _number(token)
            (bad.append(f"line {number} {token!r}") if value is None else ids.append(value))
    if bad:
        raise _bad_lines(path, bad, "a sensor id" if len(bad) == 1 else "sensor ids")
    return dead_mask_from_ids(np.array(ids, dtype=np.int64), source=f"dead map {path}")


def read_run_table(path: str) -> DeadChannels | None:
    """A text/CSV per-run table (header with ``run`` and a sensor column); None if ``path`` has no such header."""
    lines = _lines(_read_text(path))
    columns = _header(lines[0][1]) if lines else None
    if columns is None:
        return None
    run_col, sensor_col = columns
    runs, ids, bad = [], [], []
    for number, tokens in lines[1:]:
        values = [_number(t) for t in tokens]
        if len(values) <= max(columns) or values[run_col] is None or values[sensor_col] is None:
            bad.append(f"line {number} {' '.join(tokens)!r}")
            continue
        runs.append(values[run_col])
        ids.append(values[sensor_col])
    if bad:
        raise _bad_lines(path, bad, "'run sensor_id' pairs" if len(bad) > 1 else "a 'run sensor_id' pair")
    if not runs:
        raise UserError(f"dead map {path}: the table has a header but no rows")
    return table_from_pairs(path, np.array(runs, np.int64), np.array(ids, np.int64))


def _generated(source: str, match: re.Match) -> DeadChannels:
    kind, fraction_text, seed_text = match.groups()
    try:
        fraction = float(fraction_text)
    except ValueError:
        fraction = float("nan")
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"dead channels {source}: the fraction {fraction_text!r} must be a number in [0, 1)")
    seed = _number(seed_text) if seed_text is not None else 0
    if seed is None or seed < 0:
        raise UserError(f"dead channels {source}: the seed {seed_text!r} must be a non-negative integer")
    return DeadChannels(source, generated=(kind, fraction, seed))


def parse_dead_channels(source: str | Path | DeadChannels) -> DeadChannels:
    """Any source of the module docstring -> :class:`DeadChannels`; problems are one-line :class:`UserError`."""
    if isinstance(source, DeadChannels):
        return source
    text = str(source).strip()
    if not text:
        raise UserError("dead channels: the source is empty (give a file of sensor ids, FILE.root:TREE/BRANCH, "
                        "a run table or clustered:FRACTION)")
    match = GENERATED.match(text)
    if match:
        return _generated(text, match)
    if ".root:" in text or text.endswith(".root"):
        from xecmae.data.deadroot import read_root_map

        return read_root_map(text)
    table = read_run_table(text)
    return table if table is not None else DeadChannels(text, fixed=read_id_file(text))


def dead_channels(source: str | Path | DeadChannels, run: int | None = None) -> np.ndarray:
    """The (4760,) bool dead-channel mask of ``source`` for ``run`` (needed for a per-run table)."""
    return parse_dead_channels(source).mask(run)


def apply_dead_channels(npho: np.ndarray, time: np.ndarray, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw (N, 4760) npho and time with the ``dead`` (N, 4760) or (4760,) channels set to the 1e10 marker.

    New arrays; channels already dead (1e10, NaN, inf) stay as they are, every other one is kept
    bit for bit.
    """
    marker = np.asarray(DEAD_VALUE, dtype=npho.dtype)
    return np.where(dead, marker, npho), np.where(dead, np.asarray(DEAD_VALUE, dtype=time.dtype), time)
