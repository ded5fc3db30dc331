"""``xecmae inpaint``: train the dead-channel inpainter (usually ``--resume_from`` an MAE checkpoint)."""

from __future__ import annotations

import argparse

from xecmae.config import InpainterConfig, add_config_flags, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, InpainterConfig)


def run(args: argparse.Namespace) -> int:
    from xecmae.train import distributed as dist
    from xecmae.train.inpaint import inpaint

    run_dir = inpaint(config_from_args(args, InpainterConfig))
    if dist.context_from_env()[0] == 0:
        print(f"run directory: {run_dir}")
    return 0
