"""The loaders of a training run: each split planned once, iterated epoch after epoch.

Planning a stream scans every input file (entries, basket boundaries); starting DataLoader
workers forks processes that then fill their shuffle buffers before the first batch. A run
does the first once per split, and with ``data.persistent_workers`` the second once for the
training split: its workers live for the whole run and learn each epoch from the stream's
shared epoch value, so every epoch's order is the one a fresh loader of that epoch gives.
Validation loaders start their workers per epoch (they run once an epoch; workers kept idle
through training would hold their memory).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from xecmae.data.stream import XECStream
from xecmae.errors import UserError
from xecmae.runtime import map_large_blocks


def make_stream(cfg: Any, split: str, rank: int = 0, world_size: int = 1, epoch: int = 0,
                truth: bool = False) -> XECStream:
    """The stream of one split ("train": shuffled, even steps; "val": file order, every event)."""
    spec = cfg.data.stream_spec(split)
    source = cfg.data.train_path if split == "train" else cfg.data.val_path
    if source is None or source == [] or source == "":
        raise UserError(f"data.{split}_path is not set")
    return XECStream(source, cfg.normalizer(), spec, seed=cfg.training.seed, rank=rank, world_size=world_size,
                     epoch=epoch, truth=truth, recycle=spec.num_workers > 0, name=split)


def make_loader(cfg: Any, split: str, rank: int = 0, world_size: int = 1, epoch: int = 0,
                truth: bool = False) -> DataLoader:
    """A DataLoader over :func:`make_stream` for one epoch, with workers that end with it.

    ``len(loader)`` is the number of batches it yields, the same on every rank for "train".
    A run that goes on for epochs uses :class:`EpochLoader` instead.
    """
    return stream_loader(make_stream(cfg, split, rank, world_size, epoch, truth))


def stream_loader(stream: XECStream, persistent: bool = False) -> DataLoader:
    """The DataLoader over ``stream``: its workers and prefetch from the stream's spec, pinned on CUDA.

    ``persistent`` keeps the workers (and their read buffers) alive from one iteration to the
    next; the stream's :meth:`~XECStream.set_epoch` still reaches them.
    """
    workers = stream.spec.num_workers
    extra: dict[str, Any] = {}
    if workers > 0:  # map_large_blocks: a worker forked from a training process gets glibc's thresholds back
        extra = {"prefetch_factor": stream.spec.prefetch_factor, "worker_init_fn": map_large_blocks,
                 "persistent_workers": persistent}
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(), **extra)


class EpochLoader:
    """One split's stream and its DataLoader; ``loader(epoch)`` is what to iterate in that epoch."""

    def __init__(self, cfg: Any, split: str, rank: int = 0, world_size: int = 1, truth: bool = False,
                 persistent: bool | None = None):
        self.stream: XECStream = make_stream(cfg, split, rank, world_size, 0, truth)
        wanted = cfg.data.persistent_workers if persistent is None else persistent
        self.persistent = bool(wanted and self.stream.spec.num_workers > 0)
        self._loader: DataLoader | None = None

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.stream)

    def loader(self, epoch: int) -> DataLoader:
        self.stream.set_epoch(epoch)
        if self._loader is None or not self.persistent:
            self._loader = stream_loader(self.stream, persistent=self.persistent)
        return self._loader
