"""A checkpoint carries its architecture: the encoder shape of a run comes from the checkpoint it starts from.

A run that starts from a checkpoint (``checkpoint.resume_from``) takes the encoder keys
(:data:`ENCODER_KEYS`) the checkpoint was made with; a value the user gave explicitly (in the
YAML or as a flag, directly or through ``model.size``) that contradicts the checkpoint is refused
with one line naming both. Bare encoder weights carry no configuration: their ``encoder_dim``,
``dim_feedforward`` and ``num_fusion_layers`` are read off the tensor shapes.

A checkpoint written by the original implementation that the specification documents has the
same top-level container (``model_state_dict`` and friends) but other layer and configuration
names; it is recognised here and refused with a line that says what it is.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from xecmae.config import ConfigError, RunConfig
from xecmae.configload import validate
from xecmae.errors import UserError
from xecmae.models.spec import EncoderConfig, shape_keys
from xecmae.sizes import MODEL_SIZES

log = logging.getLogger(__name__)

ENCODER_KEYS = shape_keys(EncoderConfig)
"""The encoder's fields that change its weights (marked in :class:`~xecmae.models.spec.EncoderConfig`)."""
OUR_ENCODER_PARTS = ("backbones.", "face_embedding", "fusion.", "norm.")
"""First components of xecmae's encoder parameter names (after ``encoder.``)."""
STATE_KEYS = ("model_state_dict", "state_dict", "model")


def _encoder_keys(state: dict) -> list[str]:
    return [k.removeprefix("encoder.") for k in state if isinstance(k, str) and k.startswith("encoder.")]


def original_layout(ckpt: Any) -> str | None:
    """Why ``ckpt`` looks like a checkpoint of the original implementation, or None when it does not.

    Signs: a state dict whose ``encoder.`` tensors have none of xecmae's encoder names, or an
    xecmae-style state dict with a configuration that lacks xecmae's ``model`` section.
    """
    if not isinstance(ckpt, dict):
        return None
    state = next((ckpt[k] for k in STATE_KEYS if isinstance(ckpt.get(k), dict)), None)
    if state is None or not state:
        return None
    encoder = _encoder_keys(state)
    if encoder and not any(k.startswith(OUR_ENCODER_PARTS) for k in encoder):
        return f"its encoder layers have other names (e.g. 'encoder.{encoder[0]}')"
    config = ckpt.get("config")
    if encoder and isinstance(config, dict) and not isinstance(config.get("model"), dict):
        shown = ", ".join(sorted(map(str, config))[:4])
        return f"its configuration has no 'model' section (keys: {shown}{', ...' if len(config) > 4 else ''})"
    return None


def refuse_original_layout(ckpt: Any, path: str) -> None:
    """Raise a one-line :class:`UserError` for a checkpoint of the original implementation."""
    reason = original_layout(ckpt)
    if reason:
        raise UserError(f"{path}: a checkpoint of the original implementation, not of xecmae ({reason}); "
                        "xecmae cannot load its weights: pre-train again with `xecmae pretrain`, or fine-tune "
                        "without --resume_from")


def saved_architecture(ckpt: dict, kind: str) -> dict[str, Any]:
    """The encoder keys a checkpoint was made with (only those it tells)."""
    if kind != "encoder":
        model = (ckpt.get("config") or {}).get("model") or {}
        return {key: model[key] for key in ENCODER_KEYS if key in model}
    return inferred_architecture(ckpt)


def inferred_architecture(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """encoder_dim, dim_feedforward and num_fusion_layers of bare encoder weights, from tensor shapes."""
    state = {k.removeprefix("encoder."): v for k, v in state.items()}
    out: dict[str, int] = {}
    if "face_embedding" in state:
        out["encoder_dim"] = int(state["face_embedding"].shape[-1])
    layers = {int(m.group(1)) for k in state if (m := re.match(r"fusion\.layers\.(\d+)\.", k))}
    if layers:
        out["num_fusion_layers"] = max(layers) + 1
    if "fusion.layers.0.linear1.weight" in state:
        out["dim_feedforward"] = int(state["fusion.layers.0.linear1.weight"].shape[0])
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def with_architecture(cfg: RunConfig, saved: dict[str, Any], path: str) -> RunConfig:
    """``cfg`` with the checkpoint's encoder keys; explicit contradicting values are refused."""
    model = cfg.model
    explicit = model.model_fields_set
    problems, adopted = [], {}
    for key, theirs in saved.items():
        ours = getattr(model, key)
        if _plain(ours) == _plain(theirs):
            continue
        if key in explicit:
            problems.append(f"model.{key}: checkpoint {_plain(theirs)!r}, configuration {_plain(ours)!r}")
        elif "size" in explicit and key in MODEL_SIZES[model.size]:
            problems.append(f"model.{key}: checkpoint {_plain(theirs)!r}, configuration {_plain(ours)!r} "
                            f"(from model.size {model.size!r})")
        else:
            adopted[key] = _plain(theirs)
    if problems:
        raise ConfigError(f"{path} was made with another encoder ({'; '.join(problems)}); drop the value "
                          "from the flags and the YAML to take the checkpoint's")
    if not adopted:
        return cfg
    log.info("encoder shape from %s: %s", path, ", ".join(f"{k} {v}" for k, v in adopted.items()))
    raw = cfg.model_dump(mode="json")
    raw["model"].update(adopted)
    return validate(raw, type(cfg))


def adopt_architecture(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the encoder shape of ``checkpoint.resume_from`` (unchanged without one)."""
    from xecmae.train.checkpoint import load_checkpoint

    path = cfg.checkpoint.resume_from
    if not path:
        return cfg
    ckpt = load_checkpoint(path)
    return with_architecture(cfg, saved_architecture(ckpt, checkpoint_kind(ckpt, str(path))), str(path))


def checkpoint_kind(ckpt: Any, path: str = "checkpoint") -> str:
    """``regressor`` | ``mae`` | ``inpainter`` | ``encoder`` (bare weights)."""
    refuse_original_layout(ckpt, path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model_state_dict"), dict):
        keys = list(ckpt["model_state_dict"])
        if any(k.startswith("heads.") for k in keys):
            return "regressor"
        if any(k.startswith("encoder.") for k in keys):
            return "inpainter" if ckpt.get("kind") == "inpainter" else "mae"
    elif isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return "encoder"
    raise UserError(f"{path}: not a checkpoint xecmae can start from (expected a regression or MAE checkpoint "
                    "with a model_state_dict, or bare encoder weights)")
