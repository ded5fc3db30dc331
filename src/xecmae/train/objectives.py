"""The objectives the training loop can optimise: masked reconstruction and regression."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from xecmae.train.losses import LossSettings, Stats, mae_loss


class MAEObjective:
    """Hide sensors, reconstruct them, score the hidden ones (the MAE and the inpainter)."""

    def __init__(self, train_settings: LossSettings, eval_settings: LossSettings):
        self.settings = {True: train_settings, False: eval_settings}

    def __call__(self, model: nn.Module, raw: nn.Module, batch: dict[str, torch.Tensor],
                 generator: torch.Generator, autocast: Callable, training: bool) -> tuple[torch.Tensor, Stats, Any]:
        x, valid = batch["x"], batch["valid"]  # (B, 4760, 2) each
        hidden = raw.random_masking(valid, generator)  # (B, 4760), True = hidden
        with autocast():
            out = model(x, valid, hidden=hidden)
        loss, stats = mae_loss(out.pred, x, valid, hidden, raw.normalizer, self.settings[training],
                               raw.channel_log_var)
        return loss, stats, (hidden, out.pred)
