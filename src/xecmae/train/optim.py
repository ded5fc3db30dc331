"""AdamW with decay only where it belongs, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn


def decays(name: str, param: torch.Tensor) -> bool:
    """Weight decay on weight matrices and kernels only: not on norms, biases or embeddings."""
    leaf = name.rsplit(".", 1)[-1]
    return not (param.ndim < 2 or "embedding" in name or "norm" in name or leaf in ("gamma", "beta", "bias")
                or "log_var" in name)


def parameter_groups(named: list[tuple[str, torch.Tensor]], weight_decay: float, lr: float) -> list[dict]:
    """The trainable parameters of ``named`` in a decayed and an undecayed group at ``lr``."""
    trainable = [(n, p) for n, p in named if p.requires_grad]
    return [g for g in (
        {"params": [p for n, p in trainable if decays(n, p)], "weight_decay": weight_decay, "lr": lr},
        {"params": [p for n, p in trainable if not decays(n, p)], "weight_decay": 0.0, "lr": lr},
    ) if g["params"]]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
                   groups: list[dict] | None = None) -> torch.optim.AdamW:
    """Fused AdamW: one kernel for all parameters, and it can skip a step on the device.

    ``groups`` are ``{"named": [(name, param), ...], "lr": float}`` parts with their own
    learning rate (e.g. a slower encoder); by default the whole model at ``lr``.
    """
    parts = groups or [{"named": list(model.named_parameters()), "lr": lr}]
    param_groups = [g for part in parts for g in parameter_groups(part["named"], weight_decay, part["lr"])]
    if not param_groups:
        raise ValueError("no trainable parameters")
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=True)


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
