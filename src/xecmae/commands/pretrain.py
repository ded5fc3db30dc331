"""``xecmae pretrain`` (also ``python -m lib.train_mae``): masked-autoencoder pre-training.

Works with a YAML configuration (``--config``), with flags alone (legacy CLI mode), or both:
flags override the file. Under ``torchrun`` every process runs this same command.
"""

from __future__ import annotations

import argparse

from xecmae.commands import announce_run_directory
from xecmae.config import MAEConfig
from xecmae.flags import add_config_flags, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--summary", action="store_true", help="print the model's parameters per part and exit")
    add_config_flags(parser, MAEConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, MAEConfig)
    if args.summary:
        from xecmae.train.pretrain import summary

        print(summary(cfg))
        return 0
    from xecmae.analysis.hooks import training_plots
    from xecmae.train.pretrain import pretrain

    return announce_run_directory(pretrain(cfg, hooks=training_plots()))
