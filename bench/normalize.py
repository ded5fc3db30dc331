"""Cost of normalizing raw events into batch buffers, per event on one thread.

Compares :func:`xecmae.data.fastnorm.normalize_into` (what the data pipeline runs) with
``Normalizer.__call__`` on torch tensors (the reference it must equal bit for bit, which the
run also checks), both on plausible raw events with 1% dead channels, in blocks of
``BLOCK_EVENTS`` read from memory larger than the caches. The last line is one JSON object.

    python bench/normalize.py [--quick] [--events N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from dataloader import fake_chunks  # bench/, beside this script
from xecmae.data.fastnorm import BLOCK_EVENTS, Scratch, normalize_into
from xecmae.detector.geometry import N_SENSORS
from xecmae.detector.normalize import Normalizer


def raw_events(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The plausible raw events of ``bench/dataloader.py`` (1% dead channels), npho and time."""
    chunks = list(fake_chunks(n))
    return tuple(np.concatenate([c[key] for c in chunks]) for key in ("npho", "relative_time"))


def best_us_per_event(step, events: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for first in range(0, events, BLOCK_EVENTS):
            step(slice(first, min(first + BLOCK_EVENTS, events)))
        best = min(best, time.perf_counter() - start)
    return 1e6 * best / events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 events, 2 repeats")
    parser.add_argument("--events", type=int, default=4096, help="events (4096: 78 MB of raw values)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat = 512, 2
    torch.set_num_threads(1)  # as in a DataLoader worker
    normalizer = Normalizer()
    npho, times = raw_events(args.events)
    x = np.empty((args.events, N_SENSORS, 2), np.float32)
    valid = np.empty((args.events, N_SENSORS, 2), np.bool_)
    scratch = Scratch()

    def fast(rows: slice) -> None:
        normalize_into(normalizer, npho[rows], times[rows], x[rows], valid[rows], scratch)

    def reference(rows: slice) -> None:
        normalizer(torch.from_numpy(npho[rows]), torch.from_numpy(times[rows]))

    fast_us = best_us_per_event(fast, args.events, args.repeat)
    reference_us = best_us_per_event(reference, args.events, args.repeat)
    x_ref, valid_ref = normalizer(torch.from_numpy(npho), torch.from_numpy(times))
    print(json.dumps({"events": args.events, "block_events": BLOCK_EVENTS, "threads": 1,
                      "normalize_into_us_per_event": round(fast_us, 1),
                      "normalizer_call_us_per_event": round(reference_us, 1),
                      "speedup": round(reference_us / fast_us, 2),
                      "bit_identical": bool(np.array_equal(x.view(np.int32), x_ref.numpy().view(np.int32))
                                            and np.array_equal(valid, valid_ref.numpy())),
                      "torch": torch.__version__}))
    return 0


if __name__ == "__main__":
    from xecmae.runtime import restart_with_huge_pages

    restart_with_huge_pages()  # as the xecmae commands do
    sys.exit(main())
