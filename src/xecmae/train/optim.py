"""AdamW with decay only where it belongs, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices and kernels only: not on norms, biases or embeddings."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        exempt = (param.ndim < 2 or "embedding" in name or "norm" in name or leaf in ("gamma", "beta", "bias")
                  or "log_var" in name)
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """Fused AdamW: one kernel for all parameters, and it can skip a step on the device."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=betas, fused=True)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, lr_min_ratio: float) -> float:
    """Multiplier of the base learning rate: linear warmup, then cosine down to ``lr_min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return lr_min_ratio + (1 - lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int,
                   lr: float, lr_min: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-optimizer-step schedule; ``none`` keeps the learning rate constant."""
    if kind == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ratio = min(lr_min / lr, 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, warmup_steps, ratio))
