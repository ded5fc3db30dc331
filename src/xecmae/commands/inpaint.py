"""``xecmae inpaint``: train the dead-channel inpainter (usually ``--resume_from`` an MAE checkpoint)."""

from __future__ import annotations

import argparse

from xecmae.commands import announce_run_directory
from xecmae.config import InpainterConfig
from xecmae.flags import add_config_flags, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, InpainterConfig)


def run(args: argparse.Namespace) -> int:
    from xecmae.analysis.hooks import training_plots
    from xecmae.train.inpaint import inpaint

    return announce_run_directory(inpaint(config_from_args(args, InpainterConfig), hooks=training_plots()))
