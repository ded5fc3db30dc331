"""Exponential moving average of the weights, used for validation, best selection and export."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA:
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)

    def state_dict(self) -> dict[str, Any]:
        """Same keys as the model's state_dict, so the EMA weights load into a plain model."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any], n_averaged: int = 1) -> None:
        self.module.load_state_dict(state)
        self.averaged.n_averaged.fill_(n_averaged)

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)
