"""A trained model from its checkpoint, ready for inference: rebuilt as it was trained
(:mod:`xecmae.train.rebuild`: kind checked, architecture and normalisation from the checkpoint,
EMA weights preferred), its sigma calibration applied, on the device, in eval mode.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xecmae.config import RunConfig
from xecmae.detector.normalize import Normalizer
from xecmae.errors import UserError
from xecmae.train.rebuild import KIND_TEXT, rebuild

log = logging.getLogger(__name__)

SIGMA_CALIBRATION = "sigma_calibration"
"""Checkpoint key of a regressor's sigma calibration (:mod:`xecmae.apps.sigmacal`):
``{"scales": {task: [[per component] per energy bin]}, "energy_edges_gev": [...], "events": N, "inputs": [...],
"fiducial_cuts_cm": {...}}`` (no edges: one bin)."""


@dataclass
class Trained:
    """A model rebuilt from a checkpoint, in eval mode."""

    path: str
    kind: str  # regressor | mae | inpainter
    model: nn.Module
    cfg: RunConfig
    ema: bool  # the EMA weights were loaded
    epoch: int | None
    step: int | None
    sigma_calibration: dict[str, Any] | None = None  # applied to the model's sigma (a regressor's)

    @property
    def normalizer(self) -> Normalizer:
        return self.model.normalizer

    def describe(self) -> dict[str, Any]:
        """Plain facts about the checkpoint, for metadata of what the model writes."""
        return {"checkpoint": str(Path(self.path).resolve()), "model_kind": self.kind,
                "weights": "ema" if self.ema else "raw", "epoch": -1 if self.epoch is None else int(self.epoch),
                "step": -1 if self.step is None else int(self.step),
                "sigma_calibration": (json.dumps({k: self.sigma_calibration.get(k, [])
                                                  for k in ("scales", "energy_edges_gev")}, sort_keys=True)
                                      if self.sigma_calibration else "none")}


def check_run_options(chunk_events: int, batch_size: int, device: str) -> None:
    """The options of a pass over files that can be refused before any model is loaded."""
    if chunk_events <= 0 or batch_size <= 0:
        raise UserError(f"--chunk ({chunk_events}) and --batch ({batch_size}) must be positive numbers of events")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no GPU is visible to this process; use --device cpu")


def load_trained(path: str | Path, kinds: tuple[str, ...], purpose: str,
                 device: str | torch.device = "cpu") -> Trained:
    """The model of checkpoint ``path``, which must be one of ``kinds`` (else one line saying what it is)."""
    path = str(path)
    rebuilt = rebuild(path, kinds, purpose)
    model, ckpt = rebuilt.model, rebuilt.checkpoint
    calibration = ckpt.get(SIGMA_CALIBRATION)
    if calibration:
        try:
            model.calibrate_sigma(calibration["scales"], calibration.get("energy_edges_gev", []))
        except (ValueError, KeyError, AttributeError) as exc:
            raise UserError(f"{path}: its sigma calibration does not fit its model: {exc}") from exc
    model.to(device).eval()
    log.info("%s: %s checkpoint, %s weights, epoch %s", path, KIND_TEXT[rebuilt.kind],
             "EMA" if rebuilt.ema else "raw", ckpt.get("epoch"))
    return Trained(path, rebuilt.kind, model, rebuilt.cfg, rebuilt.ema, ckpt.get("epoch"), ckpt.get("step"),
                   calibration or None)
