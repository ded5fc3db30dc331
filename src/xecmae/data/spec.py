"""The stream spec: what a stream of batches needs to know, each default and check written once.

The ``data`` section of the configuration is built from these fields (plus the input paths and
the loader's own keys), so the stream's defaults are the configuration's;
:meth:`xecmae.config.DataConfig.stream_spec` gives the spec of a split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

from annotated_types import Ge, Gt

from xecmae.detector.specs import check_fields

NOT_CONFIGURED = ("even_steps",)
"""Fields that are no key of the ``data`` section: the split decides them."""


CHUNK_EVENTS = 1024
"""Events read (and written) at a time when a trained model is applied: 4760 x 2 float32 sensors
each, about 40 MB per chunk, large enough that the per-chunk overhead vanishes."""

@dataclass(frozen=True)
class StreamSpec:
    """How a stream reads, deals, shuffles and batches its events.

    Attributes:
        tree_name, npho_branch, time_branch: the TTree and the branches of the raw npho
            (photons) and relative_time (seconds), float32[4760] each.
        batch_size: events per batch (per rank).
        chunksize: events per file piece: files are cut into pieces of this size, on basket
            boundaries, which are shuffled and dealt to ranks and workers (reads themselves are
            blocks of about 32 MB); also the events per summary line of invalid sensors.
        num_workers: DataLoader worker processes per rank (0 = read in the training process).
        num_threads: threads per worker that normalise a batch.
        prefetch_factor: batches each worker prepares ahead (the DataLoader's prefetch_factor).
        shuffle_buffer: events held back for shuffling by a rank, split evenly among its workers
            (38 kB each); 0 = keep the input order (and the piece order) as it is.
        drop_last: drop each worker's ragged tail, so every batch has ``batch_size`` events;
            otherwise the tail comes as a smaller final batch.
        max_events: events per epoch over all ranks together; None = the whole input.
        even_steps: cut every rank to the same number of batches (training under DDP), so no
            rank waits on one that ran out of data; not a configuration key (on for training,
            off for validation).
    """

    tree_name: str = "tree"
    npho_branch: str = "npho"
    time_branch: str = "relative_time"
    batch_size: Annotated[int, Gt(0)] = 1024
    chunksize: Annotated[int, Gt(0)] = 10000
    num_workers: Annotated[int, Ge(0)] = 2
    num_threads: Annotated[int, Gt(0)] = 2
    prefetch_factor: Annotated[int, Gt(0)] = 2
    shuffle_buffer: Annotated[int, Ge(0)] = 20000
    drop_last: bool = True
    max_events: Annotated[int, Gt(0)] | None = None
    even_steps: bool = True

    def __post_init__(self):
        check_fields(self)

    def for_validation(self, max_events: int | None) -> StreamSpec:
        """The same stream for validation: file order, every event once (up to ``max_events``), no even steps."""
        return replace(self, shuffle_buffer=0, drop_last=False, max_events=max_events, even_steps=False)

    @property
    def shuffle(self) -> bool:
        """Whether events (and pieces) are shuffled: a shuffle buffer is set."""
        return self.shuffle_buffer > 0
