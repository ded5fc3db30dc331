"""Throughput of the built-in event generator: generation alone, and generation plus ROOT writing.

    .venv/bin/python bench/simulate.py            # 20000 events, chunks of 512
    .venv/bin/python bench/simulate.py --quick    # 2048 events, a smoke test
    .venv/bin/python bench/simulate.py --detector ideal   # the ideal detector response

The last line printed is one JSON object: events/s for generation alone
(``generate_events_per_s``, into a reused buffer) and for generation plus writing an
LZ4-compressed TTree (``generate_and_write_events_per_s``), the process CPU time per event of
each (all threads; on a busy machine it says what the wall-clock rates cannot), peak resident
memory and the conditions (threads, CPU count, load average). With ``--repeat R`` every figure is the best
of R runs, as other work on a shared machine only ever slows a run down.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xecmae.simulate import EventGenerator, empty_events, write_root


def _generate(gen: EventGenerator, events: int, chunk: int, workers: int) -> tuple[float, float]:
    """Events/s and process CPU microseconds per event, generating into a reused buffer."""
    buffer = empty_events(chunk)
    gen.fill(buffer, 0, min(chunk, events), workers=workers)  # warm-up: tables, allocator
    start, cpu = time.perf_counter(), time.process_time()
    for lo in range(0, events, chunk):
        gen.fill(buffer, lo, min(chunk, events - lo), workers=workers)
    return events / (time.perf_counter() - start), (time.process_time() - cpu) / events * 1e6


def _write(gen: EventGenerator, events: int, chunk: int, directory: Path, background: bool,
           compression: str, workers: int) -> tuple[float, float, int]:
    """Events/s, process CPU microseconds per event (all threads) and file size in bytes."""
    path = directory / f"bench_{time.monotonic_ns()}.root"
    start, cpu = time.perf_counter(), time.process_time()
    write_root(path, events, gen, chunk_events=chunk, progress=False, compression=compression,
               background_writer=background, workers=workers)
    rate, cpu_us = events / (time.perf_counter() - start), (time.process_time() - cpu) / events * 1e6
    size = path.stat().st_size
    path.unlink()
    return rate, cpu_us, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per measurement")
    parser.add_argument("--chunk", type=int, default=512, help="events per chunk (one ROOT basket per branch)")
    parser.add_argument("--quick", action="store_true", help="2048 events, one repeat")
    parser.add_argument("--repeat", type=int, default=1, help="report the best of this many runs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--spectrum", default="signal")
    parser.add_argument("--compression", default="lz4")
    parser.add_argument("--detector", default="realistic", choices=("realistic", "ideal"),
                        help="detector response (default realistic)")
    parser.add_argument("--no-background", action="store_true", help="write in the generating thread")
    parser.add_argument("--workers", type=int, default=1, help="generator threads (default 1)")
    parser.add_argument("--dir", default=None, help="directory for the temporary ROOT file (default: system temp)")
    args = parser.parse_args(argv)
    events = 2048 if args.quick else args.events
    repeat = 1 if args.quick else max(1, args.repeat)
    torch.set_num_threads(args.threads)

    gen = EventGenerator(args.spectrum, seed=12345, detector=args.detector)
    gen_rates, write_rates, gen_cpu, write_cpu, size = [], [], [], [], 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for _ in range(repeat):
            rate, cpu_us = _generate(gen, events, args.chunk, args.workers)
            gen_rates.append(rate)
            gen_cpu.append(cpu_us)
            rate, cpu_us, size = _write(gen, events, args.chunk, Path(tmp), not args.no_background,
                                        args.compression, args.workers)
            write_rates.append(rate)
            write_cpu.append(cpu_us)
    result = {
        "detector": args.detector,
        "events": events,
        "chunk_events": args.chunk,
        "repeat": repeat,
        "generate_events_per_s": round(max(gen_rates), 1),
        "generate_and_write_events_per_s": round(max(write_rates), 1),
        "generate_events_per_s_all": [round(r, 1) for r in gen_rates],
        "generate_and_write_events_per_s_all": [round(r, 1) for r in write_rates],
        "generate_cpu_us_per_event": round(min(gen_cpu), 1),
        "generate_and_write_cpu_us_per_event": round(min(write_cpu), 1),
        "file_kb_per_event": round(size / events / 1024, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "background_writer": not args.no_background,
        "workers": args.workers,
        "compression": args.compression,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from xecmae.runtime import restart_with_huge_pages

    restart_with_huge_pages()  # as the xecmae commands do
    sys.exit(main())
