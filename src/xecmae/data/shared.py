"""Batch buffers in shared memory that a DataLoader worker uses again once the main process is done.

A worker hands a batch over in shared memory. A fresh shared buffer costs a page fault per
4 kB page, written by the worker and mapped again by the main process: about 45 us per event
on a virtual machine, more than normalizing the event. So buffers are recycled, under two
conditions that together make it safe:

1. **Received.** The DataLoader sends a worker its next task only after the main process has
   returned the batch of ``prefetch_factor`` tasks earlier to its caller, so a buffer handed
   over more than ``prefetch_factor + 1`` batches ago has reached the main process.
2. **Released.** The main process maps every shared tensor it still holds; its
   ``/proc/PID/maps`` lists them by inode. A buffer is written again only when neither of its
   files is mapped there any more, whatever the caller did with the batch (kept it in a list,
   stored it for later): an unused buffer is simply not recycled.

Where either cannot be known (no ``/proc``, a worker whose parent is not the process that
iterates the loader) every batch gets fresh buffers, as without recycling.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Sequence

import torch

Spec = tuple[tuple[int, ...], torch.dtype]
Allocator = Callable[[Sequence[Spec]], list[torch.Tensor]]
"""Tensors of the given (shape, dtype) for one batch: :func:`fresh`, :func:`fresh_shared` or ``SharedBuffers.take``."""


def shared_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A new uninitialised tensor in shared memory (the DataLoader then sends it without a copy)."""
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=dtype).new(storage).view(shape)


def fresh(specs: Sequence[Spec]) -> list[torch.Tensor]:
    """New tensors in private memory (a batch that stays in this process)."""
    return [torch.empty(shape, dtype=dtype) for shape, dtype in specs]


def fresh_shared(specs: Sequence[Spec]) -> list[torch.Tensor]:
    """New tensors in shared memory (a batch for another process, not recycled)."""
    return [shared_empty(shape, dtype) for shape, dtype in specs]


def storage_inode(tensor: torch.Tensor) -> int:
    """Inode of the shared-memory file behind a shared tensor (in this process or one that received it)."""
    fd, _ = tensor.untyped_storage()._share_fd_cpu_()
    return os.fstat(fd).st_ino


def mapped_inodes(pid: int) -> set[int] | None:
    """Inodes of the shared-memory files process ``pid`` maps, or None when they cannot be read."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return None
    inodes = set()
    for line in lines:
        if "/dev/shm/" in line or "memfd:" in line:
            fields = line.split()
            if len(fields) > 4 and fields[4].isdigit():
                inodes.add(int(fields[4]))
    return inodes


class SharedBuffers:
    """Shared tensors for each batch a worker hands over, recycled as the module doc explains.

    Args:
        consumer: pid of the process that receives the batches (the worker's parent).
        received_after: batches after which a handed-over buffer has surely been received
            (``prefetch_factor + 1`` for a DataLoader; one more is added as a margin).
        keep: handed-over batches remembered as candidates; older ones are forgotten.
    """

    def __init__(self, consumer: int, received_after: int, keep: int | None = None):
        self.consumer = consumer
        self.lag = received_after + 1
        self.keep = keep or self.lag + 4
        self.handed: deque[tuple[int, list[torch.Tensor], set[int]]] = deque()  # (serial, tensors, inodes)
        self.serial = 0
        self.recycled = 0

    def take(self, specs: Sequence[Spec]) -> list[torch.Tensor]:
        """Tensors of the given (shape, dtype) for the next batch: recycled ones where allowed."""
        self.serial += 1
        entry = self._released(specs)
        if entry is None:
            tensors = fresh_shared(specs)
            entry = (tensors, {storage_inode(t) for t in tensors})
        else:
            self.recycled += 1
        self.handed.append((self.serial, *entry))
        while len(self.handed) > self.keep:
            self.handed.popleft()
        return entry[0]

    def _released(self, specs: Sequence[Spec]) -> tuple[list[torch.Tensor], set[int]] | None:
        old = [entry for entry in self.handed if entry[0] <= self.serial - self.lag
               and [(tuple(t.shape), t.dtype) for t in entry[1]] == [(tuple(s), d) for s, d in specs]]
        if not old:
            return None
        mapped = mapped_inodes(self.consumer)
        if mapped is None:
            return None
        for entry in old:
            if not entry[2] & mapped:
                self.handed.remove(entry)
                return entry[1], entry[2]
        return None
