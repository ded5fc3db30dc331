"""Invalid-aware random masking, one argsort for the whole batch."""

from __future__ import annotations

import torch

from xecmae.models.spec import MaskingSpec


def random_masking(valid: torch.Tensor, masking: MaskingSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose the sensors to hide: (B, N, 2) validity -> (B, N) bool, True = hidden.

    Only sensors with a valid npho can be hidden (a dead sensor has no ground truth); each event
    hides ``int(n_valid * masking.mask_ratio)`` of them. With ``masking.time_mask_ratio_scale`` s > 1 a sensor with a
    valid time is s times as likely to be drawn (weighted sampling without replacement: the
    smallest keys ``Exp(1) / weight`` win).
    """
    maskable, scale = valid[..., 0], masking.time_mask_ratio_scale
    n_hide = (maskable.sum(dim=1).double() * masking.mask_ratio).floor().long()  # (B,), as Python's int()
    uniform = torch.rand(maskable.shape, generator=generator, device=valid.device)
    key = -torch.log1p(-uniform)  # Exp(1), finite
    if scale != 1.0:
        key = torch.where(valid[..., 1], key / scale, key)
    key = torch.where(maskable, key, torch.inf)
    order = key.argsort(dim=1)
    rank_hidden = torch.arange(maskable.shape[1], device=valid.device) < n_hide[:, None]  # (B, N) by rank
    return torch.zeros_like(maskable).scatter_(1, order, rank_hidden)


def hide(x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor, sentinel_npho: float,
         sentinel_time: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the sentinels into every channel of the hidden sensors and clear their validity.

    The (npho, time) sentinel pair is made on the device from Python numbers, not copied from
    the host at every step.
    """
    channel = torch.arange(x.shape[-1], device=x.device)
    sentinels = torch.where(channel == 0, sentinel_npho, sentinel_time).to(x.dtype)  # (C,)
    shown = ~hidden.unsqueeze(-1)  # (B, N, 1)
    return torch.where(shown, x, sentinels), valid & shown
