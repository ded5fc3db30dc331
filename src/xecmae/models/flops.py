"""Model FLOPs of a training step, as a model-FLOPs-utilisation figure needs them.

PyTorch's ``FlopCounterMode`` counts the weight gradient of a grouped convolution as if the
convolution were dense: for the 7 x 7 depthwise convolutions of the ConvNeXt stages that is the
channel count times too much, and it doubled the count of a ``base`` training step. Here each
gradient of a convolution costs what its forward pass does, which holds for any ``groups``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape, **kwargs) -> int:
    """Input gradient and weight gradient, each the FLOPs of the forward convolution (whose weight
    shape already carries the groups)."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call of ``fn`` (matrix products and convolutions)."""
    counter = FlopCounterMode(display=False,
                              custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})
    with counter:
        fn()
    return counter.get_total_flops()


_NO_KERNEL = frozenset({"empty", "empty_strided", "empty_like", "resize_", "set_",  # allocations
                        "promote_types", "result_type", "_unsafe_view", "is_nonzero", "size", "stride"})


def count_operators(fn: Callable[[], object]) -> int:
    """Operators of one call of ``fn`` that run a kernel (views and bare allocations left out).

    On a GPU each is a launch of some microseconds on the host, so a step of a small model is
    bound by this count rather than by its FLOPs; it is the same number on any device.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    count = 0

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal count
            count += not (func.is_view or func.overloadpacket.__name__ in _NO_KERNEL)
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return count
