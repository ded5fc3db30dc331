"""Inference speed of the regressor and the inpainter: PyTorch and onnxruntime on the CPU.

    python bench/inference.py [--quick] [--size tiny|base|all] [--device cpu] [--threads N]

For each size: builds the regressor (position, energy) and the inpainter (untrained weights:
speed does not depend on their values), wraps them as exported (raw npho and relative_time in,
normalisation inside, physical units out; :mod:`xecmae.apps.graphs`), and measures on simulated
events

- throughput at batch 256 (events/s; the median of ``--repeats`` timed calls after one warm-up),
- batch-1 latency (ms; the median of ``--latency-calls`` calls),

in PyTorch (``torch.no_grad``) and, after ``xecmae export``'s ONNX export, in onnxruntime
(CPUExecutionProvider, ``--threads`` intra-op threads, the same as PyTorch's). ``--quick``:
tiny only, one timed batch of 64, 5 latency calls. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from xecmae.apps.export import export_model
from xecmae.apps.graphs import make_graph
from xecmae.apps.trained import load_trained
from xecmae.config import InpainterConfig, RegressorConfig
from xecmae.configload import validate
from xecmae.models import build_mae
from xecmae.models.regressor import build_regressor
from xecmae.simulate import EventGenerator
from xecmae.train.checkpoint import save_checkpoint

KINDS = {"regressor": (RegressorConfig, build_regressor), "inpainter": (InpainterConfig, build_mae)}


def checkpoint(kind: str, size: str, folder: Path) -> Path:
    schema, build = KINDS[kind]
    cfg = validate({"model": {"size": size}}, schema)
    torch.manual_seed(0)
    path = folder / f"{kind}_{size}.pth"
    save_checkpoint({"kind": kind, "model_state_dict": build(cfg).state_dict(), "config": cfg.model_dump(mode="json")},
                    path)
    return path


def timed(call, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(kind: str, size: str, folder: Path, npho: torch.Tensor, rel_time: torch.Tensor, args) -> dict:
    path = checkpoint(kind, size, folder)
    graph = make_graph(load_trained(path, (kind,), "the benchmark"), kind)
    batch = min(args.batch, len(npho))
    out: dict[str, float] = {}
    with torch.no_grad():
        seconds = timed(lambda: graph(npho[:batch], rel_time[:batch]), args.repeats)
        out[f"{kind}_{size}_torch_events_per_s"] = batch / seconds
        out[f"{kind}_{size}_torch_latency_ms"] = 1e3 * timed(lambda: graph(npho[:1], rel_time[:1]), args.latency_calls)
    if args.no_onnx:
        return out
    import onnxruntime as ort

    onnx_path = folder / f"{kind}_{size}.onnx"
    start = time.perf_counter()
    export_model(path, onnx_path, "onnx")
    out[f"{kind}_{size}_onnx_export_s"] = time.perf_counter() - start
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {"npho": npho[:batch].numpy(), "relative_time": rel_time[:batch].numpy()}
    one = {"npho": npho[:1].numpy(), "relative_time": rel_time[:1].numpy()}
    out[f"{kind}_{size}_onnx_events_per_s"] = batch / timed(lambda: session.run(None, feed), args.repeats)
    out[f"{kind}_{size}_onnx_latency_ms"] = 1e3 * timed(lambda: session.run(None, one), args.latency_calls)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--size", default="all", choices=["tiny", "base", "all"])
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="the CPU only (the figures are for CPUs)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=20)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--no-onnx", action="store_true", help="PyTorch only")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.repeats, args.latency_calls = "tiny", 64, 1, 5
    torch.set_num_threads(args.threads)
    sizes = ["tiny", "base"] if args.size == "all" else [args.size]
    events = EventGenerator(seed=7).generate(args.batch)
    npho, rel_time = torch.from_numpy(events["npho"]), torch.from_numpy(events["relative_time"])
    result: dict[str, float | int | str] = {"batch": args.batch, "threads": args.threads,
                                            "torch_version": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            for kind in args.kinds:
                result |= measure(kind, size, Path(tmp), npho, rel_time, args)
                print(f"{kind} {size}: " + ", ".join(f"{k.split(f'{size}_', 1)[1]} {v:.4g}" for k, v in result.items()
                                                     if k.startswith(f"{kind}_{size}_")), file=sys.stderr)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
