"""Reconstruction quality of a briefly trained MAE against the classical baselines.

1. Simulates a training file and a held-out file (signal events, 1% dead channels) into a
   temporary folder.
2. Pre-trains the MAE (``--size``, tiny by default) through :func:`xecmae.train.pretrain.pretrain`
   for a fixed budget: ``--steps`` optimizer steps (cosine schedule), or ``--minutes`` of wall
   time (constant learning rate; the budget ends through the trainer's own SIGUSR1 handling,
   which saves the last checkpoint and stops at the next step).
3. Evaluates the held-out file with the trained model at mask ratio 0.6 and 0.05 (seeded masks),
   writes each as a prediction file and scores it with :mod:`xecmae.analysis.analyze`, so the
   model and the three baselines (neighbour average, solid-angle weighted neighbour average,
   point-source fit) are scored on exactly the same hidden sensors, as ``xecmae analyze`` would.
4. With ``--inpainter spec,neighbour,solid_angle`` (any of them), also trains one inpainter per
   variant from the MAE (``--inpaint-steps`` steps at the inpainter's mask ratio 0.05, through
   :func:`xecmae.train.inpaint.inpaint`) and scores each at mask 0.05 on the same held-out
   events with the same seeded mask, so every method sees the same hidden sensors. ``spec``:
   the plain MAE decoders (``model.refine: false``); ``neighbour``, ``solid_angle``: a learned
   correction to that prior (``model.prior``).

The last line printed is one JSON object: per mask ratio (``mask0p6``, ``mask0p05``) and method,
``*_median_rel_npho_error_*`` (median |pred - truth| / truth over hidden sensors with truth >= 100
photons), ``*_median_signed_rel_npho_error_*`` and, where predicted, ``*_time_rmse_ns_*``, plus
the training budget actually used.

    python bench/reconstruction.py --quick                 # under a minute
    python bench/reconstruction.py --detector ideal        # on the ideal detector response
    python bench/reconstruction.py                         # 3 minutes of training, one CPU thread
    python bench/reconstruction.py --steps 2000 --device cuda --events 40000 --threads 8
    python bench/reconstruction.py --checkpoint artifacts/RUN/mae_checkpoint_best.pth   # a model trained elsewhere
    python bench/reconstruction.py --checkpoint MAE.pth --inpainter spec,neighbour,solid_angle --inpaint-steps 200
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from xecmae.analysis.analyze import analyze, face_table, format_table
from xecmae.analysis.predictions import PredictionWriter
from xecmae.apps.fill import load_inpainter
from xecmae.commands import add_dead_channels_option
from xecmae.config import InpainterConfig
from xecmae.configload import validate
from xecmae.data.deadchannels import dead_channels
from xecmae.data.loaders import make_loader
from xecmae.models.spec import InpainterModelConfig, MAEModelConfig
from xecmae.simulate import EventGenerator, write_root
from xecmae.train.checkpoint import MAE_LAST, load_checkpoint
from xecmae.train.inpaint import inpaint
from xecmae.train.pretrain import pretrain

INPAINTER_RATIO = InpainterModelConfig.model_fields["mask_ratio"].default
MASK_RATIOS = (MAEModelConfig.model_fields["mask_ratio"].default, INPAINTER_RATIO)  # each kind's own default
INPAINTERS = {"spec": {"refine": False}, "neighbour": {"prior": "neighbour"}, "solid_angle": {"prior": "solid_angle"}}
"""The inpainter variants: model keys of each."""
BRIGHT = 1000.0  # photons


def ratio_tag(ratio: float) -> str:
    """0.6 -> "mask0p6", 0.05 -> "mask0p05"."""
    return "mask" + f"{ratio:g}".replace(".", "p")


def make_config(args: argparse.Namespace, train: str, val: str, run_dir: Path):
    """The pre-training configuration of the benchmark (validation only at the end, no MLflow)."""
    steps_per_epoch = args.events // args.batch_size
    if args.steps is not None:
        epochs, max_steps, schedule = math.ceil(args.steps / steps_per_epoch), args.steps, "cosine"
    else:
        epochs, max_steps, schedule = 10_000, None, "none"  # stopped by the clock
    return validate({
        "data": {"train_path": train, "val_path": val, "batch_size": args.batch_size, "chunksize": 1024,
                 "num_workers": args.workers, "num_threads": 1, "shuffle_buffer": 2048},
        "model": {"size": args.size},
        "training": {"epochs": epochs, "max_steps": max_steps, "lr": args.lr, "lr_scheduler": schedule,
                     "warmup_epochs": 0, "seed": args.seed, "log_interval": 10, "device": args.device},
        "checkpoint": {"save_dir": str(run_dir), "run_name": "bench", "save_predictions": False,
                       "save_every_steps": 0},
        "mlflow": {"enabled": False},
    })


def inpainter_config(args: argparse.Namespace, train: str, val: str, run_dir: Path, mae: Path, variant: str):
    """An inpainter run from the MAE checkpoint ``mae``: ``--inpaint-steps`` steps (cosine), no MLflow."""
    model = dict(INPAINTERS[variant])
    if args.prior_fit_iterations is not None and variant == "solid_angle":
        model["prior_fit_iterations"] = args.prior_fit_iterations
    steps_per_epoch = args.events // args.batch_size
    return validate({
        "data": {"train_path": train, "val_path": val, "batch_size": args.batch_size, "chunksize": 1024,
                 "num_workers": args.workers, "num_threads": 1, "shuffle_buffer": 2048},
        "model": model,
        "training": {"epochs": math.ceil(args.inpaint_steps / steps_per_epoch), "max_steps": args.inpaint_steps,
                     "lr": args.inpaint_lr, "lr_scheduler": "cosine", "warmup_epochs": 0, "seed": args.seed,
                     "log_interval": 10, "device": args.device},
        "checkpoint": {"save_dir": str(run_dir), "run_name": f"inpainter_{variant}", "save_predictions": False,
                       "save_every_steps": 0, "resume_from": str(mae)},
        "mlflow": {"enabled": False},
    }, InpainterConfig)


def train(cfg, minutes: float | None) -> tuple[Path, float]:
    """Pre-train; with ``minutes``, ask the trainer to stop (SIGUSR1) when the time is up."""
    timer = None
    if minutes is not None:
        previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until the trainer installs its handler
        timer = threading.Timer(minutes * 60, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.daemon = True
    started = time.perf_counter()
    try:
        if timer is not None:
            timer.start()
        run_dir = pretrain(cfg)
    finally:
        if timer is not None:
            timer.cancel()
            signal.signal(signal.SIGUSR1, previous)
    return run_dir, time.perf_counter() - started


@torch.no_grad()
def predict_file(cfg, model, device: torch.device, ratio: float, path: Path, seed: int) -> tuple[Path, np.ndarray]:
    """Run the model over the held-out file with seeded masks at ``ratio``; write a prediction file.

    Returns the file and the (N, 4760) hidden mask (the same seed gives every model the same one)."""
    model.masking.mask_ratio = ratio
    generator = torch.Generator(device=device).manual_seed(seed)
    channels = tuple(cfg.model.predict_channels)
    hidden = []
    with PredictionWriter(path, channels, cfg.normalizer()) as writer:
        for batch in make_loader(cfg, "val"):
            x, valid = batch["x"].to(device), batch["valid"].to(device)
            out = model(x, valid, generator=generator)
            hidden.append(out.hidden.cpu().numpy())
            writer.add(event=batch["event"].numpy(), run=batch["run"].numpy(), x=batch["x"].numpy(),
                       valid=batch["valid"].numpy(), hidden=out.hidden.cpu().numpy(),
                       pred=out.pred.float().cpu().numpy())
    return path, np.concatenate(hidden)


def summary(analysis, rows: list[dict], tag: str) -> dict[str, float | int]:
    """The whole-detector numbers of each method, under unit-bearing keys.

    Besides the table's numbers, the median relative npho error over bright sensors (truth >=
    1000 photons), where photon statistics matter least and the light model's shape most.
    """
    out: dict[str, float | int] = {}
    for r in rows:
        if r["face"] != "all":
            continue
        m = r["method"]
        if r["channel"] == "npho":
            out[f"{m}_median_rel_npho_error_{tag}"] = round(r["median_abs_rel"], 5)
            out[f"{m}_median_signed_rel_npho_error_{tag}"] = round(r["median_rel"], 5)
            out[f"{m}_npho_rmse_photons_{tag}"] = round(r["rmse"], 3)
            out[f"scored_sensors_truth_ge_100_photons_{tag}"] = r["rel_count"]
        else:
            out[f"{m}_time_rmse_ns_{tag}"] = round(r["rmse"], 5)
            out[f"{m}_time_bias_ns_{tag}"] = round(r["bias"], 5)
    npho = analysis.data["npho"]
    bright = npho.truth >= BRIGHT
    for method, pred in npho.pred.items():
        if bright.any():
            rel = np.abs(pred[bright] - npho.truth[bright]) / npho.truth[bright]
            out[f"{method}_median_rel_npho_error_truth_ge_{BRIGHT:g}_{tag}"] = round(float(np.median(rel)), 5)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 training events, 10 steps, 64 held-out events")
    parser.add_argument("--size", choices=("tiny", "small", "base"), default="tiny")
    parser.add_argument("--events", type=int, default=4096, help="simulated training events")
    parser.add_argument("--eval-events", type=int, default=256, help="simulated held-out events")
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall-time budget (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="a fixed number of optimizer steps instead")
    parser.add_argument("--checkpoint", default=None,
                        help="evaluate this MAE checkpoint instead of training one (no training file is simulated)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers (default 0: read in the main process)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: reproducible, and on a small busy machine faster than more)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detector", default="realistic", choices=("realistic", "ideal"),
                        help="detector response of the simulated events (default realistic)")
    parser.add_argument("--keep", default=None, help="keep the simulated files, run and prediction files here")
    add_dead_channels_option(parser, "dead channels of the simulated files (default: 1%% of the generator's)")
    parser.add_argument("--inpainter", default="",
                        help=f"comma-separated inpainter variants to train from the MAE and score at mask "
                             f"{INPAINTER_RATIO:g}: {', '.join(INPAINTERS)}")
    parser.add_argument("--inpaint-steps", type=int, default=200, help="optimizer steps per inpainter (cosine)")
    parser.add_argument("--inpaint-lr", type=float, default=1e-3)
    parser.add_argument("--prior-fit-iterations", type=int, default=None,
                        help="model.prior_fit_iterations of the solid_angle inpainter (default: the config's)")
    args = parser.parse_args(argv)
    variants = [v for v in args.inpainter.split(",") if v]
    unknown = sorted(set(variants) - set(INPAINTERS))
    if unknown:
        parser.error(f"unknown inpainter variant(s) {', '.join(unknown)}; choose from {', '.join(INPAINTERS)}")
    if args.quick:
        args.events, args.eval_events, args.steps = 512, 64, 10
    dead = {"dead_map": dead_channels(args.dead_channels, run=1)} if args.dead_channels else {}
    if args.events < args.batch_size:
        parser.error(f"--events {args.events} is smaller than one batch of {args.batch_size}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="xecmae-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        train_file, val_file = root / "train.root", root / "heldout.root"
        if args.checkpoint is None or variants:
            write_root(train_file, args.events, EventGenerator(seed=1000 + args.seed, detector=args.detector, **dead),
                       progress=False)
        write_root(val_file, args.eval_events, EventGenerator(seed=2000 + args.seed, detector=args.detector, **dead),
                   progress=False)
        simulate_s = time.perf_counter() - started

        cfg = make_config(args, str(train_file), str(val_file), root / "runs")
        device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                              else "cpu")
        if args.checkpoint is None:
            run_dir, train_s = train(cfg, None if args.steps is not None else args.minutes)
            checkpoint_path = run_dir / MAE_LAST
        else:
            checkpoint_path, train_s = Path(args.checkpoint), 0.0
        checkpoint = load_checkpoint(checkpoint_path)
        model = load_inpainter(checkpoint_path, device)  # EMA weights when the run kept them
        trained = validate(checkpoint["config"])
        cfg = cfg.model_copy(update={"model": trained.model, "normalization": trained.normalization})

        result: dict[str, float | int | str] = {
            "detector": args.detector, "model_size": cfg.model.size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "checkpoint": str(checkpoint_path) if args.checkpoint else None, "device": str(device),
            "train_events": args.events if args.checkpoint is None else None, "eval_events": args.eval_events,
            "batch_size": args.batch_size, "torch_threads": args.threads, "train_steps": checkpoint["step"],
            "train_seconds": round(train_s, 1),
            "simulate_seconds": round(simulate_s, 1),
        }
        started = time.perf_counter()
        hidden: dict[float, np.ndarray] = {}
        for k, ratio in enumerate(MASK_RATIOS):
            tag = ratio_tag(ratio)
            path, hidden[ratio] = predict_file(cfg, model, device, ratio, root / f"predictions_{tag}.root",
                                               seed=args.seed + k)
            analysis = analyze(path)
            rows = face_table(analysis)
            print(f"\n== mask ratio {ratio:g} ==")
            print(format_table(analysis, rows))
            result |= summary(analysis, rows, tag)
        result["eval_seconds"] = round(time.perf_counter() - started, 1)
        k = MASK_RATIOS.index(INPAINTER_RATIO)
        tag = ratio_tag(INPAINTER_RATIO)
        for variant in variants:
            started = time.perf_counter()
            run = inpaint(inpainter_config(args, str(train_file), str(val_file), root / "runs", checkpoint_path,
                                           variant))
            trained_s = time.perf_counter() - started
            inp_path = run / "inpainter_checkpoint_last.pth"
            inp = load_inpainter(inp_path, device)
            inp_cfg = cfg.model_copy(update={"model": validate(load_checkpoint(inp_path)["config"],
                                                               InpainterConfig).model})
            path, inp_hidden = predict_file(inp_cfg, inp, device, INPAINTER_RATIO,
                                            root / f"predictions_{variant}_{tag}.root", seed=args.seed + k)
            if not np.array_equal(inp_hidden, hidden[INPAINTER_RATIO]):  # the MAE's seed: the same hidden sensors
                raise RuntimeError(f"inpainter {variant} hid other sensors than the MAE")
            analysis = analyze(path)
            rows = face_table(analysis)
            print(f"\n== inpainter {variant}, mask ratio {INPAINTER_RATIO:g} ==")
            print(format_table(analysis, rows))
            scored = summary(analysis, rows, tag)
            result |= {key.replace("model_", f"inpainter_{variant}_", 1): value for key, value in scored.items()
                       if key.startswith("model_")}
            result[f"inpainter_{variant}_train_seconds"] = round(trained_s, 1)
            result[f"inpainter_{variant}_train_steps"] = load_checkpoint(inp_path)["step"]
        for tag in map(ratio_tag, MASK_RATIOS):
            best = min((k for k in result if k.endswith(f"_median_rel_npho_error_{tag}") and "signed" not in k
                        and "truth_ge" not in k and not k.startswith(("model_", "inpainter_"))),
                       key=lambda k: result[k])
            result[f"best_baseline_npho_{tag}"] = best.split("_median_rel")[0]
        if args.keep:
            print(f"\nfiles kept in {root}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from xecmae.runtime import restart_with_huge_pages

    restart_with_huge_pages()  # as the xecmae commands do
    sys.exit(main())
