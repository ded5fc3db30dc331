"""The dead-channel inpainter: the MAE's architecture, trained to fill a few missing sensors.

It usually starts from an MAE checkpoint (``checkpoint.resume_from``): encoder and decoders when
they fit the configured model, the encoder alone otherwise; ``model.freeze_encoder`` then trains
the decoders only. Its default mask ratio is 0.05, about the share of sensors a real run loses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import nn

from xecmae.config import InpainterConfig
from xecmae.models import build_mae
from xecmae.train.architecture import adopt_architecture
from xecmae.train.engine import RunSpec, fit
from xecmae.train.finetune import encoder_lr_groups
from xecmae.train.hooks import Hook
from xecmae.train.initialize import check_compatible, checkpoint_kind, init_encoder, preferred_weights
from xecmae.train.pretrain import mae_objective, prediction_report

log = logging.getLogger(__name__)


def init_inpainter(cfg: InpainterConfig):
    def init(model: nn.Module, ckpt: dict, path: str) -> None:
        kind = checkpoint_kind(ckpt, path)
        if kind in ("mae", "inpainter"):
            check_compatible(ckpt.get("config"), cfg, path)
            state, use_ema = preferred_weights(ckpt)
            mine = model.state_dict()
            shared = {k: v for k, v in state.items() if k in mine and not k.startswith("refiners.")}
            if set(shared) == {k for k in mine if not k.startswith("refiners.")} and all(
                    v.shape == mine[k].shape for k, v in shared.items()):
                model.load_state_dict(shared | {k: v for k, v in mine.items() if k not in shared})
                log.info("loaded encoder and decoders from %s (%s weights)%s", path, "EMA" if use_ema else "raw",
                         "; the refiners start from zero" if model.refiners is not None and kind == "mae" else "")
                return
            log.info("%s: decoders do not fit the configured model; loading the encoder only", path)
        init_encoder(model, ckpt, path, cfg)

    return init


def inpaint(cfg: InpainterConfig, hooks: Sequence[Hook] = ()) -> Path:
    """Train the inpainter; returns the run directory (the encoder shape from ``checkpoint.resume_from``)."""
    cfg = adopt_architecture(cfg)
    return fit(cfg, RunSpec(kind="inpainter", build_model=build_mae, objective=mae_objective(cfg),
                            init_from=init_inpainter(cfg), param_groups=encoder_lr_groups,
                            make_report=prediction_report("inpainter")), hooks)
