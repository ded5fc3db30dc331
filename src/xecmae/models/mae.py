"""XEC_MAE: invalid-aware masking, the shared encoder, and one light decoder per face."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from xecmae.detector.geometry import FACE_NAMES, HEX_FACES, RECT_FACES
from xecmae.detector.normalize import Normalizer
from xecmae.models.decoders import FaceDecoder, GraphFaceDecoder, GridRefiner, HexRefiner
from xecmae.models.encoder import EncoderModel, XECEncoder
from xecmae.models.faces import INPUT_CHANNELS
from xecmae.models.masking import hide, random_masking
from xecmae.models.priors import classical_prior
from xecmae.models.spec import InpainterModelConfig, MAEModelConfig, MaskingSpec


@dataclass
class MAEOutput:
    pred: torch.Tensor  # (B, 4760, C) per-sensor reconstruction, normalized space
    hidden: torch.Tensor  # (B, 4760) bool, True = hidden from the encoder
    faces: dict[str, torch.Tensor]  # decoder outputs, e.g. inner (B, C, 93, 44), top (B, C, 73)


class XEC_MAE(EncoderModel):
    """Masked autoencoder over the 4760 sensors; the loss lives in :mod:`xecmae.train.losses`.

    ``spec`` is the model section whole: the encoder's shape, ``decoder_dim`` and the predicted
    channels; an :class:`~xecmae.models.spec.InpainterModelConfig` adds the refiners over a
    classical prior and may freeze the encoder. ``masking`` says how many sensors are hidden and
    which (the model reads the ratio there only; :func:`masking_spec` takes it from the section);
    ``auto_channel_weight`` (``training.auto_channel_weight``) adds one learned
    log-variance per predicted channel.
    """

    def __init__(self, normalizer: Normalizer, spec: MAEModelConfig, masking: MaskingSpec, *,
                 auto_channel_weight: bool = False):
        super().__init__()
        inpainter = spec if isinstance(spec, InpainterModelConfig) else None
        refine = inpainter is not None and inpainter.refine
        self.normalizer = normalizer
        self.masking = masking
        self.predict_channels = tuple(spec.predict_channels)
        self.prior = inpainter.prior if inpainter else None  # used by the refiners only
        self.prior_fit_iterations = inpainter.prior_fit_iterations if inpainter else 0
        self.encoder = XECEncoder(normalizer, spec)
        channels = len(self.predict_channels)
        shapes = self.encoder.faces.shapes
        dims = spec.encoder_dim, spec.decoder_dim
        self.decoders = nn.ModuleDict({face: FaceDecoder(*dims, channels, shapes[face]) for face in RECT_FACES})
        self.decoders.update({face: GraphFaceDecoder(*dims, channels) for face in HEX_FACES})
        # the inpainter: a learned correction to a classical estimate from the visible sensors (the prior)
        self.refiners = nn.ModuleDict(
            {face: GridRefiner(channels, INPUT_CHANNELS) for face in RECT_FACES}
            | {face: HexRefiner(channels, INPUT_CHANNELS) for face in HEX_FACES}) if refine else None
        # homoscedastic weighting: one learned log-variance per predicted channel
        self.channel_log_var = nn.Parameter(torch.zeros(channels)) if auto_channel_weight else None
        # the face tensors are channels-last; kernels stored the same way get matching gradient layouts
        self.to(memory_format=torch.channels_last)
        self.set_encoder_frozen(inpainter is not None and inpainter.freeze_encoder)  # may train the decoders only

    @property
    def mask_ratio(self) -> float:
        """Read-only here: a new ratio goes to ``masking.mask_ratio``, where it is checked."""
        return self.masking.mask_ratio

    def random_masking(self, valid: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_masking(valid, self.masking, generator)

    def forward_encoder(self, x: torch.Tensor, valid: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        norm = self.normalizer
        x_in, valid_in = hide(x, valid, hidden, norm.sentinel_npho, norm.sentinel_time)
        return self.encoder(x_in, valid_in)  # (B, 6, D)

    def forward_decoder(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        return {face: self.decoders[face](tokens[:, k]) for k, face in enumerate(FACE_NAMES)}  # token k = face k

    def forward(self, x: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None = None,
                hidden: torch.Tensor | None = None) -> MAEOutput:
        """(B, 4760, 2) normalized input and validity -> reconstruction of every sensor.

        ``hidden`` overrides the random mask (e.g. to hide exactly the dead channels).
        """
        if hidden is None:
            hidden = self.random_masking(valid, generator)
        faces = self.forward_decoder(self.forward_encoder(x, valid, hidden))
        mapper = self.encoder.faces
        if self.refiners is None:
            with torch.autocast(x.device.type, enabled=False):
                pred = mapper.to_sensors({k: v.float() for k, v in faces.items()})
            return MAEOutput(pred, hidden, faces)
        norm = self.normalizer
        x_in, valid_in = hide(x, valid, hidden, norm.sentinel_npho, norm.sentinel_time)
        with torch.autocast(x.device.type, enabled=False):
            estimate = self.prior_estimate(x_in, valid_in)  # (B, 4760, C)
            estimate_faces, face_input = mapper.to_grids(estimate), mapper.to_faces(x_in.float(), valid_in)
        corrections = {f: self.refiners[f](out, face_input[f], estimate_faces[f]) for f, out in faces.items()}
        with torch.autocast(x.device.type, enabled=False):
            pred = estimate + mapper.to_sensors({k: v.float() for k, v in corrections.items()})
        return MAEOutput(pred, hidden, {f: estimate_faces[f] + corrections[f].float() for f in faces})

    def prior_estimate(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, 4760, C) the configured classical estimate from the visible sensors (:mod:`xecmae.models.priors`)."""
        return classical_prior(x, valid, self.normalizer, self.prior, len(self.predict_channels),
                               self.prior_fit_iterations)


def masking_spec(cfg) -> MaskingSpec:
    """The masking of an MAE or inpainter run: ``model.mask_ratio`` and ``training.time.mask_ratio_scale``."""
    return MaskingSpec(mask_ratio=cfg.model.mask_ratio, time_mask_ratio_scale=cfg.training.time.mask_ratio_scale)


def build_mae(cfg) -> XEC_MAE:
    """The MAE (or inpainter) of a :class:`xecmae.config.MAEConfig` or :class:`~xecmae.config.InpainterConfig`."""
    return XEC_MAE(cfg.normalizer(), cfg.model, masking_spec(cfg), auto_channel_weight=cfg.training.auto_channel_weight)


def parameter_summary(model: nn.Module) -> str:
    """Parameters per part (the encoder's and the decoders' per face), for a model summary."""
    rows: list[tuple[str, int]] = []

    def count(module: nn.Module, recurse: bool = True) -> int:
        return sum(p.numel() for p in module.parameters(recurse=recurse))

    for name, child in model.named_children():
        parts = list(child.named_children())
        if not parts:
            rows.append((name, count(child)))
            continue
        rows += [(f"{name}.{sub}", count(part)) for sub, part in parts]
        rows.append((f"{name} (own)", count(child, recurse=False)))
    rows.append(("(own)", count(model, recurse=False)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:{width}s} {n:>12,d}" for name, n in rows if n]
    lines.append(f"{'total':{width}s} {count(model):>12,d}")
    return "\n".join(lines)
