"""Atomic writes: every output file appears whole or not at all.

A file is written to ``.NAME.partial-PID`` beside its final name and renamed over it only when
complete; on any failure (an exception, Ctrl-C) the partial file is removed and the final file,
if one was there, is untouched. A writer killed with ``kill -9`` leaves its partial file behind;
the name says whose it was, so the next run in that directory removes those of dead processes
(:func:`xecmae.train.rundir.clean_stale_partials`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self


def partial_name(path: str | os.PathLike) -> Path:
    """Where ``path`` is written before the atomic rename: ``.NAME.partial-PID`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial-{os.getpid()}")


class Partial:
    """One file under construction at :func:`partial_name` until :meth:`commit` renames it."""

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.path = partial_name(self.final)

    def commit(self, durable: bool = False) -> Path:
        """Rename the partial file over the final one; ``durable`` flushes it to the disk first
        (survives a power cut, not only a killed process)."""
        if durable:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(self.path, self.final)
        return self.final

    def discard(self) -> None:
        """Remove the partial file, if any (a no-op after :meth:`commit`)."""
        self.path.unlink(missing_ok=True)


class CloseOrAbort:
    """A writer whose file is complete or gone: :meth:`close` keeps it, :meth:`abort` removes it.

    A subclass writes the rest of its file in ``_complete`` (returning the final path) and removes
    what it wrote in :meth:`abort` (safe to call twice, and after a close). A failure inside
    ``_complete`` aborts as well; a ``with`` block closes on success and aborts on an exception.
    """

    def _complete(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def close(self) -> Path:
        try:
            return self._complete()
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield the partial path to write ``final`` to; renamed on success, removed on failure."""
    partial = Partial(final)
    try:
        yield partial.path
        partial.commit(durable)
    finally:
        partial.discard()


@contextlib.contextmanager
def atomic_paths(finals: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Several files that appear together: all are renamed only after the block wrote every one."""
    partials = [Partial(p) for p in finals]
    try:
        yield [p.path for p in partials]
        for partial in partials:
            partial.commit()
    finally:
        for partial in partials:
            partial.discard()


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically. The partial file is created with ``os.open`` first,
    so its permissions follow the umask as for any ``open()``."""
    import torch

    with atomic_path(path) as tmp:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        torch.save(obj, tmp)
    return Path(path)


def save_figure(fig, path: str | os.PathLike, **kwargs) -> Path:
    """``fig.savefig`` atomically; the format comes from the final name's suffix (png by default)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return path
