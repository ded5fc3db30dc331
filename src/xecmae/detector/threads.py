"""One intra-op thread for the small tensor arithmetic of the light model, the simulation and the baselines.

It lives with the detector description because the light model is its first user and this
package imports nothing else of the project.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the caller's setting.

    For arithmetic on tensors of a few hundred thousand elements (e.g. 64 events x 4760
    sensors): splitting them over threads gains little and, on a busy machine, costs a lot
    (every operation waits for all threads). The other cores are better used by the ROOT
    writer or by another data-loader worker.
    """
    import torch

    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
