"""``xecmae finetune`` (also ``python -m lib.train_regressor``): regression from the (pre-trained) encoder.

``--resume_from`` takes a regression checkpoint (resume), an MAE checkpoint or bare encoder
weights (start from that encoder).
"""

from __future__ import annotations

import argparse

from xecmae.commands import announce_run_directory
from xecmae.config import RegressorConfig
from xecmae.flags import add_config_flags, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, RegressorConfig)


def run(args: argparse.Namespace) -> int:
    from xecmae.analysis.hooks import training_plots
    from xecmae.analysis.plots import plot_regression
    from xecmae.train.finetune import finetune

    return announce_run_directory(finetune(config_from_args(args, RegressorConfig), plot=plot_regression,
                                           hooks=training_plots()))
