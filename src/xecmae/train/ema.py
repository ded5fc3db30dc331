"""Exponential moving average of the weights, used for validation, best selection and export."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step (the first step copies).

    The update reads nothing back from the device: the number of updates is counted on the host
    and mirrored in the averaged model's ``n_averaged`` buffer, which lives on the model's device
    (``AveragedModel.update_parameters`` would test that buffer on the host at every step, and
    copy it to the device when it lives on the CPU).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        device = next(model.parameters()).device
        self.averaged = AveragedModel(model, device=device, use_buffers=False)
        self.averaged.requires_grad_(False)
        self._average = get_ema_multi_avg_fn(decay)
        self._count = 0  # host copy of n_averaged

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        mine = [p.detach() for p in self.module.parameters()]
        current = [p.detach() for p in model.parameters()]
        if self._count == 0:
            torch._foreach_copy_(mine, current)
        else:
            self._average(mine, current, self.averaged.n_averaged)
        self.averaged.n_averaged.add_(1)
        self._count += 1

    def state_dict(self) -> dict[str, Any]:
        """Same keys as the model's state_dict, so the EMA weights load into a plain model."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any], n_averaged: int = 1) -> None:
        self.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(n_averaged)
        self._count = n_averaged

    @property
    def n_averaged(self) -> int:
        return self._count
