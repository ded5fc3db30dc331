"""The allocator settings: one restart with the huge-page tunable (and the ways to skip it), heap reuse in training."""

import os
import subprocess
import sys

import pytest

from xecmae.runtime import OPT_OUT, TUNABLE, huge_pages_possible

PROBE = ("import os; print('before', flush=True); from xecmae.runtime import restart_with_huge_pages; "
         "restart_with_huge_pages(); print(os.environ.get('GLIBC_TUNABLES'))")


def start(**env_changes: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", OPT_OUT)}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_process_restarts_once_with_the_tunable_where_it_helps():
    lines = start()
    restarts = 1 if huge_pages_possible() else 0
    assert lines.count("before") == 1 + restarts  # once more after the restart, and never again
    assert lines[-1] == (TUNABLE if restarts else "None")


@pytest.mark.parametrize("env", [{OPT_OUT: "1"}, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}])
def test_an_opt_out_or_the_users_own_tunables_are_left_alone(env):
    lines = start(**env)
    assert lines.count("before") == 1  # no restart
    assert lines[-1] == env.get("GLIBC_TUNABLES", "None")


HEAP_PROBE = """
import ctypes
import resource
from xecmae.runtime import large_blocks_from_heap

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
SIZE = 64 * 2**20  # above any mmap threshold of glibc's own


def faults_of_a_fresh_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


faults_of_a_fresh_block()
mapped = faults_of_a_fresh_block()
with large_blocks_from_heap() as applied:
    faults_of_a_fresh_block()
    reused = faults_of_a_fresh_block()
faults_of_a_fresh_block()
after = faults_of_a_fresh_block()
print(applied, mapped, reused, after)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_training_reuses_freed_blocks_and_workers_map_them_again():
    done = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    applied, mapped, reused, after = (int(v) if v.isdigit() else v for v in done.stdout.split())
    assert applied == "True"
    assert mapped >= 32  # every page of the block touched afresh (16384 of 4 kB, or 32 huge pages)
    assert reused <= mapped // 10  # the heap's block again
    assert after >= 32  # glibc's behaviour is back
