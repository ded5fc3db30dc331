"""Checkpoints as plain data: written atomically, read with ``weights_only=True``.

A checkpoint is a dict of state_dicts, numbers, strings and the configuration as a dict, so
loading one can never run code from the file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from xecmae.data.atomic import torch_save
from xecmae.errors import UserError

MAE_BEST = "mae_checkpoint_best.pth"
MAE_LAST = "mae_checkpoint_last.pth"


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (full disk, read-only mount); the previous one is kept."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write to ``.NAME.partial-PID`` beside ``path`` and rename it: a crash never leaves half a file.

    A failed write (a full disk shows up as an ``inline_container.cc`` RuntimeError from
    ``torch.save``) removes the partial file and raises one line; ``path`` itself is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return torch_save(payload, path)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not _is_write_failure(exc):
            raise
        kept = "; the previous checkpoint there is kept" if path.is_file() else ""
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {_write_reason(exc, path.parent)}{kept}") from None


def _is_write_failure(exc: RuntimeError) -> bool:
    text = str(exc)
    return any(s in text for s in ("inline_container", "PytorchStreamWriter", "file write failed",
                                   "No space left", "unexpected pos"))


def _write_reason(exc: BaseException, directory: Path) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "the write failed"
    return f"the write failed with {free / 1e6:.1f} MB free on the disk (full?)"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely (tensors and plain containers only); a damaged file is one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: the checkpoint is empty (0 bytes): its write was interrupted or the disk was full")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
        raise UserError(f"{path}: cannot be read as a plain-data checkpoint ({size} bytes; truncated or not a "
                        f"checkpoint? {detail})") from None


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
