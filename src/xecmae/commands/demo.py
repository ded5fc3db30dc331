"""``xecmae demo``: simulate a small dataset, pre-train the tiny model for a few minutes, show the result.

Everything lands in one directory (default ``demo_output/``): the simulated ROOT files, the run
directory with checkpoints, the prediction file, the event display and the loss curves.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from xecmae.flags import add_key_flag

    parser.add_argument("--out", default="demo_output", help="directory for everything the demo writes")
    parser.add_argument("--train-events", type=int, default=2000, help="simulated training events per epoch")
    parser.add_argument("--val-events", type=int, default=256, help="simulated validation events")
    add_key_flag(parser, "--epochs", key="training.epochs", type=int)  # defaults: DEMO below
    add_key_flag(parser, "--batch", key="data.batch_size", type=int)
    add_key_flag(parser, "--seed", key="training.seed", type=int)


DEMO = {
    "data": {"batch_size": 32, "chunksize": 512, "num_workers": 1, "num_threads": 1, "shuffle_buffer": 2048},
    "model": {"size": "tiny"},
    "training": {"epochs": 6, "lr": 2e-3, "warmup_epochs": 0.5, "lr_min": 1e-4, "seed": 1,
                 "track_metrics": True, "track_mae_rmse": True, "log_interval": 10},
    "checkpoint": {"run_name": "mae_tiny", "overwrite": True, "save_predictions": True,
                   "predictions_max_events": 64},
    "mlflow": {"experiment": "xecmae-demo"},
}
"""The demo's run, below its flags: the tiny model, a few CPU minutes, predictions at the last epoch only."""


def demo_config(out: Path, train: str, val: str, args: argparse.Namespace):
    from xecmae.config import MAEConfig
    from xecmae.flags import config_from_args

    preset = {**DEMO, "data": {**DEMO["data"], "train_path": train, "val_path": val},
              "checkpoint": {**DEMO["checkpoint"], "save_dir": str(out)}}
    cfg = config_from_args(args, MAEConfig, preset)
    cfg.checkpoint.root_save_interval = cfg.training.epochs
    return cfg


def run(args: argparse.Namespace) -> int:
    from xecmae.analysis.hooks import training_plots
    from xecmae.simulate import EventGenerator, write_root
    from xecmae.train.pretrain import pretrain

    out = Path(args.out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cfg = demo_config(out, str(data / "train.root"), str(data / "val.root"), args)
    seed, epochs = cfg.training.seed, cfg.training.epochs
    print(f"1/3 simulating {args.train_events} training and {args.val_events} validation events into {data}/")
    write_root(data / "train.root", args.train_events, EventGenerator(seed=seed), progress=False)
    write_root(data / "val.root", args.val_events, EventGenerator(seed=seed + 1000), progress=False)
    print(f"2/3 pre-training the tiny MAE for {epochs} epochs on the CPU (a few minutes)")
    run_dir = pretrain(cfg, hooks=training_plots())
    print(f"3/3 done in {(time.perf_counter() - started) / 60:.1f} min")
    from xecmae.train.checkpoint import load_checkpoint

    history = load_checkpoint(run_dir / "mae_checkpoint_last.pth")["history"]
    print("\nvalidation loss per epoch: " + " ".join(f"{h['val/total_loss']:.4f}" for h in history))
    predictions = sorted(run_dir.glob("mae_predictions_epoch_*.root"))
    displays = sorted(run_dir.glob("event_display_epoch_*.png"))
    lines = [
        ("simulated data", data),
        ("run directory", run_dir),
        ("best checkpoint", run_dir / "mae_checkpoint_best.pth"),
        ("pre-trained encoder", max(run_dir.glob("mae_encoder_epoch_*.pth"), default="-")),
        ("prediction file", predictions[-1] if predictions else "-"),
        ("event display", displays[-1] if displays else "-"),
        ("loss curves", run_dir / "loss_curves.png"),
    ]
    width = max(len(label) for label, _ in lines)
    print("\n" + "\n".join(f"  {label:{width}s}  {path}" for label, path in lines))
    print(f"\nlook closer:\n  xecmae analyze {predictions[-1] if predictions else '<predictions.root>'}"
          f"\n  mlflow ui --backend-store-uri sqlite:///{(run_dir / 'mlflow.db').resolve()}")
    return 0
