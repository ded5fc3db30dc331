"""A fixed number of optimizer steps, whatever the number of labelled events: benchmarks compare runs at equal cost.

The trainers count epochs, and their learning-rate schedule spans all of them. :func:`step_budget`
turns a step count into epochs of (nearly) equal size that cover it: ``training.epochs``,
``data.max_events`` (events per epoch, when fewer than all make the epochs fit; which events,
changes every epoch with the piece order) and ``training.max_steps`` to stop exactly at the
budget. The schedule then ends within ``epochs - 1`` steps of the budget, so a run of 16,000
labelled events and one of 1,000 both warm up, decay and stop alike. ``warmup_share`` sets the
warm-up as a share of the steps (``training.warmup_epochs`` counts epochs, whose length differs).
"""

from __future__ import annotations

import math

from xecmae.config import DataConfig
from xecmae.data.plan import steps_per_epoch
from xecmae.errors import UserError


def epochs_for_steps(steps: int, events: int, batch_size: int, num_workers: int = 0, world_size: int = 1,
                     drop_last: bool = True) -> int:
    """Epochs over ``events`` labelled events that give at least ``steps`` optimizer steps."""
    if steps <= 0:
        raise UserError(f"a step budget must be positive, got {steps}")
    per_epoch = steps_per_epoch(events, batch_size, world_size, num_workers, drop_last)
    if per_epoch == 0:
        raise UserError(f"{events} events make no batch of {batch_size} (with {max(num_workers, 1)} loader "
                        f"worker(s) and {world_size} rank(s))")
    return math.ceil(steps / per_epoch)


def step_budget(raw: dict, steps: int, events: int, warmup_share: float | None = None) -> dict:
    """Make a raw configuration train for exactly ``steps`` steps on ``events`` events (in place; returned).

    Reads its ``data`` section (the defaults where it is silent); sets ``training.epochs``,
    ``training.max_steps``, ``data.max_events`` when an epoch is cut short, and with
    ``warmup_share`` ``training.warmup_epochs``.
    """
    data = DataConfig.model_validate(raw.get("data", {}))

    def per_epoch(n: int) -> int:
        return steps_per_epoch(n, data.batch_size, 1, data.num_workers, data.drop_last)

    epochs = epochs_for_steps(steps, events, data.batch_size, data.num_workers, drop_last=data.drop_last)
    wanted = math.ceil(steps / epochs)  # steps of each epoch
    epoch_events = min(events, wanted * data.batch_size)
    while per_epoch(epoch_events) < wanted and epoch_events < events:  # a loader worker's ragged tail
        epoch_events = min(events, epoch_events + data.batch_size)
    training = raw.setdefault("training", {})
    training.update({"epochs": epochs, "max_steps": steps})
    if epoch_events < events:
        raw.setdefault("data", {})["max_events"] = epoch_events
    if warmup_share is not None:
        training["warmup_epochs"] = warmup_share * steps / per_epoch(epoch_events)
    return raw
