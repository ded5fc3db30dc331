"""Building blocks: ConvNeXt V2 for the rectangular faces, HexNeXt for the top/bottom PMT planes.

Both blocks share one recipe: a depthwise spatial mixing (a 7x7 convolution on a grid, a
direction-typed graph convolution on the PMT lattice), LayerNorm, an inverted MLP with Global
Response Normalization (GRN), and a residual connection. Features are channels-last inside
the block, so LayerNorm and the MLP act on the last axis.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xecmae.detector.geometry import HEX_EDGE_TYPES, hex_graph


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    """Reductions of a bf16 activation are kept in fp32; fp32 and fp64 ones in their own dtype."""
    return torch.promote_types(x.dtype, torch.float32)


class _GRNFunction(torch.autograd.Function):
    """GRN with a hand-written backward: three passes over the activation instead of about seven.

    y = x * s + beta with s_c = 1 + gamma_c * E_c / (M + eps), E_c = ||x_c|| over the spatial
    axes and M = mean_c E_c. The activations here are the widest tensors of the network, so
    on a CPU the memory passes, not the arithmetic, set the speed.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, dims: tuple[int, ...], eps: float):
        # the per-channel statistics are small: at least fp32 whatever x is; twice as fast as vector_norm
        energy = x.square().sum(dim=dims, keepdim=True, dtype=_stat_dtype(x)).sqrt()  # (B, 1.., C)
        denom = energy.mean(dim=-1, keepdim=True) + eps
        scale = 1 + gamma * (energy / denom)
        ctx.save_for_backward(x, gamma, energy, denom, scale)
        ctx.dims = dims
        if x.dtype == scale.dtype:
            return torch.addcmul(beta, x, scale)
        # bf16 under autocast: computed in fp32, written in x's dtype in the same pass
        return torch.addcmul(beta, x, scale, out=torch.empty_like(x))

    @staticmethod
    def backward(ctx, grad):
        x, gamma, energy, denom, scale = ctx.saved_tensors
        dims = ctx.dims
        batch_dims = tuple(range(x.dim() - 1))
        grad_scale = (grad * x).sum(dim=dims, keepdim=True, dtype=_stat_dtype(x))  # (B, 1.., C)
        grad_gamma = (grad_scale * energy / denom).sum(dim=batch_dims)
        grad_beta = grad.sum(dim=batch_dims, dtype=_stat_dtype(grad))
        grad_response = grad_scale * gamma
        channels = x.shape[-1]
        grad_energy = grad_response / denom - (grad_response * energy).sum(-1, keepdim=True) / (denom**2 * channels)
        coef = grad_energy / energy.clamp_min(torch.finfo(energy.dtype).tiny)  # d||x||/dx = x / ||x||
        # the wide gradient in x's dtype: the small per-channel factors are cast to it
        grad_x = torch.addcmul(grad * scale.to(x.dtype), x, coef.to(x.dtype))
        return grad_x, grad_gamma, grad_beta, None, None


class GRN(nn.Module):
    """Global Response Normalization: channels compete through their spatial L2 energy.

    ``x + gamma * (x * N(x)) + beta`` with N = per-channel L2 norm over ``spatial_dims`` divided
    by its mean over channels; channels-last input.
    """

    def __init__(self, dim: int, spatial_dims: tuple[int, ...], eps: float = 1e-6):
        super().__init__()
        self.spatial_dims = tuple(spatial_dims)
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():  # TorchScript export cannot hold a Python autograd function
            energy = x.square().sum(dim=self.spatial_dims, keepdim=True).sqrt()
            return torch.addcmul(self.beta, x, 1 + self.gamma * (energy / (energy.mean(-1, keepdim=True) + self.eps)))
        return _GRNFunction.apply(x, self.gamma, self.beta, self.spatial_dims, self.eps)


def grn_reference(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, spatial_dims: tuple[int, ...],
                  eps: float = 1e-6) -> torch.Tensor:
    """Plain autograd GRN, the definition the fast version is tested against."""
    energy = torch.linalg.vector_norm(x, dim=spatial_dims, keepdim=True)
    return x + gamma * (x * (energy / (energy.mean(dim=-1, keepdim=True) + eps))) + beta


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _DepthwiseConvFunction(torch.autograd.Function):
    """Depthwise convolution whose input gradient is itself a (forward) depthwise convolution.

    On the CPU, PyTorch's depthwise backward computes the input gradient about three times
    slower than the forward pass; correlating the output gradient with the flipped kernel gives
    the same values at forward speed. The weight and bias gradients stay PyTorch's.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        return F.conv2d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        channels, padding = weight.shape[0], ctx.padding
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-2, -1), padding=padding, groups=channels)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, [channels] if ctx.has_bias else None, [1, 1], [padding, padding], [1, 1],
                False, [0, 0], channels, [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_weight, grad_bias, None


class DepthwiseConv2d(nn.Conv2d):
    """A stride-1, 'same'-padded depthwise ``nn.Conv2d`` (same parameters and state dict) with a faster backward.

    Under autocast the input and parameters are cast to the autocast dtype before the custom
    function, as autocast does for ``nn.Conv2d``: its backward runs outside autocast, so it must
    find the output gradient, the input and the kernel in one dtype; the casts' own backward
    returns fp32 gradients to the fp32 parameters.
    """

    def __init__(self, channels: int, kernel_size: int):
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():  # TorchScript export: the plain convolution (same values)
            return F.conv2d(x, self.weight, self.bias, padding=self.padding[0], groups=self.weight.shape[0])
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        return _DepthwiseConvFunction.apply(x, weight, bias, self.padding[0])


class ConvNeXtBlock(nn.Module):
    """ConvNeXt V2 block on (B, C, H, W): dwconv7 -> LN -> Linear 4C -> GELU -> GRN -> Linear C, + x."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = DepthwiseConv2d(dim, kernel_size=7)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.expand = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim, spatial_dims=(1, 2))
        self.project = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.project(self.grn(F.gelu(self.expand(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class HexGraphConv(nn.Module):
    """Depthwise convolution on the PMT lattice: one weight vector per edge direction.

    ``out[n] = bias + sum_t w_t * x[neighbour(n, t)]`` over the 7 edge types (self and six
    60-degree sectors); a missing neighbour (lattice edge) contributes nothing. The neighbour
    lookup is a product with a fixed 0/1 selection matrix, whose backward is another product
    (a gather's backward would be a slower scatter-add).
    """

    def __init__(self, dim: int):
        super().__init__()
        neighbours = hex_graph().neighbours
        n_nodes = neighbours.shape[0]
        select = torch.zeros(HEX_EDGE_TYPES, n_nodes, n_nodes)
        node, etype = (torch.as_tensor(a) for a in (neighbours >= 0).nonzero())
        select[etype, node, torch.as_tensor(neighbours[node.numpy(), etype.numpy()])] = 1.0
        self.register_buffer("select", select.flatten(0, 1), persistent=False)  # (7 N, N)
        self.n_nodes = n_nodes
        self.weight = nn.Parameter(torch.randn(HEX_EDGE_TYPES, dim) / HEX_EDGE_TYPES**0.5)
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = (self.select @ x).unflatten(1, (HEX_EDGE_TYPES, self.n_nodes))  # (B, 7, N, C)
        return (shifted * self.weight[:, None, :]).sum(dim=1) + self.bias  # (B, N, C)


class HexNeXtBlock(nn.Module):
    """The ConvNeXt V2 recipe on the top/bottom lattice, (B, 73, C) -> (B, 73, C)."""

    def __init__(self, dim: int):
        super().__init__()
        self.spatial = HexGraphConv(dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.expand = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim, spatial_dims=(1,))
        self.project = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.grn(F.gelu(self.expand(self.norm(self.spatial(x))))))
