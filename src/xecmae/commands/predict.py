"""``xecmae predict``: apply a trained model to ROOT files.

A regressor checkpoint writes one entry per event with the reconstructed quantities in
physical units (:mod:`xecmae.apps.predict`); an inpainter or MAE checkpoint writes a copy of its
one input with the dead channels filled (:mod:`xecmae.apps.fill`).
"""

from __future__ import annotations

import argparse

from xecmae.commands import add_dead_channels_option, add_input_options
from xecmae.data.spec import CHUNK_EVENTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="regressor, inpainter or MAE checkpoint")
    parser.add_argument("--input", required=True, nargs="+",
                        help="ROOT file(s), globs, directories or list files (an inpainter takes one file)")
    parser.add_argument("--output", required=True, help="ROOT file to write")
    add_input_options(parser)
    parser.add_argument("--chunk", type=int, default=CHUNK_EVENTS, help="events read and written at a time")
    parser.add_argument("--batch", type=int, default=None,
                        help="events per model call (default 256 for a regressor, 64 for an inpainter)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_dead_channels_option(parser, "channels to treat as dead besides those the input marks (a regressor sees "
                                     "them invalid, an inpainter fills them)")


def run(args: argparse.Namespace) -> int:
    from xecmae.data.deadchannels import parse_dead_channels
    from xecmae.errors import UserError
    from xecmae.train.checkpoint import load_checkpoint
    from xecmae.train.initialize import checkpoint_kind

    dead = parse_dead_channels(args.dead_channels) if args.dead_channels is not None else None
    kind = checkpoint_kind(load_checkpoint(args.checkpoint), args.checkpoint)
    if kind == "regressor":
        from xecmae.apps.events import EventSource
        from xecmae.apps.predict import predict_regression

        source = EventSource(args.input, args.tree, args.npho_branch, args.time_branch, dead=dead)
        counts = predict_regression(args.checkpoint, args.input, args.output, source=source,
                                    chunk_events=args.chunk, device=args.device,
                                    batch_size=256 if args.batch is None else args.batch)
        print(f"{args.output}: {counts['events']} events from {counts['files']} file(s), predictions in physical "
              "units (tree 'tree'; tree 'metadata' describes the model)")
        return 0
    from xecmae.apps.fill import fill_dead_channels

    if len(args.input) != 1:
        raise UserError(f"filling dead channels takes one input file, got {len(args.input)}")
    counts = fill_dead_channels(args.checkpoint, args.input[0], args.output, tree_name=args.tree,
                                npho_branch=args.npho_branch, time_branch=args.time_branch,
                                chunk_events=args.chunk, device=args.device, dead=dead,
                                batch_size=64 if args.batch is None else args.batch)
    print(f"{args.output}: {counts['events']} events, {counts['filled_channels']} dead channels filled "
          "(branch 'filled' marks them)")
    return 0
