"""A checkpoint's layout without its numbers, as small JSON, and a checkpoint rebuilt from it.

A real checkpoint of even the tiny model is megabytes; what a format change can break is its
layout: the payload's keys, the state-dict names and shapes, the optimizer's and scheduler's
structure and the stored configuration. :func:`skeleton` keeps all of that and replaces every
tensor by its shape and dtype; :func:`rebuild` turns a skeleton back into a loadable checkpoint
with deterministic tensor values, the same on every version of the code, so two versions can be
compared on the outputs of the same weights.
"""

from __future__ import annotations

from typing import Any

import torch

TENSOR, INT_KEYS, TUPLE = "__tensor__", "__int_keys__", "__tuple__"


def skeleton(obj: Any) -> Any:
    """``obj`` (a checkpoint payload) with tensors as ``{__tensor__: shape, dtype}``; JSON-safe."""
    if isinstance(obj, torch.Tensor):
        return {TENSOR: list(obj.shape), "dtype": str(obj.dtype).removeprefix("torch.")}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: skeleton(v) for k, v in obj.items()}
        assert all(isinstance(k, int) for k in obj), list(obj)[:4]
        return {INT_KEYS: [[k, skeleton(v)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {TUPLE: [skeleton(v) for v in obj]}
    if isinstance(obj, list):
        return [skeleton(v) for v in obj]
    return obj


def _tensor(shape: list[int], dtype: str, index: int) -> torch.Tensor:
    """Tensor number ``index`` of a skeleton: small positive floats (valid as weights and as Adam's
    second moments), scalars 1 (optimizer step counts), the current RNG state for byte tensors."""
    kind = getattr(torch, dtype)
    if kind == torch.uint8:
        state = torch.get_rng_state()
        return state if list(state.shape) == shape else torch.zeros(shape, dtype=kind)
    if not kind.is_floating_point:
        return torch.zeros(shape, dtype=kind)
    if not shape:
        return torch.ones((), dtype=kind)
    generator = torch.Generator().manual_seed(index)
    return torch.randn(shape, generator=generator).abs_().mul_(0.02).to(kind)


def rebuild(skel: Any) -> Any:
    """The checkpoint a skeleton describes, every tensor filled by its position in the skeleton."""
    count = iter(range(1 << 30))

    def walk(node: Any) -> Any:
        if isinstance(node, dict) and TENSOR in node:
            return _tensor(node[TENSOR], node["dtype"], next(count))
        if isinstance(node, dict) and INT_KEYS in node:
            return {int(k): walk(v) for k, v in node[INT_KEYS]}
        if isinstance(node, dict) and TUPLE in node:
            return tuple(walk(v) for v in node[TUPLE])
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(skel)


def probe_input(events: int = 2, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw-looking (npho in photons, exponential with mean 400, time in s) for 4760 sensors, 2 % dead;
    from a seeded torch generator alone, so it does not change with the simulator."""
    g = torch.Generator().manual_seed(seed)
    npho = -400 * torch.log1p(-torch.rand(events, 4760, generator=g, dtype=torch.float64)).float() - 5
    time = torch.rand(events, 4760, generator=g) * 4e-8
    dead = torch.rand(events, 4760, generator=g) < 0.02
    npho[dead], time[dead] = 1e10, 1e10
    return npho, time


def probe_outputs(kind: str, model: torch.nn.Module) -> dict[str, list[float]]:
    """The model's outputs on :func:`probe_input` (the MAE with every fifth valid sensor hidden), as lists."""
    x, valid = model.normalizer(*probe_input())
    with torch.no_grad():
        if kind == "regressor":
            out = model(x, valid)
            return {task: value.double().flatten().tolist() for task, value in sorted(out.items())}
        hidden = valid[..., 0] & (torch.arange(4760) % 5 == 0)
        pred = model(x, valid, hidden=hidden).pred.double()  # (B, 4760, C)
        return {"pred_sum": pred.sum(dim=(1, 2)).tolist(), "pred_abs_sum": pred.abs().sum(dim=(1, 2)).tolist(),
                "pred_head": pred[:, :64].flatten().tolist()}
