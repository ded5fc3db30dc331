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
from xecmae.models.priors import PRIOR_FIT_ITERATIONS, PRIORS, classical_prior


@dataclass
class MAEOutput:
    pred: torch.Tensor  # (B, 4760, C) per-sensor reconstruction, normalized space
    hidden: torch.Tensor  # (B, 4760) bool, True = hidden from the encoder
    faces: dict[str, torch.Tensor]  # decoder outputs, e.g. inner (B, C, 93, 44), top (B, C, 73)


class XEC_MAE(EncoderModel):
    """Masked autoencoder over the 4760 sensors; the loss lives in :mod:`xecmae.train.losses`."""

    def __init__(self, normalizer: Normalizer, *, encoder_dim: int = 1024, decoder_dim: int = 128,
                 dim_feedforward: int | None = None, num_fusion_layers: int = 2, num_heads: int = 8,
                 dropout: float = 0.1, outer_mode: str = "finegrid", outer_fine_pool: tuple[int, int] | None = None,
                 predict_channels: tuple[str, ...] = ("npho", "time"), mask_ratio: float = 0.6,
                 time_mask_ratio_scale: float = 1.0, auto_channel_weight: bool = False,
                 freeze_encoder: bool = False, refine: bool = False, prior: str = "neighbour",
                 prior_fit_iterations: int = PRIOR_FIT_ITERATIONS):
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {prior!r}")
        if tuple(predict_channels) not in (("npho",), ("npho", "time")):
            raise ValueError(f"predict_channels must be ['npho'] or ['npho', 'time'], got {list(predict_channels)}")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}")
        self.normalizer = normalizer
        self.predict_channels = tuple(predict_channels)
        self.mask_ratio = mask_ratio
        self.time_mask_ratio_scale = time_mask_ratio_scale
        self.prior, self.prior_fit_iterations = prior, int(prior_fit_iterations)
        self.encoder = XECEncoder(normalizer, encoder_dim, dim_feedforward, num_fusion_layers, num_heads, dropout,
                                  outer_mode, outer_fine_pool)
        channels = len(self.predict_channels)
        shapes = self.encoder.faces.shapes
        self.decoders = nn.ModuleDict(
            {face: FaceDecoder(encoder_dim, decoder_dim, channels, shapes[face]) for face in RECT_FACES})
        self.decoders.update({face: GraphFaceDecoder(encoder_dim, decoder_dim, channels) for face in HEX_FACES})
        # the inpainter: a learned correction to a classical estimate from the visible sensors (the prior)
        self.refiners = nn.ModuleDict(
            {face: GridRefiner(channels, INPUT_CHANNELS) for face in RECT_FACES}
            | {face: HexRefiner(channels, INPUT_CHANNELS) for face in HEX_FACES}) if refine else None
        # homoscedastic weighting: one learned log-variance per predicted channel
        self.channel_log_var = nn.Parameter(torch.zeros(channels)) if auto_channel_weight else None
        # the face tensors are channels-last; kernels stored the same way get matching gradient layouts
        self.to(memory_format=torch.channels_last)
        self.set_encoder_frozen(freeze_encoder)  # the inpainter may train its decoders only

    def random_masking(self, valid: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return random_masking(valid, self.mask_ratio, self.time_mask_ratio_scale, generator)

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


def build_mae(cfg) -> XEC_MAE:
    """The MAE described by a :class:`xecmae.config.MAEConfig`."""
    m = cfg.model
    return XEC_MAE(cfg.normalizer(), encoder_dim=m.encoder_dim, decoder_dim=m.decoder_dim,
                   dim_feedforward=m.dim_feedforward, num_fusion_layers=m.num_fusion_layers, num_heads=m.num_heads,
                   dropout=m.dropout, outer_mode=m.outer_mode, outer_fine_pool=m.outer_fine_pool,
                   predict_channels=tuple(m.predict_channels), mask_ratio=m.mask_ratio,
                   time_mask_ratio_scale=cfg.training.time.mask_ratio_scale,
                   auto_channel_weight=cfg.training.auto_channel_weight,
                   freeze_encoder=getattr(m, "freeze_encoder", False), refine=getattr(m, "refine", False),
                   prior=getattr(m, "prior", "neighbour"),
                   prior_fit_iterations=getattr(m, "prior_fit_iterations", PRIOR_FIT_ITERATIONS))


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
