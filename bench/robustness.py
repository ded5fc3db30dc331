"""Robustness of a briefly fine-tuned regressor against dead channels, on simulated events.

1. Simulates a training file and a held-out file (signal events, the realistic detector by
   default) with no dead channel of their own (``--dead-channels`` gives them some), so that the
   dead fractions of the report are all there is.
2. Fine-tunes a regressor (``--size``, tiny by default; position and energy) from scratch for
   ``--steps`` optimizer steps, and a second one with ``training.dead_channels.fraction``
   (``--train-dead``, 0.05 by default, each event's fraction uniform up to it; 0 skips it),
   through :func:`xecmae.train.finetune.finetune`. ``--checkpoint`` / ``--dead-trained`` take
   regressors trained elsewhere instead.
3. Runs :func:`xecmae.apps.robustness.robustness` (what ``xecmae validate --robustness`` runs)
   on the held-out file: 0, 1, 5 and 10% of the sensors dead (the generator's clustered maps),
   the regressor with the dead channels as sentinels, filled by the neighbour average, filled by
   ``--inpainter CKPT`` (when given), the dead-trained regressor (with the dead channels as
   sentinels, and after the inpainter fill when there is one) and the classical estimate.

Prints the markdown table; the last line is the report as one JSON object.

    python bench/robustness.py --quick                       # a few minutes: the machinery only
    python bench/robustness.py --events 4096 --steps 300     # a short training, not a final figure
    python bench/robustness.py --checkpoint reg.pth --dead-trained reg_dead.pth --inpainter inp.pth
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from xecmae.apps.robustness import robustness
from xecmae.apps.robustness_report import markdown_table
from xecmae.commands import add_dead_channels_option
from xecmae.config import RegressorConfig
from xecmae.configload import validate
from xecmae.data.deadchannels import dead_channels
from xecmae.simulate import EventGenerator, write_root
from xecmae.train.finetune import finetune


def make_config(args: argparse.Namespace, train: str, val: str, run_dir: Path, name: str,
                dead_fraction: float) -> RegressorConfig:
    """A short fine-tuning from scratch: position and energy, cosine schedule over ``--steps``."""
    epochs = max(1, -(-args.steps * args.batch_size // args.events))
    return validate({
        "data": {"train_path": train, "val_path": val, "batch_size": args.batch_size, "chunksize": 1024,
                 "num_workers": 0, "num_threads": 1, "shuffle_buffer": 2048, "val_max_events": 64},
        "model": {"size": args.size, "tasks": ["position", "energy"]},
        "training": {"epochs": epochs, "max_steps": args.steps, "lr": args.lr, "warmup_epochs": 0,
                     "seed": args.seed, "log_interval": 20, "device": args.device,
                     "dead_channels": {"fraction": dead_fraction, "varying": True}},
        "checkpoint": {"save_dir": str(run_dir), "run_name": name, "save_predictions": False,
                       "save_every_steps": 0},
        "mlflow": {"enabled": False},
    }, RegressorConfig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="256 training events, 4 steps, 32 held-out events")
    parser.add_argument("--size", choices=("tiny", "small", "base"), default="tiny")
    parser.add_argument("--events", type=int, default=4096, help="simulated training events")
    parser.add_argument("--eval-events", type=int, default=320, help="simulated held-out events")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of each fine-tuning")
    parser.add_argument("--train-dead", type=float, default=0.05,
                        help="training.dead_channels.fraction of the second regressor (0: no second regressor)")
    parser.add_argument("--checkpoint", default=None, help="a regressor trained elsewhere (no training)")
    parser.add_argument("--dead-trained", default=None, help="a regressor trained elsewhere with dead channels")
    parser.add_argument("--inpainter", default=None, help="an inpainter checkpoint for the third way")
    parser.add_argument("--fractions", default="0,0.01,0.05,0.1", help="dead fractions (default 0,0.01,0.05,0.1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detector", default="realistic", choices=("realistic", "ideal"))
    add_dead_channels_option(parser, "dead channels of the simulated files themselves (default none)")
    parser.add_argument("--keep", default=None, help="keep the files, runs and the report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.eval_events, args.steps = 256, 32, 4
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)
    dead = dead_channels(args.dead_channels, run=1) if args.dead_channels else None

    with tempfile.TemporaryDirectory(prefix="xecmae-robustness-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        train_file, val_file = root / "train.root", root / "heldout.root"
        generator = {"detector": args.detector, "dead_fraction": 0.0, "dead_map": dead}
        if args.checkpoint is None or (args.dead_trained is None and args.train_dead > 0):
            write_root(train_file, args.events, EventGenerator(seed=3000 + args.seed, **generator), progress=False)
        write_root(val_file, args.eval_events, EventGenerator(seed=4000 + args.seed, **generator), progress=False)
        timing = {"simulate_s": round(time.perf_counter() - started, 1)}
        started = time.perf_counter()
        checkpoint, dead_trained = args.checkpoint, args.dead_trained
        if checkpoint is None:
            run = finetune(make_config(args, str(train_file), str(val_file), root / "runs", "plain", 0.0))
            checkpoint = str(run / "regressor_checkpoint_last.pth")
        if dead_trained is None and args.train_dead > 0:
            run = finetune(make_config(args, str(train_file), str(val_file), root / "runs", "dead", args.train_dead))
            dead_trained = str(run / "regressor_checkpoint_last.pth")
        timing["train_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        result = robustness(checkpoint, str(val_file), root / "report", fractions=args.fractions,
                            inpainter=args.inpainter, dead_trained=dead_trained, device=args.device)
        timing["report_s"] = round(time.perf_counter() - started, 1)
        print(markdown_table(result))
        if args.keep:
            print(f"files kept in {root}")
    result |= {"timing": timing, "train_steps": args.steps if args.checkpoint is None else None,
               "train_events": args.events, "train_dead_fraction": args.train_dead, "detector": args.detector}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
