"""Turn what a user wrote as an input (``data.train_path``) into a sorted list of ROOT files.

Accepted forms: one ROOT file; a glob (``*``, ``?``, ``[...]``, ``**`` for any depth, as in the
job scripts' ``ROOT_PATH``); a directory (its ``*.root`` files); a text file listing any of
these, one per line (blank lines and ``#`` comments ignored, relative paths taken from the
list's folder); a list of any of these; or a simulated source ``sim://...``, passed through.
Remote URLs (``root://``, ``http(s)://``, ...) are passed to uproot unchecked.

Every problem is a :class:`UserError` that names the path and says what is wrong with it.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from xecmae.errors import UserError

SIM_SCHEME = "sim://"
ROOT_SIGNATURE = b"root"
_GLOB_CHARS = frozenset("*?[")
REMOTE_SCHEMES = ("root://", "http://", "https://", "s3://", "xroot://")


def is_sim(spec: str | list[str] | None) -> bool:
    """True for a simulated source (``sim://...``), alone or as the only element of a list."""
    if isinstance(spec, list | tuple) and len(spec) == 1:
        spec = spec[0]
    return isinstance(spec, str) and spec.strip().startswith(SIM_SCHEME)


def resolve_inputs(spec: str | os.PathLike | list[str | os.PathLike] | None) -> list[str]:
    """Input specification -> sorted, de-duplicated list of ROOT file paths (or ``[sim_url]``)."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if spec is None or (isinstance(spec, str) and not spec.strip()) or (isinstance(spec, list | tuple) and not spec):
        raise UserError("no input given: set a ROOT file, glob, directory, list or sim:// source")
    items = [spec] if isinstance(spec, str) else [os.fspath(i) if isinstance(i, os.PathLike) else i for i in spec]
    if any(not isinstance(item, str) for item in items):
        raise UserError(f"input paths must be strings, got {spec!r}")
    if is_sim(items):
        return [items[0].strip()]
    if any(is_sim(item) for item in items):
        raise UserError("a sim:// source cannot be combined with files; give one or the other")
    files: set[str] = set()
    for item in items:
        files.update(_resolve_one(item.strip(), allow_list=True))
    return sorted(files)


def _resolve_one(item: str, allow_list: bool, where: str = "") -> list[str]:
    if item.startswith(REMOTE_SCHEMES):
        return [item]
    path = os.path.expandvars(os.path.expanduser(item))
    if _GLOB_CHARS.intersection(path):
        found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        if not found:
            raise UserError(f"{where}{item}: the pattern matches no file")
        return [_checked_root(p, where) for p in found]
    if os.path.isdir(path):
        found = sorted(str(p) for p in Path(path).glob("*.root") if p.is_file())
        if not found:
            raise UserError(f"{where}{item}: the directory holds no .root file")
        return [_checked_root(p, where) for p in found]
    if not os.path.exists(path):
        raise UserError(f"{where}{item}: no such file or directory")
    if _has_root_signature(path):
        return [path]
    if not allow_list or path.endswith(".root"):
        raise UserError(f"{where}{path}: {_not_root_reason(path)}")
    return _read_list(path)


def _read_list(path: str) -> list[str]:
    """A text file of inputs, one per line; anything else is called out as 'not ROOT, not a list'."""
    try:
        raw = Path(path).read_bytes()
        if b"\0" in raw:
            raise UnicodeDecodeError("utf-8", raw[:1], 0, 1, "binary content")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        raise UserError(f"{path}: {_not_root_reason(path)}, and not a text file listing paths") from None
    base = os.path.dirname(os.path.abspath(path))
    files: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        expanded = os.path.expandvars(os.path.expanduser(entry))
        full = expanded if entry.startswith(REMOTE_SCHEMES) or os.path.isabs(expanded) else os.path.join(base, expanded)
        if not files and not _GLOB_CHARS.intersection(full) and not os.path.exists(full):
            raise UserError(f"{path}: {_not_root_reason(path)}, and not a list of paths "
                            f"(line {number}, {entry[:80]!r}, is no existing file)")
        files += _resolve_one(full, allow_list=False, where=f"{path} line {number}: ")
    if not files:
        raise UserError(f"{path}: {_not_root_reason(path)}, and lists no paths")
    return files


def _checked_root(path: str, where: str) -> str:
    if not _has_root_signature(path):
        raise UserError(f"{where}{path}: {_not_root_reason(path)}")
    return path


def _has_root_signature(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(ROOT_SIGNATURE)) == ROOT_SIGNATURE
    except OSError:
        return False


def _not_root_reason(path: str) -> str:
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if size == 0:
        return "empty file (0 bytes), not a ROOT file"
    return "not a ROOT file (it does not start with the ROOT signature 'root')"
