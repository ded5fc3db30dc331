"""Metric accumulation on the device: one host read per log interval, not per step."""

from __future__ import annotations

import math

import torch

from xecmae.train import distributed as dist
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

    def reduce(self) -> None:
        """Sum across processes (so every metric is weighted by its denominator, e.g. events).

        Gathers Python lists rather than all-reducing a tensor, so a rank that saw no batch (or
        fewer metric names) still takes part and nothing hangs.
        """
        if not dist.is_distributed():
            return
        mine = (self.names or [], [] if self.sums is None else self.sums.double().cpu().tolist())
        gathered = [None] * dist.world_size()
        torch.distributed.all_gather_object(gathered, mine)
        totals: dict[str, list[float]] = {}
        for names, sums in gathered:
            if not names:
                continue
            for k, name in enumerate(names):
                pair = totals.setdefault(name, [0.0, 0.0])
                pair[0] += sums[0][k]
                pair[1] += sums[1][k]
        if totals:
            self.names = list(totals)
            self.sums = torch.tensor([[v[0] for v in totals.values()], [v[1] for v in totals.values()]],
                                     dtype=torch.float64)

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

    def state_dict(self) -> dict | None:
        """Plain data for a checkpoint (a host read: call when saving only)."""
        if self.sums is None:
            return None
        return {"names": list(self.names), "sums": self.sums.detach().cpu()}

    @classmethod
    def from_state(cls, state: dict | None, scale: float = 1.0, device: torch.device | str = "cpu") -> MetricSums:
        """Sums saved by :meth:`state_dict`; ``scale`` multiplies numerators and denominators alike."""
        sums = cls()
        if state:
            sums.names = list(state["names"])
            sums.sums = state["sums"].to(device) * scale
        return sums
