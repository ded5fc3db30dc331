"""Metric accumulation on the device: one host read per log interval, not per step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from xecmae.train.losses import Stats


class MetricSums:
    """Running sums of (numerator, denominator) pairs, packed in one tensor.

    A metric is ``numerator / denominator``; names starting with ``rmse`` take the square root.
    A metric whose denominator is 0 (e.g. a face with no hidden sensor) is left out.
    """

    def __init__(self):
        self.names: list[str] | None = None
        self.sums: torch.Tensor | None = None  # (2, K)

    def add(self, stats: Stats) -> None:
        if self.names is None:
            self.names = list(stats)
        packed = torch.stack([torch.stack([stats[k][0].float(), stats[k][1].float()]) for k in self.names], dim=1)
        self.sums = packed if self.sums is None else self.sums + packed

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum across processes (metrics weighted by their denominators, e.g. events)."""
        if self.sums is not None:
            self.sums = all_reduce_sum(self.sums)

    def compute(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        num, den = self.sums.double().cpu().tolist()  # the one host sync
        out = {}
        for name, n, d in zip(self.names, num, den, strict=True):
            if d > 0:
                value = n / d
                out[name] = math.sqrt(max(value, 0.0)) if name.startswith("rmse") else value
        return out

    def reset(self) -> None:
        self.sums = None
