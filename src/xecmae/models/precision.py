"""Layers that stay in fp32 under bf16 autocast.

bf16 keeps 8 bits of mantissa: a value near 1 moves in steps of 0.78%, a position of 30 cm in
steps of up to 2 mm. The layers whose outputs are physics quantities (the regression heads,
the decoders' last layers that write npho and time) therefore run in fp32; they are a few
percent of the arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn


def in_fp32(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` computed in fp32 whether or not autocast is on (a no-op for an fp32 run)."""
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float())
