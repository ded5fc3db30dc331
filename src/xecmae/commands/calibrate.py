"""``xecmae calibrate``: calibrate a regressor's per-event sigma on labelled events (:mod:`xecmae.apps.sigmacal`).

Writes a copy of the checkpoint whose sigma, per component, has pulls of 68% half width 1 on
the given events; every command that loads the copy (``predict``, ``validate``, ``export``) uses it.
"""

from __future__ import annotations

import argparse

from xecmae.commands import add_input_options
from xecmae.data.spec import CHUNK_EVENTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="regressor checkpoint trained with gaussian_nll")
    parser.add_argument("--input", required=True, nargs="+",
                        help="labelled ROOT file(s) the training did not see (its validation file)")
    parser.add_argument("--output", required=True, help="the calibrated checkpoint to write")
    parser.add_argument("--energy-bins", type=int, default=1, metavar="K",
                        help="one scale per component in each of K bins of the predicted energy, equal numbers of "
                             "events (default 1: one scale per component)")
    add_input_options(parser)
    parser.add_argument("--chunk", type=int, default=CHUNK_EVENTS, help="events read at a time")
    parser.add_argument("--batch", type=int, default=256, help="events per model call")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])


def run(args: argparse.Namespace) -> int:
    from xecmae.apps.events import EventSource
    from xecmae.apps.sigmacal import calibrate, format_report
    from xecmae.apps.trained import check_run_options

    check_run_options(args.chunk, args.batch, args.device)
    source = EventSource(args.input, args.tree, args.npho_branch, args.time_branch)
    report = calibrate(args.checkpoint, source, args.output, chunk_events=args.chunk, batch_size=args.batch,
                       device=args.device, energy_bins=args.energy_bins)
    print(format_report(report))
    return 0
