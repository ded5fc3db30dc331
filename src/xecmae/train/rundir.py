"""The run directory as a place only one run writes to: lock, overwrite policy, temporary files, writability.

A run directory that already holds checkpoints is someone's compute: it is continued only with
``checkpoint.resume_from`` and replaced only with ``checkpoint.overwrite``. A live run holds an
exclusive ``flock`` on ``.lock`` inside it for its whole lifetime, so a second run with the same
name stops with one line instead of writing over the first. Temporary files are named
``.NAME.partial-PID`` (:mod:`xecmae.data.atomic`); those whose process is gone are removed
when a run starts.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
from pathlib import Path

from xecmae.errors import UserError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$")
LEGACY_TEMPORARY = re.compile(r"^\..+\.(pth|root)(\.[A-Za-z0-9_]+)?\.tmp$")  # names of earlier versions

_held: dict[str, int] = {}  # resolved run directory -> open lock descriptor


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(directory: Path, name: str | None = None) -> list[Path]:
    """Remove temporary files left by killed writers (only ``name``'s when given); returns them."""
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = PARTIAL.match(path.name)
        if match:
            if (name is not None and match["name"] != name) or _alive(int(match["pid"])):
                continue
        elif not LEGACY_TEMPORARY.match(path.name) or (name is not None and path.name != f".{name}.tmp"):
            continue
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        removed.append(path)
        log.warning("removed %s (%.1f MB), left by an interrupted write", path, size / 1e6)
    return removed


def _describe(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)


def check_writable(directory: Path, what: str) -> None:
    """Create ``directory`` if needed and write a probe file there: one line if either fails."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        blocking = next((p for p in (directory, *directory.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocking} is a file, not a directory" if blocking else _describe(exc)
        raise UserError(f"{what}: cannot write to {directory} ({reason})") from None


def checkpoint_files(run_dir: Path, kind: str) -> list[Path]:
    """The checkpoints and encoder exports of a ``kind`` run already in ``run_dir``."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.glob(f"{kind}_*.pth")
                  if p.name.startswith((f"{kind}_checkpoint_", f"{kind}_encoder_epoch_")))


def claim(run_dir: Path, kind: str, resume_from: str | None, overwrite: bool) -> None:
    """Lock ``run_dir`` for this process and apply the overwrite policy (rank 0 only).

    Refused: a directory another live run holds; a directory with checkpoints, unless this run
    resumes one of them or ``overwrite`` is set (the old checkpoints are then removed, so old
    and new never mix).
    """
    run_dir = Path(run_dir)
    check_writable(run_dir, "checkpoint.save_dir")
    lock(run_dir)
    clean_stale_partials(run_dir)
    existing = checkpoint_files(run_dir, kind)
    if not existing:
        return
    resumes_here = bool(resume_from) and Path(resume_from).resolve().parent == run_dir.resolve()
    if resumes_here:
        return
    if not overwrite:
        release(run_dir)
        last = run_dir / f"{kind}_checkpoint_last.pth"
        hint = f"continue it with --resume_from {last}" if last.is_file() else "continue it with --resume_from"
        raise UserError(f"{run_dir} already holds {len(existing)} checkpoint file(s) of another run; {hint}, "
                        "start over there with --overwrite, or choose another --run_name")
    for path in existing:
        path.unlink(missing_ok=True)
    log.warning("--overwrite: removed %d checkpoint file(s) of the previous run in %s", len(existing), run_dir)


def lock(run_dir: Path) -> None:
    """Hold an exclusive lock on ``run_dir/.lock`` until :func:`release` or the process ends."""
    key = str(Path(run_dir).resolve())
    if key in _held:
        return
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise UserError(f"{run_dir} is in use by another live run (pid {holder}); "
                            "wait for it, or choose another --run_name") from None
        raise UserError(f"cannot lock {path} ({_describe(exc)})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def release(run_dir: Path) -> None:
    fd = _held.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        # unlock first: forked data-loader workers share the open file, and closing only our copy would not free it
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
