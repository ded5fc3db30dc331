"""Face-specific decoders: one latent token -> that face's reconstruction.

Deliberately light (the specification: a small decoder forces the encoder to learn more).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xecmae.models.blocks import HexNeXtBlock
from xecmae.models.precision import in_fp32


class FaceDecoder(nn.Module):
    """Token (B, D) -> (B, C, H, W): Linear to 2d x 4 x 4, three transposed convolutions, bilinear resize.

    With decoder_dim d = 128 the channels run 256 -> 128 -> 64 -> C over 4 -> 8 -> 16 -> 16 pixels.
    """

    def __init__(self, encoder_dim: int, decoder_dim: int, out_channels: int, shape: tuple[int, int]):
        super().__init__()
        self.shape = tuple(shape)
        self.width = 2 * decoder_dim
        self.project = nn.Linear(encoder_dim, self.width * 16)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(self.width, decoder_dim, kernel_size=4, stride=2, padding=1), nn.GELU(),  # 4 -> 8
            nn.ConvTranspose2d(decoder_dim, decoder_dim // 2, kernel_size=4, stride=2, padding=1), nn.GELU(),  # -> 16
            nn.ConvTranspose2d(decoder_dim // 2, out_channels, kernel_size=3, stride=1, padding=1),  # 16 -> 16
        )

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        x = self.project(token).view(-1, self.width, 4, 4)  # (B, 2d, 4, 4)
        x = in_fp32(self.up[-1], self.up[:-1](x))  # (B, C, 16, 16), the output layer in fp32
        return F.interpolate(x, size=self.shape, mode="bilinear", align_corners=False)  # (B, C, H, W)


class GraphFaceDecoder(nn.Module):
    """Token (B, D) -> (B, C, 73): broadcast to every PMT, add a learned node embedding, two HexNeXt blocks."""

    def __init__(self, encoder_dim: int, decoder_dim: int, out_channels: int, n_nodes: int = 73):
        super().__init__()
        self.project = nn.Linear(encoder_dim, decoder_dim)
        self.node_embedding = nn.Parameter(torch.zeros(1, n_nodes, decoder_dim))
        nn.init.trunc_normal_(self.node_embedding, std=0.02)
        self.blocks = nn.Sequential(HexNeXtBlock(decoder_dim), HexNeXtBlock(decoder_dim))
        self.head = nn.Sequential(nn.LayerNorm(decoder_dim), nn.Linear(decoder_dim, out_channels))

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        x = self.project(token).unsqueeze(1) + self.node_embedding  # (B, 73, d)
        return in_fp32(self.head, self.blocks(x)).transpose(1, 2)  # (B, C, 73), the head in fp32


class GridRefiner(nn.Module):
    """The inpainter's local correction on a grid face, added to the neighbour-average estimate.

    Inputs: the face decoder's output (global context from the encoder), the masked input with its
    missing flags, and the neighbour-average estimate of every cell. A small dilated convolution
    (receptive field 15 cells) returns the correction; its last layer starts at zero, so an
    untrained inpainter reproduces the neighbour average.
    """

    def __init__(self, channels: int, input_channels: int, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 2 * channels + input_channels
        for dilation in (1, 2, 4):
            layers += [nn.Conv2d(c_in, width, kernel_size=3, padding=dilation, dilation=dilation), nn.GELU()]
            c_in = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, decoded: torch.Tensor, face_input: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        x = torch.cat([decoded, face_input.to(decoded.dtype), estimate.to(decoded.dtype)], dim=1)  # (B, ., H, W)
        return in_fp32(self.out, self.body(x))  # (B, C, H, W), the output layer in fp32


class HexRefiner(nn.Module):
    """The same correction on a PMT plane: (B, C, 73) decoder output, (B, 73, 4) input, (B, C, 73) estimate."""

    def __init__(self, channels: int, input_channels: int, width: int = 16):
        super().__init__()
        self.inp = nn.Linear(2 * channels + input_channels, width)
        self.block = HexNeXtBlock(width)
        self.out = nn.Linear(width, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, decoded: torch.Tensor, face_input: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        x = torch.cat([decoded.transpose(1, 2), face_input.to(decoded.dtype),
                       estimate.transpose(1, 2).to(decoded.dtype)], dim=-1)  # (B, 73, .)
        return in_fp32(self.out, self.block(self.inp(x))).transpose(1, 2)  # (B, C, 73), output layer in fp32
