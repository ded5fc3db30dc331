"""Models as a C++ reconstruction calls them: raw sensors in, physical quantities out.

Every graph takes the two raw per-event arrays of the input files, in the sensor order of the
files (index = sensor id 0..4759):

- ``npho`` float32 (B, 4760): photons; a dead channel carries 1e10 (NaN and inf work too),
- ``relative_time`` float32 (B, 4760): seconds; dead 1e10,

and applies the checkpoint's own normalisation inside (validity, the npho map, the time
shift and scale, the sentinels), so nothing of the training set-up has to be re-implemented
by the caller. Outputs:

- encoder: ``tokens`` (B, 6, D), one token per face (inner, us, ds, outer, top, bottom);
- regressor: one output per task, decoded to physical units: ``position`` (B, 3) (u, v, w) cm,
  ``energy`` (B, 1) GeV, ``timing`` (B, 1) ns, ``angle`` (B, 2) (theta, phi) deg; then, for every
  task trained with the Gaussian NLL, ``{task}_sigma`` of the same shape and units;
- inpainter: ``npho_filled`` (B, 4760) photons and ``relative_time_filled`` (B, 4760) s (the input
  with every channel dead in npho replaced by the prediction; healthy channels unchanged) and
  ``filled`` (B, 4760) bool.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from xecmae.detector.geometry import FACE_NAMES
from xecmae.detector.neighbours import dense_weights, neighbour_weights
from xecmae.models.regressor import LOG_VAR, TASK_TARGETS

INPUT_NAMES = ("npho", "relative_time")
INPUT_UNITS = {"npho": "photons, float32 (batch, 4760), sensor id = index; dead channel 1e10",
               "relative_time": "seconds, float32 (batch, 4760), sensor id = index; dead channel 1e10"}


class EncoderGraph(nn.Module):
    """(npho, relative_time) raw -> tokens (B, 6, D)."""

    kind = "encoder"

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.normalizer = encoder.faces.normalizer

    @property
    def output_units(self) -> dict[str, str]:
        return {"tokens": f"float32 (batch, 6, {self.encoder.encoder_dim}), faces {', '.join(FACE_NAMES)}"}

    def forward(self, npho: torch.Tensor, relative_time: torch.Tensor) -> torch.Tensor:
        x, valid = self.normalizer(npho, relative_time)  # (B, 4760, 2) each
        return self.encoder(x, valid)  # (B, 6, D)


class RegressorGraph(nn.Module):
    """(npho, relative_time) raw -> one tensor per task in physical units."""

    kind = "regressor"

    def __init__(self, regressor: nn.Module):
        super().__init__()
        self.regressor = regressor
        self.tasks = tuple(regressor.tasks)
        self.gaussian_tasks = tuple(getattr(regressor, "gaussian_tasks", ()))
        for task in self.tasks:
            spec = TASK_TARGETS[task]
            self.register_buffer(f"scale_{task}", torch.tensor(spec.scale), persistent=False)
            self.register_buffer(f"offset_{task}", torch.tensor(spec.offset), persistent=False)

    @property
    def output_units(self) -> dict[str, str]:
        text = {"position": "cm, float32 (batch, 3): u, v, w", "energy": "GeV, float32 (batch, 1)",
                "timing": "ns, float32 (batch, 1)", "angle": "deg, float32 (batch, 2): theta, phi"}
        return {task: text[task] for task in self.tasks} | {f"{task}_sigma": f"per-event sigma of {task}: {text[task]}"
                                                            for task in self.gaussian_tasks}

    def forward(self, npho: torch.Tensor, relative_time: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, valid = self.regressor.normalizer(npho, relative_time)
        out = self.regressor(x, valid)  # {task: (B, size)} scaled
        values = tuple(out[t].float() * getattr(self, f"scale_{t}") + getattr(self, f"offset_{t}") for t in self.tasks)
        sigmas = tuple(torch.exp(0.5 * out[t + LOG_VAR].float()) * getattr(self, f"scale_{t}")
                       for t in self.gaussian_tasks)
        return values + sigmas


class InpainterGraph(nn.Module):
    """(npho, relative_time) raw -> the same with dead channels filled, and which were filled."""

    kind = "inpainter"
    output_units: ClassVar[dict[str, str]] = {
        "npho_filled": "photons, float32 (batch, 4760)", "relative_time_filled": "seconds, float32 (batch, 4760)",
        "filled": "bool (batch, 4760), true = the value is the model's"}

    def __init__(self, mae: nn.Module):
        super().__init__()
        self.mae = mae
        if mae.refiners is not None:  # the neighbour weights as the exported graph holds them, built eagerly
            dense_weights(neighbour_weights(dtype=torch.float32))

    def forward(self, npho: torch.Tensor, relative_time: torch.Tensor) -> tuple[torch.Tensor, ...]:
        norm = self.mae.normalizer
        x, valid = norm(npho, relative_time)
        dead = ~valid[..., 0]  # (B, 4760)
        pred = self.mae(x, valid, hidden=dead).pred  # (B, 4760, C) normalised
        npho_out = torch.where(dead, norm.npho_inverse(pred[..., 0]), npho)
        time_out = torch.where(dead, norm.time_inverse(pred[..., 1]), relative_time) if pred.shape[-1] > 1 \
            else relative_time
        return npho_out, time_out, dead


def output_names(graph: nn.Module) -> tuple[str, ...]:
    return tuple(graph.output_units)


def make_graph(trained, part: str) -> nn.Module:
    """The graph of ``part`` (encoder | regressor | inpainter) of a trained model."""
    if part == "encoder":
        return EncoderGraph(trained.model.encoder).eval()
    if part == "regressor":
        return RegressorGraph(trained.model).eval()
    return InpainterGraph(trained.model).eval()
