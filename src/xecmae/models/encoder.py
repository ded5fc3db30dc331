"""XECEncoder: per-face backbones and a Transformer that fuses the six face tokens.

Shared by the MAE, the regressor and the inpainter. Input is the normalized sensor vector with
its validity; output is one token per face, in the order of ``FACE_NAMES``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xecmae.detector.geometry import FACE_NAMES, HEX_FACES, RECT_FACES
from xecmae.detector.normalize import Normalizer
from xecmae.models.blocks import ChannelsFirstLayerNorm, ConvNeXtBlock, HexNeXtBlock
from xecmae.models.faces import INPUT_CHANNELS, FaceMapper
from xecmae.models.spec import EncoderConfig

HEX_DIM = 96
TOKEN_GRID = 4  # every grid face is pooled to 4 x 4 before flattening


class ConvNeXtFaceEncoder(nn.Module):
    """ConvNeXt V2 backbone for one grid face: (B, 4, H, W) -> (B, encoder_dim)."""

    def __init__(self, encoder_dim: int):
        super().__init__()
        width = encoder_dim // 32
        self.stem = nn.Sequential(nn.Conv2d(INPUT_CHANNELS, width, kernel_size=4, stride=1, padding=1),
                                  ChannelsFirstLayerNorm(width))
        self.stage1 = nn.Sequential(*[ConvNeXtBlock(width) for _ in range(2)])
        self.downsample = nn.Sequential(ChannelsFirstLayerNorm(width),
                                        nn.Conv2d(width, 2 * width, kernel_size=2, stride=2))
        self.stage2 = nn.Sequential(*[ConvNeXtBlock(2 * width) for _ in range(3)])

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) -> the stage-2 map (B, 2C, H', W') before pooling (what a localising head reads)."""
        return self.stage2(self.downsample(self.stage1(self.stem(x))))

    def token(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, 2C, H', W') -> (B, 32 C) = (B, encoder_dim)."""
        return F.adaptive_avg_pool2d(feature_map, TOKEN_GRID).flatten(1)  # (B, 2C, 4, 4) -> (B, 32 C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.token(self.feature_map(x))


class HexNeXtFaceEncoder(nn.Module):
    """Graph backbone for one PMT plane: (B, 73, 4) -> (B, encoder_dim)."""

    def __init__(self, encoder_dim: int, depth: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(INPUT_CHANNELS, HEX_DIM), nn.LayerNorm(HEX_DIM), nn.GELU())
        self.blocks = nn.Sequential(*[HexNeXtBlock(HEX_DIM) for _ in range(depth)])
        self.head = nn.Sequential(nn.LayerNorm(HEX_DIM), nn.Linear(HEX_DIM, encoder_dim))

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 73, 4) -> per-node features (B, 73, 96) before the mean over nodes."""
        return self.blocks(self.stem(x))

    def token(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, 73, 96) -> (B, encoder_dim)."""
        return self.head(feature_map.mean(dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.token(self.feature_map(x))


class XECEncoder(nn.Module):
    """Sensors -> six face tokens: (B, 4760, 2) values + validity -> (B, 6, encoder_dim).

    Inputs the model must not see (dead, dim-time or hidden by masking) carry the sentinels
    *and* a missing flag per channel, so the encoder always knows what is hidden. The shape comes
    whole from ``spec`` (any :class:`~xecmae.models.spec.EncoderConfig`, e.g. a model section).
    """

    def __init__(self, normalizer: Normalizer, spec: EncoderConfig):
        super().__init__()
        encoder_dim = spec.encoder_dim  # a positive multiple of 32, resolved from spec.size (checked there)
        self.encoder_dim = encoder_dim
        self.faces = FaceMapper(normalizer, spec)
        self.backbones = nn.ModuleDict({face: ConvNeXtFaceEncoder(encoder_dim) for face in RECT_FACES})
        self.backbones.update({face: HexNeXtFaceEncoder(encoder_dim) for face in HEX_FACES})
        self.face_embedding = nn.Parameter(torch.zeros(1, len(FACE_NAMES), encoder_dim))
        nn.init.trunc_normal_(self.face_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(encoder_dim, spec.num_heads, spec.dim_feedforward, spec.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, spec.num_fusion_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(encoder_dim)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        faces = self.faces.to_faces(x.float(), valid)
        tokens = torch.stack([self.backbones[f](faces[f]) for f in FACE_NAMES], dim=1)  # (B, 6, D)
        return self.fuse(tokens)  # (B, 6, D)

    def fuse(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 6, D) per-face tokens -> (B, 6, D) fused by the Transformer."""
        return self.norm(self.fusion(tokens + self.face_embedding))

    def forward_maps(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The fused tokens (B, 6, D) and every face's feature map before pooling: grids (B, 2C, H', W'),
        top/bottom (B, 73, 96). Same weights and same tokens as :meth:`forward`."""
        faces = self.faces.to_faces(x.float(), valid)
        maps = {f: self.backbones[f].feature_map(faces[f]) for f in FACE_NAMES}
        tokens = torch.stack([self.backbones[f].token(maps[f]) for f in FACE_NAMES], dim=1)  # (B, 6, D)
        return self.fuse(tokens), maps


class EncoderModel(nn.Module):
    """A model built around an :class:`XECEncoder` (the MAE, the regressor), which can be frozen."""

    encoder: XECEncoder
    encoder_frozen: bool = False

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Fixed encoder weights; in training mode the encoder then stays in eval mode too."""
        self.encoder_frozen = frozen
        self.encoder.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> EncoderModel:
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()  # a frozen encoder also keeps its dropout off
        return self
