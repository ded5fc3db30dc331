"""Training speed of the MAE: forward + backward + optimizer step, and a full epoch with data loading.

    python bench/train_step.py [--quick] [--size tiny|small|base] [--batch N] [--device cpu|cuda]
                               [--steps N] [--amp] [--compile MODE] [--outer-pool H W] [--epoch]

Step mode (default) times the step alone on simulated events already in memory. ``--epoch``
writes a simulated ROOT file and times one whole epoch of ``xecmae.train.pretrain`` (reading,
normalizing, masking, training), the figure users see. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from xecmae.configload import validate
from xecmae.models import build_mae
from xecmae.runtime import large_blocks_from_heap
from xecmae.simulate import EventGenerator
from xecmae.train.losses import LossSettings, mae_loss
from xecmae.train.optim import make_optimizer

PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}}


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def config(args, extra: dict | None = None):
    raw = {"model": {"size": args.size, "outer_fine_pool": args.outer_pool},
           "data": {"batch_size": args.batch},
           "training": {"amp": args.amp, "cpu_amp": args.amp, "compile": args.compile, "device": args.device}}
    for section, values in (extra or {}).items():
        raw.setdefault(section, {}).update(values)
    return validate(raw)


def step_benchmark(args) -> dict:
    device = torch.device(args.device)
    cfg = config(args)
    torch.manual_seed(0)
    model = build_mae(cfg).to(device)
    optimizer = make_optimizer(model, 1e-4, 0.05)
    norm = cfg.normalizer()
    raw = EventGenerator(seed=1).generate(args.batch)
    x, valid = norm(torch.from_numpy(raw["npho"]), torch.from_numpy(raw["relative_time"]))
    x, valid = x.to(device), valid.to(device)
    settings = LossSettings.from_training(cfg.training)
    amp = args.amp  # bf16 autocast on the CPU too, the trainer's code path with training.cpu_amp
    forward = torch.compile(model, mode=None if args.compile == "default" else args.compile) \
        if args.compile != "none" else model
    generator = torch.Generator(device=device).manual_seed(0)

    def step(forward=forward):
        hidden = model.random_masking(valid, generator)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = forward(x, valid, hidden=hidden)
        loss, _ = mae_loss(out.pred, x, valid, hidden, norm, settings)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    warm = 2 if args.compile == "none" else 4
    started = time.perf_counter()
    for _ in range(warm):
        step()
    sync()
    warmup_s = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    best, median = min(times), sorted(times)[len(times) // 2]
    result = {"mode": "step", "size": args.size, "batch": args.batch, "device": args.device,
              "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "amp_bf16": amp, "compile": args.compile, "outer_pool": args.outer_pool,
              "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
              "steps": args.steps, "warmup_s": round(warmup_s, 1),
              "events_per_s": round(args.batch / median, 2), "best_events_per_s": round(args.batch / best, 2),
              "step_ms_median": round(1000 * median, 1), "peak_rss_mb": round(peak_rss_mb())}
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    eager_step = lambda: step(model)  # noqa: E731 (a compiled graph hides its operations from the counter)
    result |= model_flops_utilisation(eager_step, median, amp, args.batch, result["device_name"])
    return result


def model_flops_utilisation(step, seconds: float, amp: bool, batch: int, device_name: str) -> dict:
    """Counted model FLOPs of one step over its time, against the card's dense peak where it is known."""
    from xecmae.models.flops import count_flops

    flops = count_flops(step)
    achieved = flops / seconds / 1e12
    out = {"model_gflop_per_event": round(flops / batch / 1e9, 3), "achieved_tflops_per_s": round(achieved, 3)}
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in device_name), None)
    if peak:
        out["mfu"] = round(achieved / peak["bf16" if amp else "fp32"], 4)
    return out


def epoch_benchmark(args) -> dict:
    """One epoch of the real training command over a simulated ROOT file."""
    from xecmae.simulate import write_root
    from xecmae.train.checkpoint import load_checkpoint
    from xecmae.train.pretrain import pretrain

    events = args.events or args.batch * args.steps
    with tempfile.TemporaryDirectory() as tmp:
        path = write_root(Path(tmp) / "train.root", events, EventGenerator(seed=2), progress=False)[0]
        cfg = config(args, {"data": {"train_path": str(path), "num_workers": args.workers, "chunksize": 1024,
                                     "shuffle_buffer": 2048},
                            "training": {"epochs": 1, "log_interval": 10**6},
                            "checkpoint": {"save_dir": tmp, "run_name": "bench", "save_predictions": False,
                                           "save_every_steps": 0},
                            "mlflow": {"enabled": False}})
        started = time.perf_counter()
        run = pretrain(cfg)
        total = time.perf_counter() - started
        history = load_checkpoint(run / "mae_checkpoint_last.pth")["history"]
    return {"mode": "epoch", "size": args.size, "batch": args.batch, "device": args.device,
            "outer_pool": args.outer_pool, "amp_bf16": args.amp, "events": events,
            "workers": args.workers, "events_per_s": round(history[-1]["events_per_s"], 2),
            "wall_s_including_setup": round(total, 1), "peak_rss_mb": round(peak_rss_mb())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: a smoke test")
    parser.add_argument("--size", choices=["tiny", "small", "base"], default="base")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (on a CPU too: slow there)")
    parser.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"])
    parser.add_argument("--outer-pool", type=int, nargs=2, default=None, metavar=("H", "W"))
    parser.add_argument("--epoch", action="store_true", help="time a full epoch with data loading instead")
    parser.add_argument("--events", type=int, default=None, help="events in the --epoch file (default batch x steps)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers in --epoch mode")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps = "tiny", min(args.batch, 16), 2
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no GPU is visible")
    with large_blocks_from_heap(args.device == "cpu"):  # as training on the CPU does
        result = epoch_benchmark(args) if args.epoch else step_benchmark(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from xecmae.runtime import restart_with_huge_pages

    restart_with_huge_pages()  # as the xecmae commands do
    sys.exit(main())
