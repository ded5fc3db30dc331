"""The first thing to run on a GPU machine: every kind of model trains in bf16, with and without compile.

    python bench/gpu_check.py [--quick] [--size tiny|small|base] [--batch N] [--steps N]
                              [--device cpu|cuda] [--compile none|default ...] [--compile-on-cpu]
                              [--kinds KIND ...] [--memory-only]

For each model kind (MAE, inpainter, regressor with a trained and a frozen encoder, and the
recommended regressor: ``maps`` head with the in-graph point-source fit) and each of
``compile: none`` and ``compile: default``, a few steps of the real trainer
(:class:`xecmae.train.loop.Trainer`, bf16 autocast, an EMA, gradient clipping) on simulated
events. On CUDA the timed steps run under ``torch.cuda.set_sync_debug_mode("error")``, so any
host-device synchronisation inside a step is reported as a failure of that run. Each run gives
events/s, the operators per step (kernel launches: what bounds a small model's step on a GPU),
MFU (against the card's dense bf16 peak, where the card is known), peak GPU memory and whether
every loss and gradient stayed finite. Each row is printed to stderr as one JSON line
(``gpu_check: row {...}``) as soon as it is done, so a run stopped by a time limit (compiling the
``base`` model takes minutes) keeps the rows it finished. Also measured, on any device: the bytes
autograd keeps for the backward pass per event (fp32 and bf16), from two batch sizes.

On a CPU it runs what it can (bf16 autocast on the CPU, eager only unless ``--compile-on-cpu``)
and lists in ``not_checked`` what only a GPU can show. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import traceback

import torch

from train_step import model_flops_utilisation
from xecmae.config import InpainterConfig, MAEConfig, RegressorConfig
from xecmae.configload import validate
from xecmae.models import build_mae
from xecmae.models.flops import count_operators
from xecmae.models.regressor import build_regressor
from xecmae.simulate import EventGenerator
from xecmae.train.ema import EMA
from xecmae.train.finetune import RegressionObjective
from xecmae.train.loop import Trainer, to_device
from xecmae.train.optim import make_optimizer, make_scheduler
from xecmae.train.pretrain import mae_objective

KINDS = {  # name: (schema, model section, builder)
    "mae": (MAEConfig, {}, build_mae),
    "inpainter": (InpainterConfig, {}, build_mae),
    "regressor": (RegressorConfig, {"tasks": ["position", "energy", "timing", "angle"]}, build_regressor),
    "regressor_frozen_encoder": (RegressorConfig, {"tasks": ["position", "energy", "timing", "angle"],
                                                   "freeze_encoder": True}, build_regressor),
    "regressor_pointfit": (RegressorConfig, {"tasks": ["position", "energy", "timing"], "head": "maps",
                                             "classical_input": "pointfit"}, build_regressor),
    "regressor_pointfit_time": (RegressorConfig, {"tasks": ["position", "energy", "timing"], "head": "maps",
                                                  "classical_input": "pointfit_time"}, build_regressor),
}
MIB = 2**20


def make_config(kind: str, size: str, batch: int, amp: bool = True):
    schema, model, _ = KINDS[kind]
    return validate({"model": {"size": size, **model}, "data": {"batch_size": batch},
                     "training": {"amp": amp, "cpu_amp": True, "ema_decay": 0.999, "grad_clip": 1.0}}, schema)


def make_batch(cfg, events: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Simulated events as the DataLoader hands them over (pinned host memory on a GPU machine)."""
    raw = EventGenerator(seed=5).generate(events)
    x, valid = cfg.normalizer()(torch.from_numpy(raw["npho"]), torch.from_numpy(raw["relative_time"]))
    batch = {"x": x, "valid": valid} | {k: torch.from_numpy(raw[k]) for k in
                                        ("uvwTruth", "energyTruth", "timeTruth", "emiAng")}
    return {k: v.pin_memory() for k, v in batch.items()} if device.type == "cuda" else batch


def make_trainer(cfg, kind: str, device: torch.device, compile_mode: str) -> Trainer:
    torch.manual_seed(0)
    raw = KINDS[kind][2](cfg).to(device)
    objective = RegressionObjective(cfg) if kind.startswith("regressor") else mae_objective(cfg)
    t = cfg.training
    optimizer = make_optimizer(raw, t.lr, t.weight_decay)
    scheduler = make_scheduler(optimizer, "none", 100, 0, t.lr, t.lr_min)
    model = raw if compile_mode == "none" else torch.compile(raw, mode=None if compile_mode == "default" else
                                                              compile_mode)
    return Trainer(model, raw, optimizer, scheduler, EMA(raw, t.ema_decay), objective, seed=1,
                   grad_clip=t.grad_clip, amp=t.amp, cpu_amp=t.cpu_amp, device=device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_kind(kind: str, compile_mode: str, args, device: torch.device) -> dict:
    """Warm-up steps, then timed steps under the sync check; one result row."""
    row: dict = {"kind": kind, "compile": compile_mode}
    cfg = make_config(kind, args.size, args.batch)
    trainer = make_trainer(cfg, kind, device, compile_mode)
    batch = make_batch(cfg, args.batch, device)
    started = time.perf_counter()
    for _ in range(args.warmup):
        trainer.train_step(batch)
    sync(device)
    row["warmup_s"] = round(time.perf_counter() - started, 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.set_sync_debug_mode("error")
    times, losses = [], []
    try:
        for _ in range(args.steps):
            t0 = time.perf_counter()
            stats = trainer.train_step(batch)
            losses.append(stats["total_loss"])
            if device.type == "cuda":  # the timing's own synchronisation is allowed
                torch.cuda.set_sync_debug_mode(0)
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            times.append(time.perf_counter() - t0)
        row["sync_free"] = True if device.type == "cuda" else "not checked (no GPU)"
    except RuntimeError as error:
        if device.type != "cuda" or "synchroniz" not in str(error):
            raise
        row["sync_free"] = False
        row["sync_error"] = str(error).splitlines()[0]
        row["sync_where"] = traceback.format_exc().strip().splitlines()[-3:]
        return row
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    sync(device)
    median = sorted(times)[len(times) // 2]
    numerators = torch.stack([n for n, _ in losses]).float()
    denominators = torch.stack([d for _, d in losses]).float()
    grads_finite = int(trainer.bad_total) == 0  # a non-finite gradient norm skips (and counts) a step
    row |= {"events_per_s": round(args.batch / median, 2), "step_ms_median": round(1000 * median, 1),
            "loss": round(float((numerators / denominators).mean()), 5),
            "losses_finite": bool(torch.isfinite(numerators).all()), "gradients_finite": grads_finite}
    if device.type == "cuda":
        row["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / MIB)
    if compile_mode == "none":  # a compiled graph hides its operations from the FLOP counter
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        eager = lambda: trainer.train_step(batch)  # noqa: E731
        row |= model_flops_utilisation(eager, median, True, args.batch, name)
        row["operators_per_step"] = count_operators(eager)  # kernel launches: what bounds a small step
    return row


def saved_bytes(kind: str, size: str, events: int, amp: bool, device: torch.device) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward pass of one forward pass."""
    cfg = make_config(kind, size, events, amp=amp)
    trainer = make_trainer(cfg, kind, device, "none")
    batch = to_device(make_batch(cfg, events, device), device)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    parameters = {p.untyped_storage().data_ptr() for p in trainer.raw.parameters()}
    trainer._seed_batch(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trainer.objective(trainer.model, trainer.raw, batch, trainer.generator, trainer.autocast, True)
    return sum(n for ptr, n in storages.items() if ptr not in parameters)


def activation_memory(args, device: torch.device) -> dict:
    """Saved-for-backward MiB per event of the MAE, fp32 and bf16, from batches of 1 and 3 events."""
    out = {}
    for label, amp in (("fp32", False), ("bf16", True)):
        small, large = (saved_bytes("mae", args.size, n, amp, device) for n in (1, 3))
        out[f"mae_{args.size}_{label}_saved_mib_per_event"] = round((large - small) / 2 / MIB, 2)
    return out


def not_checked(device: torch.device, compile_modes: list[str]) -> list[str]:
    missing = ["DDP and NCCL across GPUs (one process here)"]
    if device.type != "cuda":
        missing += ["CUDA kernels (cuDNN, cuBLAS, fused attention) and their bf16 numerics",
                    "host-device synchronisation (torch.cuda.set_sync_debug_mode needs a GPU)",
                    "MFU (no peak figure for a CPU) and peak GPU memory",
                    "GPU speed: the events/s here are a CPU's, under bf16 autocast, which CPUs without "
                    "bf16 units run slowly"]
    if "default" not in compile_modes:
        missing.append("torch.compile (--compile default; on a CPU also --compile-on-cpu: minutes per model)")
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, a small batch, two steps")
    parser.add_argument("--size", choices=["tiny", "small", "base"], default=None,
                        help="default: base on a GPU, tiny on a CPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 256 on a GPU, 4 on a CPU")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, compile)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", nargs="+", choices=["none", "default"], default=None, dest="compile_modes",
                        help="compile modes to run (default: none and default on a GPU, none on a CPU)")
    parser.add_argument("--compile-on-cpu", action="store_true", help="also the compiled runs on a CPU (slow)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--memory-only", action="store_true", help="only the saved-for-backward bytes per event")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.size = args.size or ("base" if gpu and not args.quick else "tiny")
    args.batch = args.batch or (256 if gpu and not args.quick else 4)
    if args.quick:
        args.steps, args.warmup = 2, min(args.warmup, 2)
    compile_modes = args.compile_modes or (["none", "default"] if gpu or args.compile_on_cpu else ["none"])
    if gpu:
        torch.backends.cudnn.benchmark = True  # as a training run on a GPU sets it
    result: dict = {"device": args.device, "device_name": torch.cuda.get_device_name() if gpu else "cpu",
                    "torch": torch.__version__, "precision": "bf16 autocast", "size": args.size,
                    "batch": args.batch, "steps": args.steps, "runs": []}
    failures = 0
    for kind in [] if args.memory_only else args.kinds:
        for mode in compile_modes:
            print(f"gpu_check: {kind}, compile {mode} ...", file=sys.stderr, flush=True)
            try:
                row = run_kind(kind, mode, args, device)
            except Exception as error:  # report every run, then the next one
                row = {"kind": kind, "compile": mode, "error": f"{type(error).__name__}: {error}".splitlines()[0]}
            ok = "error" not in row and row.get("sync_free") is not False and row.get("losses_finite", False) \
                and row.get("gradients_finite", False)
            failures += not ok
            result["runs"].append(row | {"ok": ok})
            print(f"gpu_check: row {json.dumps(result['runs'][-1])}", file=sys.stderr, flush=True)
    result |= activation_memory(args, device)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["not_checked"] = not_checked(device, compile_modes)
    result["all_ok"] = failures == 0
    print(json.dumps(result))
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
