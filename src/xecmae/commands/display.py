"""``xecmae display``: the event display of one event of a prediction file.

Rows truth / masked input / prediction / residual / mask, one column per face in its physical
layout, in photons or ns (converted through the normalization stored in the file).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="prediction file (mae_predictions_epoch_N.root)")
    parser.add_argument("--event", "-e", type=int, default=0, help="entry number in the file (default 0)")
    parser.add_argument("--channel", choices=("npho", "time"), default="npho", help="channel to draw (default npho)")
    parser.add_argument("--out", "-o", default=None, help="PNG to write (default: FILE_STEM_eventK_CHANNEL.png here)")
    parser.add_argument("--dpi", type=int, default=100)


def run(args: argparse.Namespace) -> int:
    import matplotlib.pyplot as plt

    from xecmae.analysis.analyze import inspect_file
    from xecmae.analysis.display import prediction_event_figure
    from xecmae.errors import UserError

    _, channels, entries = inspect_file(args.file)
    if args.channel not in channels:
        raise UserError(f"{args.file} has no {args.channel} predictions (channels: {', '.join(channels)})")
    if not 0 <= args.event < entries:
        raise UserError(f"{args.file}: event {args.event} is out of range; the file has {entries} entries"
                        + (f" (0-{entries - 1})" if entries else ""))
    out = Path(args.out) if args.out else Path(f"{Path(args.file).stem}_event{args.event}_{args.channel}.png")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: directory {out.parent} does not exist")
    fig = prediction_event_figure(args.file, entry=args.event, channel=args.channel)
    fig.savefig(out, dpi=args.dpi)
    plt.close(fig)
    print(f"event {args.event} of {args.file} ({args.channel}) drawn in {out}")
    return 0
