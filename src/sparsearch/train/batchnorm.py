"""BatchNorm2d in training mode on NCHW float32 activations, on the training library's kernels: the sparse path's
activations are NCHW (its convolutions' layout), where PyTorch's CPU BatchNorm takes 3-5x longer than these (one pass
for the sums and one for the output, in each direction; `sparsearch bench train --sparse --layers` shows the step's
parts). The same function as `nn.BatchNorm2d` in training mode: batch statistics, the running statistics updated with
the module's momentum (or the cumulative average where it is None) and the unbiased variance; evaluation mode and
every other input run the module's own forward.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from ..kernels.loading import _ptr, library


class _BatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, threads: int):
        n, c, h, w = x.shape
        gamma = None if weight is None else weight.detach().contiguous()
        beta = None if bias is None else bias.detach().contiguous()
        y, mean, invstd, var = torch.empty_like(x), x.new_empty(c), x.new_empty(c), x.new_empty(c)
        library().batchnorm_forward(n, c, h * w, _ptr(x), _ptr(gamma), _ptr(beta), eps, _ptr(y), _ptr(mean),
                                    _ptr(invstd), _ptr(var), threads)
        ctx.save_for_backward(x, mean, invstd, gamma)
        ctx.threads, ctx.affine = threads, weight is not None
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy, _mean, _var):
        x, mean, invstd, gamma = ctx.saved_tensors
        n, c, h, w = x.shape
        dy = dy.contiguous()
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dgamma = x.new_empty(c) if ctx.affine and ctx.needs_input_grad[1] else None
        dbeta = x.new_empty(c) if ctx.affine and ctx.needs_input_grad[2] else None
        library().batchnorm_backward(n, c, h * w, _ptr(x), _ptr(dy), _ptr(mean), _ptr(invstd), _ptr(gamma), _ptr(dx),
                                     _ptr(dgamma), _ptr(dbeta), ctx.threads)
        return dx, dgamma, dbeta, None, None


def _applies(bn: nn.BatchNorm2d, x: torch.Tensor) -> bool:
    return (bn.training and torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and x.dim() == 4 and x.is_contiguous() and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and not torch.jit.is_tracing())


def batchnorm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """`bn(x)` in training mode on the native kernels, running statistics updated as the module does."""
    y, mean, var = _BatchNorm.apply(x, bn.weight, bn.bias, bn.eps, torch.get_num_threads())
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            m = x.numel() // x.shape[1]
            bn.running_mean.mul_(1 - f).add_(mean, alpha=f)
            bn.running_var.mul_(1 - f).add_(var * (m / (m - 1)), alpha=f)
    return y


@contextmanager
def native_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[list[nn.Module]]:
    """Within the block, `model`'s BatchNorm2d layers run `batchnorm` on the inputs it takes (NCHW float32 on the CPU,
    training mode), their own forward on the rest. Nothing changes where disabled or the library cannot be built."""
    routed = []
    if enabled and library() is not None:
        for module in model.modules():
            if type(module) is nn.BatchNorm2d and "forward" not in vars(module):
                module.forward = _routed(module)
                routed.append(module)
    try:
        yield routed
    finally:
        for module in routed:
            del module.forward


def _routed(bn: nn.BatchNorm2d):
    plain = type(bn).forward

    def forward(x):
        return batchnorm(bn, x) if _applies(bn, x) else plain(bn, x)
    return forward
