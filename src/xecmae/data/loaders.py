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

from torch.utils.data import DataLoader

from xecmae.data.stream import XECStream, make_stream, stream_loader


class EpochLoader:
    """One split's stream and its DataLoader; ``loader(epoch)`` is what to iterate in that epoch."""

    def __init__(self, cfg: Any, split: str, rank: int = 0, world_size: int = 1, truth: bool = False,
                 persistent: bool | None = None):
        self.cfg = cfg
        self.stream: XECStream = make_stream(cfg, split, rank, world_size, 0, truth)
        wanted = cfg.data.persistent_workers if persistent is None else persistent
        self.persistent = bool(wanted and cfg.data.num_workers > 0)
        self._loader: DataLoader | None = None

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.stream)

    def loader(self, epoch: int) -> DataLoader:
        self.stream.set_epoch(epoch)
        if self._loader is None or not self.persistent:
            self._loader = stream_loader(self.cfg, self.stream, persistent=self.persistent)
        return self._loader
