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
    from xecmae.train import distributed as dist
    from xecmae.train.finetune import finetune

    cfg = config_from_args(args, RegressorConfig)
    run_dir = finetune(cfg, plot=plot_regression, hooks=training_plots())
    announce_run_directory(run_dir)
    if cfg.gaussian_tasks() and dist.context_from_env()[0] == 0:
        val = cfg.data.val_path if isinstance(cfg.data.val_path, str) and cfg.data.val_path else "VALIDATION.root"
        print(f"per-event sigmas of {', '.join(cfg.gaussian_tasks())}: calibrate them on labelled events the "
              f"training did not see,\n  xecmae calibrate --checkpoint {run_dir}/regressor_checkpoint_best.pth "
              f"--input {val} --output {run_dir}/regressor_calibrated.pth")
    return 0
