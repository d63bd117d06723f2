"""BatchNorm for channels-last training where torch's own backward is slow.

Two slow cases of torch's CPU backward for a channels-last BatchNorm2d (measured, 2-core Xeon, torch 2.13):
- a channel count that is not a multiple of the vector width: 4-5x slower than the NCHW kernel ([16, 8, 32, 32]
  1.35 ms vs 0.34 ms done on NCHW copies; [64, 8, 32, 32] 5.3 vs 1.2 ms). CPU supernets have 4-24 channels;
- a gradient in neither layout, which is what a channel slice of torch.cat's gradient is (every DARTS cell ends
  in a cat): 3-5x slower than with a dense channels-last one ([64, 16, 32, 32] 5.4 vs 1.8 ms).
In bfloat16 (autocast) the second case costs 20-50x ([128, 16, 32, 32]: 50 vs 7 ms with the copy; [128, 64, 32, 32]:
469 vs 11 ms; Sapphire Rapids, torch 2.13), and the first does not arise (the channels-last kernel beats NCHW copies).
`nhwc_batchnorm(model)` keeps torch's forward and running statistics, and gives torch's backward kernels what they
are fast on: NCHW copies for the first case in float32 (and for the forward below 8 channels), a channels-last copy
of the gradient otherwise.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

FAST_MULTIPLE = 16  # channel counts torch's channels-last kernel is fast on (AVX-512: 16 floats a vector)
SLOW_FORWARD_BELOW = 8  # fewer channels: the channels-last forward is slow too ([32, 4, 32, 32]: 1.05 vs 0.19 ms)


class _BatchNormNCHWBackward(torch.autograd.Function):
    """torch's forward; its backward kernel run on NCHW copies."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        if x.shape[1] < SLOW_FORWARD_BELOW:
            x = x.contiguous()
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        y = y.contiguous(memory_format=torch.channels_last)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        wanted = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                  weight is not None and ctx.needs_input_grad[2]]
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(grad.contiguous(), x.contiguous(), weight, None, None,
                                                               mean, invstd, True, ctx.eps, wanted)
        dx = dx.contiguous(memory_format=torch.channels_last) if dx is not None else None
        return dx, dw, db, None, None, None, None


def _dense_channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


class NHWCBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that, training on channels-last CPU input, avoids torch's two slow cases (module docstring);
    anything else is torch's own forward."""

    def forward(self, x):
        if not (self.training and self.track_running_stats and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.bfloat16)
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
            return super().forward(x)
        if x.shape[1] % FAST_MULTIPLE == 0 or x.dtype != torch.float32:  # torch's kernel, a dense channels-last gradient
            y = super().forward(x)
            if y.requires_grad:
                y.register_hook(_dense_channels_last)
            return y
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        return _BatchNormNCHWBackward.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                            momentum, self.eps)


@contextmanager
def nhwc_batchnorm(model: nn.Module, enabled: bool = True):
    """Within the block, `model`'s BatchNorm2d layers are NHWCBatchNorm2d (same parameters,
    buffers and state_dict); afterwards they are plain nn.BatchNorm2d again, so export and tracing see torch's."""
    swapped = [m for m in model.modules() if enabled and type(m) is nn.BatchNorm2d]
    for m in swapped:
        m.__class__ = NHWCBatchNorm2d
    try:
        yield model
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d
