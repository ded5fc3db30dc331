"""``xecmae demo``: what a new user runs first."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="directory for everything the demo writes")


def run(args: argparse.Namespace) -> int:
    from xecmae.analysis.display import geometry_figure
    from xecmae.geometry import summary

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(summary())
    geometry_figure().savefig(out / "geometry.png", dpi=110)
    print(f"\nthe six faces: {out / 'geometry.png'}")
    return 0
