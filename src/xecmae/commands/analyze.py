"""``xecmae analyze``: per-face tables and plots of a prediction file, beside classical baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from xecmae.detector.geometry import FACE_NAMES

MODES = ("masked", "visible", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="prediction file (mae_predictions_epoch_N.root)")
    parser.add_argument("--face", choices=FACE_NAMES, default=None, help="only this face (default: every face)")
    parser.add_argument("--mode", choices=MODES, default="masked",
                        help="sensors scored: masked = hidden with a valid truth (default), visible, all")
    parser.add_argument("--out", default=None, help="directory for the plots (default: FILE_STEM_analysis/ "
                                                    "beside the file)")
    parser.add_argument("--max-events", type=int, default=None, help="read only the first N events")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip the neighbour averages and the point-source fit (faster)")
    parser.add_argument("--no-plots", action="store_true", help="print the table only")


def run(args: argparse.Namespace) -> int:
    from xecmae.analysis.analyze import analyze, default_output_dir, format_table, write_plots
    from xecmae.errors import UserError

    analysis = analyze(args.file, mode=args.mode, face=args.face, baselines=not args.no_baselines,
                       max_events=args.max_events)
    print(format_table(analysis))
    if args.no_plots:
        return 0
    out = Path(args.out) if args.out is not None else default_output_dir(args.file)
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot write plots into {out}: it is not a directory")
    if not out.parent.is_dir():
        raise UserError(f"cannot write plots into {out}: directory {out.parent} does not exist")
    written = write_plots(analysis, out)
    print(f"\n{len(written)} plots in {out}: {', '.join(p.name for p in written)}")
    return 0
