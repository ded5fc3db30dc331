"""The settings a run applies to its accelerator, in one place.

On a GPU: cuDNN autotuning (every batch has the same shapes, so the fastest kernels are chosen
once, at the first step), TF32 matrix products for fp32 runs (bf16 runs use bf16 products), and
DDP options for a model whose graph and buffers never change. ``training.deterministic`` trades
speed for repeatability: deterministic kernels wherever PyTorch has them, and a warning where
it has none. On CUDA the backward passes of ``adaptive_avg_pool2d`` (the encoder's token pooling)
and of bilinear interpolation (the face decoders) add with atomics in no fixed order, so a
resumed run equals an uninterrupted one bit for bit on the CPU only, on a GPU to rounding.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

log = logging.getLogger(__name__)

CUBLAS_DETERMINISTIC = ":4096:8"  # cuBLAS workspace setting its deterministic mode needs


@contextmanager
def accelerator_settings(device: torch.device, *, amp: bool, deterministic: bool = False
                         ) -> Iterator[dict[str, object]]:
    """Within the block, the settings for a run on ``device``; yields what was set. They are
    process-wide, so the previous ones come back afterwards (a run inside a longer process)."""
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.benchmark, cudnn.deterministic, torch.get_float32_matmul_precision())
    applied: dict[str, object] = {}
    try:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)  # read when cuBLAS starts
            torch.use_deterministic_algorithms(True, warn_only=True)
            applied["deterministic_algorithms"] = True
        if device.type == "cuda":
            cudnn.benchmark, cudnn.deterministic = not deterministic, deterministic
            applied["cudnn_benchmark"] = not deterministic
            if not amp:
                torch.set_float32_matmul_precision("high")  # TF32 products: fp32 range, 10-bit mantissa
                applied["float32_matmul_precision"] = "high"
        if applied:
            log.info("accelerator settings: %s", ", ".join(f"{k}={v}" for k, v in applied.items()))
        yield applied
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.benchmark, cudnn.deterministic = saved[2], saved[3]
        torch.set_float32_matmul_precision(saved[4])


def distributed_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DDP with the options this project's models allow.

    Gradients are views into the all-reduce buckets (no second copy of them); the buffers are
    constants (the sensor-to-face maps, the PMT lattice), so they are not broadcast at every
    forward pass. ``static_graph`` is not used: the MAE returns a dataclass, which DDP's
    static-graph mode does not look into, and its first step then all-reduces no gradient at
    all (the ranks drift apart; the two-rank tests catch it).
    """
    ddp = torch.nn.parallel.DistributedDataParallel
    # newer PyTorch names the per-forward buffer broadcast forward_sync_buffers
    no_buffer_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
        ddp.__init__).parameters else {"broadcast_buffers": False}
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, gradient_as_bucket_view=True,
               **no_buffer_sync)
