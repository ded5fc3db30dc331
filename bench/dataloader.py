"""Throughput and memory of the streaming data pipeline against a bare uproot read.

Writes a ROOT file of plausible random events (npho, relative_time float32[4760], 1% dead
channels at 1e10, run, event) into a temporary folder, then, interleaved ``--repeat`` times:

- bare: ``uproot.iterate`` over the same two branches of the same file, chunks of
  ``--chunksize``, numpy output, nothing else;
- pipeline: :class:`XECStream` + DataLoader (shuffle, normalization, whole batches in shared
  memory) with 1 and 2 workers (``--workers``).

Then, once, the worker's stages one after another on one thread of this process (reading,
counting invalid values, shuffling, normalizing), each timed by the thread's CPU clock, set
against the CPU time per event that all cores together have at 0.8x the best bare rate.

The last line printed is one JSON object: events/s of each (best of the repeats), the ratio of
the best pipeline rate to the best bare rate, the median ratio to the bare read of the same
repeat, CPU time per event (workers included: a
measure of cost that other load on the machine disturbs less than the rates), and the peak
memory of the process tree during each pipeline run (sampled from /proc, workers included):
``peak_rss_mb`` sums RSS (pages shared between the processes counted once per process, an
upper bound), ``peak_pss_mb`` sums PSS (shared pages split between the processes).

    python bench/dataloader.py --quick
    python bench/dataloader.py --events 100000 --chunksize 20000 --workers 1 2
    python bench/dataloader.py --compression zlib
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import uproot
from torch.utils.data import DataLoader

from xecmae.data.fastnorm import count_bad
from xecmae.data.pool import EventPool, normalize_blocks, segment_blocks
from xecmae.data.rootio import ReadBuffers, expected_shapes, read_range, scan, write_tree
from xecmae.data.spec import StreamSpec
from xecmae.data.stream import XECStream
from xecmae.detector.geometry import N_SENSORS
from xecmae.detector.normalize import Normalizer
from xecmae.runtime import map_large_blocks

WRITE_CHUNK = 1000  # events per basket when writing: ~19 MB per branch
COMPRESSION = {"lz4": uproot.LZ4(1), "zlib": uproot.ZLIB(1), "zstd": uproot.ZSTD(5), "lzma": uproot.LZMA(1)}


def fake_chunks(events: int, seed: int = 0):
    """Plausible raw events: a few bright sensors, many dim ones, 1% dead (1e10), times in seconds."""
    rng = np.random.default_rng(seed)
    for start in range(0, events, WRITE_CHUNK):
        n = min(WRITE_CHUNK, events - start)
        scale = rng.lognormal(5.0, 1.0, (n, 1)).astype(np.float32)
        npho = (rng.exponential(1.0, (n, N_SENSORS)).astype(np.float32) ** 2 * scale
                + rng.normal(0, 6, (n, N_SENSORS)).astype(np.float32))
        time = (rng.normal(30e-9, 8e-9, (n, N_SENSORS))).astype(np.float32)
        dead = rng.random((n, N_SENSORS)) < 0.01
        npho[dead] = 1e10
        time[dead] = 1e10
        yield {"npho": npho, "relative_time": time, "run": np.full(n, 1, np.int32),
               "event": np.arange(start, start + n, dtype=np.int32)}


class TreeMemory:
    """Samples the summed RSS and PSS (MB) of this process and all its descendants.

    PSS needs a walk over each process's page tables, so it is read every fifth sample only.
    """

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_rss, self.peak_pss = interval, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        sample = 0
        while not self._stop.is_set():
            pids = _tree(os.getpid())
            self.peak_rss = max(self.peak_rss, sum(_field(f"/proc/{pid}/status", "VmRSS:") for pid in pids))
            if sample % 5 == 0:
                self.peak_pss = max(self.peak_pss, sum(_field(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in pids))
            sample += 1
            self._stop.wait(self.interval)


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return pids


def _field(path: str, key: str) -> float:
    """A kB field of a /proc file, in MB (0 when the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bare_read(path: str, chunksize: int, threaded_source: bool = False) -> tuple[float, float]:
    """Events/s and CPU us/event of uproot.iterate over the two sensor branches, numpy output.

    Default options (memory-mapped file), or with the threaded file source the pipeline uses.
    """
    options = {"handler": uproot.source.file.MultithreadedFileSource} if threaded_source else {}
    start, cpu, events = time.perf_counter(), cpu_seconds(), 0
    for arrays in uproot.iterate(f"{path}:tree", ["npho", "relative_time"], step_size=chunksize, library="np",
                                 **options):
        events += len(arrays["npho"])
        del arrays
    return events / (time.perf_counter() - start), 1e6 * (cpu_seconds() - cpu) / events


def pipeline(path: str, args: argparse.Namespace, workers: int) -> tuple[float, float, float, float, int]:
    """Events/s, CPU us/event (workers included), peak tree RSS and PSS (MB), events, with ``workers`` workers."""
    spec = StreamSpec(batch_size=args.batch, chunksize=args.chunksize, shuffle_buffer=args.shuffle_buffer,
                      num_threads=args.threads, num_workers=workers, prefetch_factor=2, drop_last=True)
    stream = XECStream(path, Normalizer(), spec, seed=1, recycle=workers > 0)
    loader = DataLoader(  # as make_loader builds it
        stream, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
        persistent_workers=False, worker_init_fn=map_large_blocks if workers else None)
    with TreeMemory() as memory:
        start, cpu, events = time.perf_counter(), cpu_seconds(), 0
        for batch in loader:
            events += len(batch["event"])
        rate = events / (time.perf_counter() - start)
        del batch, loader  # the workers end here, so their CPU time is counted below
        cpu_us = 1e6 * (cpu_seconds() - cpu) / events
    return rate, cpu_us, memory.peak_rss, memory.peak_pss, events


def stage_costs(path: str, args: argparse.Namespace) -> dict[str, float]:
    """CPU us per event of each stage of a worker, run one after the other on one thread of this process.

    The stream's own parts (reads into reused buffers, the invalid-value count, the shuffle
    buffer, normalization into a batch), each timed with this thread's CPU clock: what the
    pipeline must spend per event in sum, however it spreads the stages over threads.
    """
    spec = StreamSpec(batch_size=args.batch, chunksize=args.chunksize, shuffle_buffer=0, num_threads=1, num_workers=0)
    stream = XECStream(path, Normalizer(), spec, seed=1)
    info = scan(path, "tree", expected_shapes("npho", "relative_time", truth=False))
    branches = ["npho", "relative_time"]
    reads = read_range(path, "tree", branches, 0, info.entries, stream.read_events, info.boundaries, ReadBuffers(),
                       into=branches)
    rng = np.random.default_rng(1) if args.shuffle_buffer else None
    pool = EventPool(args.batch, args.shuffle_buffer, rng)
    x = np.empty((args.batch, N_SENSORS, 2), np.float32)
    valid = np.empty((args.batch, N_SENSORS, 2), np.bool_)
    spent = dict.fromkeys(("read", "count", "shuffle", "normalize"), 0.0)
    events = 0

    def timed(stage: str, work, *args):
        start = time.thread_time()
        result = work(*args)
        spent[stage] += time.thread_time() - start
        return result

    def normalize_all(batches) -> int:
        done = 0
        while (segments := timed("shuffle", next, batches, None)) is not None:
            timed("normalize", normalize_blocks, stream.normalizer, segment_blocks(segments), x, valid)
            done += args.batch  # with drop_last, every batch is full
        return done

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker, and all of the work on this thread's clock
    try:
        while (arrays := timed("read", next, reads, None)) is not None:
            chunk = {"npho": arrays["npho"], "time": arrays["relative_time"]}
            timed("count", count_bad, chunk["npho"], chunk["time"])
            events += normalize_all(pool.push(chunk))
            del arrays, chunk
        events += normalize_all(pool.flush(drop_last=True))
    finally:
        torch.set_num_threads(threads)
    return {stage: 1e6 * seconds / max(events, 1) for stage, seconds in spent.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="4000 events, chunks of 1000, batches of 256, a shuffle buffer of 2000")
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--chunksize", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=2, help="data.num_threads per worker")
    parser.add_argument("--shuffle-buffer", type=int, default=20000, help="0 = in file order")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved repeats; the best of each is kept")
    parser.add_argument("--file", default=None, help="reuse (or create) this ROOT file instead of a temporary one")
    parser.add_argument("--compression", choices=sorted(COMPRESSION), default="lz4",
                        help="of the file written; lz4 stores these noisy floats almost as they are")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.chunksize, args.batch, args.shuffle_buffer = 4000, 1000, 256, 2000
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    folder = tempfile.mkdtemp(prefix="xecmae-bench-")
    try:
        path = args.file or os.path.join(folder, "events.root")
        written = not os.path.exists(path)
        if written:
            start = time.perf_counter()
            write_tree(path, fake_chunks(args.events), compression=COMPRESSION[args.compression])
            print(f"wrote {args.events} events, {os.path.getsize(path) / 2**20:.0f} MB, "
                  f"in {time.perf_counter() - start:.1f} s: {path}", file=sys.stderr)
        events = int(uproot.open(path)["tree"].num_entries)
        result: dict[str, float | int | str | list] = {
            "events": events, "chunksize": args.chunksize, "batch_size": args.batch, "num_threads": args.threads,
            "shuffle_buffer": args.shuffle_buffer, "file_mb": round(os.path.getsize(path) / 2**20),
            "compression": args.compression if written else "as the existing file was written",
            "cpu_count": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0], "repeats": args.repeat}
        bare, threaded, runs = [], [], {w: [] for w in args.workers}  # per repeat
        for repeat in range(args.repeat):
            bare.append(bare_read(path, args.chunksize))
            threaded.append(bare_read(path, args.chunksize, threaded_source=True))
            print(f"repeat {repeat}: bare {bare[-1][0]:.0f} events/s ({bare[-1][1]:.0f} us CPU/event), with the "
                  f"threaded source {threaded[-1][0]:.0f} events/s ({threaded[-1][1]:.0f} us)", file=sys.stderr)
            for workers in args.workers:
                rate, cpu_us, rss, pss, used = pipeline(path, args, workers)
                runs[workers].append((rate, rate / bare[-1][0], cpu_us, rss, pss))
                print(f"repeat {repeat}: {workers} worker(s) {rate:.0f} events/s ({used} events, {cpu_us:.0f} us "
                      f"CPU/event), ratio {rate / bare[-1][0]:.2f}, peak RSS {rss:.0f} MB, PSS {pss:.0f} MB",
                      file=sys.stderr)
        result["bare_uproot_events_per_s"] = round(max(r for r, _ in bare))
        result["bare_uproot_cpu_us_per_event"] = round(min(c for _, c in bare), 1)
        result["bare_uproot_threaded_source_events_per_s"] = round(max(r for r, _ in threaded))
        for workers, values in runs.items():
            key = f"{workers}_worker" + ("s" if workers != 1 else "")
            result[f"pipeline_{key}_events_per_s"] = round(max(v[0] for v in values))
            result[f"ratio_{key}"] = round(max(v[0] for v in values) / result["bare_uproot_events_per_s"], 3)
            result[f"ratio_{key}_median"] = round(float(np.median([v[1] for v in values])), 3)
            result[f"pipeline_{key}_cpu_us_per_event"] = round(min(v[2] for v in values), 1)
            result[f"peak_rss_{key}_mb"] = round(max(v[3] for v in values))
            result[f"peak_pss_{key}_mb"] = round(max(v[4] for v in values))
        result["peak_rss_mb"] = max(result[k] for k in result if k.startswith("peak_rss_") and k != "peak_rss_mb")
        result["peak_pss_mb"] = max(result[k] for k in result if k.startswith("peak_pss_") and k != "peak_pss_mb")
        stages = stage_costs(path, args)
        print("stages on one thread, CPU us per event: "
              + ", ".join(f"{stage} {us:.1f}" for stage, us in stages.items()), file=sys.stderr)
        result["stage_cpu_us_per_event"] = {stage: round(us, 1) for stage, us in stages.items()}
        result["stages_cpu_us_per_event_sum"] = round(sum(stages.values()), 1)
        # all cores busy with nothing but the pipeline, at 0.8x the best bare rate
        budget = 1e6 * os.cpu_count() / (0.8 * result["bare_uproot_events_per_s"])
        result["cpu_us_per_event_budget_at_0_8x"] = round(budget, 1)
        result["self_maxrss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        result["load_avg_at_end"] = os.getloadavg()[0]
        result["torch"] = torch.__version__
        print(json.dumps(result))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from xecmae.runtime import restart_with_huge_pages

    restart_with_huge_pages()  # as the xecmae commands do
    sys.exit(main())
