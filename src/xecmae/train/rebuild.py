"""A model rebuilt from its checkpoint: kind checked, architecture and normalisation its own.

Everything that shapes the model (encoder size, tasks, normalisation, time threshold) is read
from the configuration stored in the checkpoint, never from flags, so a checkpoint always
rebuilds the model it was trained as. EMA weights are preferred when the run kept them. The
inference loader (:func:`xecmae.apps.trained.load_trained`) and training with a frozen helper
model (:mod:`xecmae.train.deadtraining`'s filler) both start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from xecmae.config import SCHEMAS, RunConfig
from xecmae.configload import validate
from xecmae.errors import UserError
from xecmae.train.checkpoint import load_checkpoint
from xecmae.train.initialize import checkpoint_kind, load_weights, preferred_weights

KIND_TEXT = {"regressor": "regressor", "mae": "MAE", "inpainter": "inpainter", "encoder": "bare encoder weights"}


@dataclass
class Rebuilt:
    """A model with its checkpoint's weights (training mode, on the CPU) and what it came from."""

    kind: str  # regressor | mae | inpainter
    model: nn.Module
    cfg: RunConfig
    ema: bool  # the EMA weights were loaded
    checkpoint: dict[str, Any]


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiouAEIMU' else 'a'} {noun}"


def _build(kind: str, cfg: RunConfig) -> nn.Module:
    if kind == "regressor":
        from xecmae.models.regressor import build_regressor

        return build_regressor(cfg)
    from xecmae.models import build_mae

    return build_mae(cfg)


def rebuild(path: str | Path, kinds: tuple[str, ...], purpose: str) -> Rebuilt:
    """The model of checkpoint ``path``, which must be one of ``kinds`` (else one line saying what it is)."""
    path = str(path)
    ckpt = load_checkpoint(path)
    kind = checkpoint_kind(ckpt, path)
    if kind not in kinds:
        wanted = " or ".join(KIND_TEXT[k] for k in kinds)
        raise UserError(f"{path} is {_a(KIND_TEXT[kind])} checkpoint; {purpose} needs {_a(wanted)} checkpoint")
    if not isinstance(ckpt.get("config"), dict):
        raise UserError(f"{path}: the checkpoint has no configuration, so its model cannot be rebuilt")
    cfg = validate(ckpt["config"], SCHEMAS[kind])
    model = _build(kind, cfg)
    state, ema = preferred_weights(ckpt)
    load_weights(model, state, path, "model")
    return Rebuilt(kind, model, cfg, ema, ckpt)
