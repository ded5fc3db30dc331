"""The command-line start-up: one restart with the huge-page tunable, and the ways to skip it."""

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
