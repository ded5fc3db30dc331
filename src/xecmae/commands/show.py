"""``xecmae show``: draw one event of a ROOT file, all six faces in their physical arrangement."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from xecmae.commands import add_input_options

TRUTH_BRANCHES = ("energyTruth", "uvwTruth", "run", "event")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="ROOT file with a TTree of npho / relative_time float[4760] branches")
    parser.add_argument("--event", "-e", type=int, default=0, help="entry number in the tree (default 0)")
    parser.add_argument("--out", "-o", default=None, help="PNG to write (default: FILE_eventK.png here)")
    add_input_options(parser, npho_threshold=True)
    parser.add_argument("--dpi", type=int, default=110)


def read_event(path: str, tree: str, entry: int, branches: tuple[str, ...]) -> dict[str, np.ndarray]:
    """One entry of ``branches`` (missing truth branches are skipped) as numpy values."""
    from xecmae.data.rootio import check_branches, get_tree, open_file
    from xecmae.detector.geometry import N_SENSORS
    from xecmae.errors import UserError

    with open_file(str(path)) as handle:
        ttree = get_tree(handle, str(path), tree)
        entries = ttree.num_entries
        if not 0 <= entry < entries:
            raise UserError(f"{path}: event {entry} is out of range; the tree has {entries} entries (0-{entries - 1})")
        required, optional = branches[:2], branches[2:]
        check_branches(ttree, str(path), {name: (N_SENSORS,) for name in required})
        names = [*required, *(b for b in optional if b in ttree)]
        arrays = ttree.arrays(names, entry_start=entry, entry_stop=entry + 1, library="np")
    return {name: np.asarray(values[0]) for name, values in arrays.items()}


def run(args: argparse.Namespace) -> int:
    from xecmae.analysis.display import event_figure, linear_norm, npho_norm
    from xecmae.detector.normalize import Normalizer
    from xecmae.errors import UserError

    event = read_event(args.file, args.tree, args.event, (args.npho_branch, args.time_branch, *TRUTH_BRANCHES))
    npho = event[args.npho_branch].astype(np.float64)
    time = event[args.time_branch].astype(np.float64)
    valid_npho, valid_time = Normalizer(npho_threshold=args.npho_threshold).validity(npho, time)
    dead = ~valid_npho
    # dim sensors (npho <= 0) sit at the bottom of the log scale rather than looking dead
    norm_n = npho_norm(npho, valid_npho)
    shown_npho = np.where(valid_npho, np.maximum(npho, norm_n.vmin), np.nan)
    time_ns = np.where(valid_time, time * 1e9, np.nan)
    panels = [
        ("npho [photons]", shown_npho, norm_n, "viridis"),
        (f"relative_time [ns] (npho >= {args.npho_threshold:g})", time_ns, linear_norm(time_ns, valid_time),
         "plasma"),
    ]
    title = f"{Path(args.file).name}  entry {args.event}"
    if "run" in event and "event" in event:
        title += f"  (run {int(event['run'])}, event {int(event['event'])})"
    if "energyTruth" in event:
        title += f"  E = {float(event['energyTruth']) * 1e3:.2f} MeV"
    if "uvwTruth" in event:
        u, v, w = (float(x) for x in event["uvwTruth"])
        title += f"  (u, v, w) = ({u:.1f}, {v:.1f}, {w:.1f}) cm"
    title += f"\ntotal npho {npho[valid_npho].sum():.3g}, {int(dead.sum())} dead channels (grey, crossed)"
    fig = event_figure(panels, dead=dead, title=title)
    out = Path(args.out) if args.out else Path(f"{Path(args.file).stem}_event{args.event}.png")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: directory {out.parent} does not exist")
    fig.savefig(out, dpi=args.dpi)
    print(f"event {args.event} of {args.file} drawn in {out}")
    return 0
