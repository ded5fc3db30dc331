"""``xecmae inspect PATH``: what is in ROOT inputs, file by file.

For each file: the number of entries, every branch with its type, and per detector face the
fraction of invalid npho (dead: 1e10, NaN or inf) and invalid time (dead, or npho below the
threshold, where the time is not trusted), computed from the data in chunks.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from xecmae.errors import UserError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xecmae.flags import add_key_flag

    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="ROOT file, glob, directory or text file listing paths")
    parser.add_argument("--config", default=None, help="YAML configuration: tree and branch names, threshold")
    add_key_flag(parser, "--tree", key="data.tree_name", help="tree name (default: data.tree_name, 'tree')")
    add_key_flag(parser, "--npho-branch", key="data.npho_branch", help="default: data.npho_branch, 'npho'")
    add_key_flag(parser, "--time-branch", key="data.time_branch",
                 help="default: data.time_branch, 'relative_time'")
    parser.add_argument("--max-events", type=int, default=None,
                        help="read at most this many entries per file for the invalid fractions (default: all)")
    add_key_flag(parser, "--chunksize", key="data.chunksize", type=int,
                 help="entries per read (default: data.chunksize)")
    add_key_flag(parser, "--npho-threshold", key="training.time.npho_threshold", type=float,
                 help="photons below which a time is invalid (default: training.time.npho_threshold)")


def run(args: argparse.Namespace) -> int:
    from xecmae.data.rootio import DataError
    from xecmae.data.sources import is_sim, resolve_inputs
    from xecmae.flags import config_from_args

    cfg = config_from_args(args)
    tree_name, chunksize = cfg.data.tree_name, cfg.data.chunksize
    branches = (cfg.data.npho_branch, cfg.data.time_branch)
    threshold = cfg.training.time.npho_threshold
    if args.max_events is not None and args.max_events <= 0:
        raise UserError("--max-events must be positive")
    if is_sim(args.paths):
        raise UserError("inspect reads ROOT files; a sim:// source has nothing on disk to inspect")
    files = resolve_inputs(args.paths)
    failures = 0
    for number, path in enumerate(files):
        if number:
            print()
        try:
            print(describe_file(path, tree_name, branches, chunksize, args.max_events, threshold, cfg))
        except DataError as exc:
            failures += 1
            print(f"xecmae inspect: error: {exc}", file=sys.stderr)
    return 2 if failures else 0


def describe_file(path: str, tree_name: str, branches: tuple[str, str], chunksize: int, max_events: int | None,
                  threshold: float, cfg) -> str:
    """The report of one file: entries, branch types, invalid fractions per face."""
    from xecmae.config import make_normalizer
    from xecmae.data.fastnorm import count_bad
    from xecmae.data.plan import EVENT_BYTES, READ_STEP_BYTES
    from xecmae.data.rootio import check_branches, get_tree, open_file, read_range
    from xecmae.detector.geometry import FACE_NAMES, N_SENSORS, face_of_sensor

    with open_file(path) as file:
        tree = get_tree(file, path, tree_name)
        entries = int(tree.num_entries)
        names = list(tree.keys())
        listing = [(name, getattr(tree[name], "typename", "?")) for name in names]
        if entries:
            check_branches(tree, path, {branches[0]: (N_SENSORS,), branches[1]: (N_SENSORS,)})
            boundaries = np.asarray(tree.common_entry_offsets(filter_name=list(branches)), dtype=np.int64)
    width = max((len(name) for name, _ in listing), default=4)
    lines = [f"{path}", f"  tree {tree_name!r}: {entries} entries, {len(listing)} branches"]
    lines += [f"    {name:{width}s}  {typename}" for name, typename in listing]
    if not entries:
        lines.append("  no entries: nothing to count (a stream skips this file)")
        return "\n".join(lines)

    normalizer = make_normalizer(cfg.normalization, threshold)
    faces = face_of_sensor()
    bad = np.zeros((2, len(FACE_NAMES)), dtype=np.int64)  # (npho/time, face)
    nonfinite = 0
    stop = min(entries, max_events) if max_events is not None else entries
    step = max(1, min(chunksize, READ_STEP_BYTES // EVENT_BYTES))
    for arrays in read_range(path, tree_name, list(branches), 0, stop, step, boundaries=boundaries):
        npho = np.asarray(arrays[branches[0]], dtype=np.float32)
        time = np.asarray(arrays[branches[1]], dtype=np.float32)
        valid_npho, valid_time = normalizer.validity(npho, time)
        for channel, valid in enumerate((valid_npho, valid_time)):
            per_sensor = len(valid) - np.count_nonzero(valid, axis=0)  # (4760,)
            bad[channel] += np.bincount(faces, weights=per_sensor, minlength=len(FACE_NAMES)).astype(np.int64)
        nonfinite += int(count_bad(npho, time)[2])
        del arrays, npho, time
    sensors = np.bincount(faces, minlength=len(FACE_NAMES))
    lines.append(f"  invalid fractions over {stop} entries{' (of ' + str(entries) + ')' if stop < entries else ''}"
                 f" (npho: dead = 1e10, NaN or inf; time: dead or npho < {threshold:g} photons)")
    lines.append(f"    {'face':8s} {'sensors':>7s} {'npho':>8s} {'time':>8s}")
    for face, name in enumerate(FACE_NAMES):
        values = max(int(sensors[face]) * stop, 1)
        lines.append(f"    {name:8s} {sensors[face]:7d} {bad[0, face] / values:8.2%} {bad[1, face] / values:8.2%}")
    total = max(N_SENSORS * stop, 1)
    lines.append(f"    {'all':8s} {N_SENSORS:7d} {bad[0].sum() / total:8.2%} {bad[1].sum() / total:8.2%}")
    lines.append(f"  NaN/inf values: {nonfinite}")
    log.debug("%s: inspected %d entries", path, stop)
    return "\n".join(lines)
