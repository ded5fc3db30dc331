"""Does MAE pre-training help? Fine-tune with few labels from the MAE encoder and from scratch.

    python bench/pretrain_benefit.py [--quick] [--size tiny] [--spectrum flat:15:60] [--pretrain-events N]
                                     [--pretrain-epochs E] [--labelled N] [--finetune-epochs E]
                                     [--device cpu|cuda] [--keep DIR]

Simulates unlabelled events for pre-training, a small labelled set and a held-out set; pre-trains
the MAE; then fine-tunes ``position`` and ``energy`` twice with the same budget (epochs, steps,
learning rates, seed), once starting from the MAE encoder and once from random weights, and
compares the held-out resolutions. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from xecmae.config import RegressorConfig
from xecmae.configload import validate
from xecmae.simulate import EventGenerator, write_root
from xecmae.train.checkpoint import load_checkpoint
from xecmae.train.finetune import finetune
from xecmae.train.pretrain import pretrain

FIGURES = ("position_res_3d_cm", "position_res_u_cm", "position_res_v_cm", "position_res_w_cm", "energy_res_rel")


def common(args, work: Path, train: str, val: str, run: str, epochs: int) -> dict:
    return {
        "data": {"train_path": train, "val_path": val, "batch_size": args.batch, "chunksize": 1024,
                 "num_workers": 1, "shuffle_buffer": 4096},
        "training": {"epochs": epochs, "warmup_epochs": 0.5, "seed": args.seed, "device": args.device,
                     "log_interval": 10**6},
        "checkpoint": {"save_dir": str(work), "run_name": run, "save_predictions": False, "save_every_steps": 0},
        "mlflow": {"enabled": False},
    }


def run_benchmark(args, work: Path) -> dict:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sets = {}
    for name, events, seed in (("unlabelled", args.pretrain_events, 101), ("labelled", args.labelled, 202),
                               ("held_out", args.held_out, 303)):
        generator = EventGenerator(args.spectrum, seed=seed, detector=args.detector)
        sets[name] = write_root(data / f"{name}.root", events, generator, progress=False)[0]
    unlabelled, labelled, held_out = sets["unlabelled"], sets["labelled"], sets["held_out"]

    mae_raw = common(args, work, str(unlabelled), str(held_out), "mae", args.pretrain_epochs)
    mae_raw["model"] = {"size": args.size}
    mae_raw["training"] |= {"lr": args.pretrain_lr}
    t0 = time.perf_counter()
    mae_run = pretrain(validate(mae_raw))
    pretrain_s = time.perf_counter() - t0
    mae_history = load_checkpoint(mae_run / "mae_checkpoint_last.pth")["history"]

    results = {}
    for name, start in (("mae", str(mae_run / "mae_checkpoint_best.pth")), ("scratch", None)):
        raw = common(args, work, str(labelled), str(held_out), f"finetune_{name}", args.finetune_epochs)
        raw["model"] = {"size": args.size, "tasks": ["position", "energy"]}
        raw["training"] |= {"lr": args.finetune_lr, "encoder_lr": args.encoder_lr if start else None}
        raw["checkpoint"]["resume_from"] = start
        t0 = time.perf_counter()
        run = finetune(validate(raw, RegressorConfig))
        history = load_checkpoint(run / "regressor_checkpoint_last.pth")["history"]
        best = min(history, key=lambda h: h["val/total_loss"])
        results[name] = {figure: best[f"val/{figure}"] for figure in FIGURES} | {
            "seconds": time.perf_counter() - t0, "best_epoch": best["epoch"]}

    out = {"size": args.size, "device": args.device, "spectrum": args.spectrum, "pretrain_events": args.pretrain_events,
           "pretrain_epochs": args.pretrain_epochs, "pretrain_s": round(pretrain_s, 1),
           "pretrain_val_loss_first_last": [round(mae_history[0]["val/total_loss"], 5),
                                            round(mae_history[-1]["val/total_loss"], 5)],
           "labelled_events": args.labelled, "held_out_events": args.held_out,
           "finetune_epochs": args.finetune_epochs}
    for name, figures in results.items():
        for figure in FIGURES:
            out[f"{name}_{figure}"] = round(figures[figure], 4)
        out[f"{name}_finetune_s"] = round(figures["seconds"], 1)
    out["position_res_3d_ratio_mae_over_scratch"] = round(
        results["mae"]["position_res_3d_cm"] / results["scratch"]["position_res_3d_cm"], 3)
    out["total_s"] = round(time.perf_counter() - started, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes: a smoke test, not a measurement")
    parser.add_argument("--size", choices=["tiny", "small", "base"], default="tiny")
    parser.add_argument("--spectrum", default="flat:15:60",
                        help="gamma energies of every set (a flat spectrum makes the energy resolution meaningful)")
    parser.add_argument("--pretrain-events", type=int, default=10000)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--labelled", type=int, default=2000)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--encoder-lr", type=float, default=None,
                        help="encoder learning rate after pre-training (default: the same as --finetune-lr)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--detector", default="realistic", choices=("realistic", "ideal"),
                        help="detector response of the simulated events (default realistic)")
    parser.add_argument("--keep", default=None, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_events, args.pretrain_epochs = 1024, 2
        args.labelled, args.held_out, args.finetune_epochs = 256, 128, 2
    if args.keep:
        result = run_benchmark(args, Path(args.keep))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_benchmark(args, Path(tmp))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from xecmae.runtime import restart_with_huge_pages

    restart_with_huge_pages()  # as the xecmae commands do
    sys.exit(main())
