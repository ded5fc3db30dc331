"""``xecmae predict``: fill the dead channels of a ROOT file with a trained inpainter."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="inpainter (or MAE) checkpoint")
    parser.add_argument("--input", required=True, help="ROOT file to repair")
    parser.add_argument("--output", required=True, help="where to write the repaired copy")
    parser.add_argument("--tree", default="tree")
    parser.add_argument("--npho-branch", default="npho")
    parser.add_argument("--time-branch", default="relative_time")
    parser.add_argument("--chunk", type=int, default=1024, help="events read and written at a time")
    parser.add_argument("--batch", type=int, default=64, help="events per model call")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])


def run(args: argparse.Namespace) -> int:
    from xecmae.inference import fill_dead_channels

    counts = fill_dead_channels(args.checkpoint, args.input, args.output, tree_name=args.tree,
                                npho_branch=args.npho_branch, time_branch=args.time_branch,
                                chunk_events=args.chunk, batch_size=args.batch, device=args.device)
    print(f"{args.output}: {counts['events']} events, {counts['filled_channels']} dead channels filled "
          "(branch 'filled' marks them)")
    return 0
