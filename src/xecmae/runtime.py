"""Process start-up settings that make PyTorch on the CPU fast.

The widest tensors of the network (tens of MB of CNN activations) are allocated afresh for every
step. glibc hands such blocks out as new memory mappings, and touching them costs a page fault
per 4 kB: on a virtual machine that costs more than the arithmetic on them. With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` those mappings use transparent huge pages (2 MB),
which removed more than half of the time of a ConvNeXt block on a 2-core test machine. glibc
reads the tunable only when a process starts, so the command-line entry points restart
themselves once with it set.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

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
