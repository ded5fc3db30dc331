"""Process settings that make PyTorch on the CPU fast: glibc's allocator, and one thread for small tensors.

The widest tensors of the network (tens of MB of CNN activations) are allocated afresh for every
step. glibc hands such blocks out as new memory mappings, and touching them costs a page fault
per 4 kB: on a virtual machine that costs more than the arithmetic on them. With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` those mappings use transparent huge pages (2 MB),
which removed more than half of the time of a ConvNeXt block on a 2-core test machine. glibc
reads the tunable only when a process starts, so the command-line entry points restart
themselves once with it set.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "XECMAE_NO_REEXEC"


def huge_pages_possible() -> bool:
    """Linux with glibc >= 2.35 and transparent huge pages not disabled."""
    if sys.platform != "linux":
        return False
    libc, version = platform.libc_ver()
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError:
        return False
    if libc != "glibc" or (major, minor) < (2, 35):
        return False
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def restart_with_huge_pages() -> None:
    """Re-execute this process once with the huge-page tunable, unless the user set their own.

    Skipped when ``GLIBC_TUNABLES`` is already set (by the user or by the first start), when
    ``XECMAE_NO_REEXEC`` is set, or where the tunable has no effect.
    """
    if os.environ.get("GLIBC_TUNABLES") is not None or os.environ.get(OPT_OUT) or not huge_pages_possible():
        return
    argv = list(getattr(sys, "orig_argv", [])) or [sys.executable, *sys.argv]
    env = dict(os.environ, GLIBC_TUNABLES=TUNABLE)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)


# --- one intra-op thread -------------------------------------------------------------------------------
@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the caller's setting.

    For the simulation's, the light model's and the baselines' arithmetic on tensors of a few
    hundred thousand elements (e.g. 64 events x 4760 sensors): splitting them over threads gains
    little and, on a busy machine, costs a lot (every operation waits for all threads). The other
    cores are better used by the ROOT writer or by another data-loader worker.
    """
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- large blocks from the heap while training on the CPU --------------------------------------------
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt() parameters (glibc's malloc.h)
DEFAULT_MMAP_MAX = 65536  # glibc's default
MAPPED_ABOVE = 32 * 2**20  # where glibc's own sliding threshold ends up, and its trim threshold
TRIM_ABOVE = 2 * MAPPED_ABOVE
KEEP_HEAP = 2**31 - 1  # the largest trim threshold mallopt() takes: the heap is never trimmed


def _mallopt(parameter: int, value: int) -> bool:
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(parameter, value) == 1


@contextmanager
def large_blocks_from_heap(enabled: bool = True) -> Iterator[bool]:
    """Within the block, glibc serves every allocation from a heap it keeps, so freed activations are reused.

    glibc maps each block above its threshold (32 MB at most) afresh and unmaps it when freed,
    and hands the free top of its heap back to the system. A training step of the ``base``
    model on the CPU allocates and frees gigabytes of activations, and every page handed back
    is faulted in and zeroed again at the next step: a quarter of the step's time on a 2-core
    test machine. With ``M_MMAP_MAX = 0`` and no trimming, blocks come from the heap and the
    next step reuses them; the heap keeps its peak size (a fifth more peak memory there).
    DataLoader workers start with glibc's defaults again (:func:`map_large_blocks`).
    Yields whether the setting took effect (glibc only).
    """
    applied = enabled and _mallopt(M_MMAP_MAX, 0) and _mallopt(M_TRIM_THRESHOLD, KEEP_HEAP)
    if applied:
        log.debug("large blocks are served from the heap while training")
    try:
        yield applied
    finally:
        if applied:
            map_large_blocks()


def map_large_blocks(_worker_id: int | None = None) -> None:
    """Blocks above 32 MB as mappings again, the heap trimmed: a DataLoader ``worker_init_fn``.

    These are the values glibc's sliding thresholds settle at, set fixed (setting any
    threshold stops the sliding). Reading workers stream through far more data than they
    hold; a heap kept at its peak size would hold on to the most reads they ever had in flight.
    """
    _mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
    _mallopt(M_MMAP_THRESHOLD, MAPPED_ABOVE)
    _mallopt(M_TRIM_THRESHOLD, TRIM_ABOVE)
