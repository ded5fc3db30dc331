"""``xecmae geometry``: the face table and a picture of the six faces."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="write a PNG of the six faces here")


def run(args: argparse.Namespace) -> int:
    from xecmae.detector.geometry import summary

    print(summary())
    if args.out:
        from xecmae.analysis.display import geometry_figure

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        geometry_figure().savefig(args.out, dpi=110)
        print(f"faces drawn in {args.out}")
    return 0
