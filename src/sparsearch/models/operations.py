"""The DARTS search space's operations (C -> C channels), shared by the supernet and genotype networks.

Every parametric layer is a plain Conv2d/Linear; DASS makes them sparse by attaching masks from the
sparsity layer, so dense (DARTS) and sparse (DASS) networks are one code path.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels.depthwise import depthwise_conv2d

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
PARAMETER_FREE = {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect"}


class TrainingRewrites:
    """Rewrites that compute the same function faster when training on the CPU (evaluation, and so tracing,
    export and the layer hooks, runs the plain layers; measured, 2-core Xeon, NHWC):
    - a depthwise convolution runs on the native kernels of `kernels/depthwise.py` where they take it (under bf16
      autocast only where torch's own bf16 backward is slow: all but 3 x 3 at stride 1 undilated, 7-25x slower there,
      while at that one it is 2x faster than ours with the casts; Sapphire Rapids, torch 2.13); else, where
      its stride equals its dilation d (padding a multiple of d), it reads only every d-th row and column: it runs
      undilated at stride 1 on x[:, :, ::d, ::d] with padding / d (the same products; torch's backward is 1.5-3x
      faster);
    - a 1x1 convolution on channels-last input is one matrix product over the pixels (the same forward bit for
      bit; forward + backward 2x faster than mkldnn's at these sizes);
    - FactorizedReduce's halves run at stride 1 on its sampled input (`factorized`).
    `sparsearch.bench.plain` holds the plain forwards the tests check these against."""

    @staticmethod
    def active(module: nn.Module, x: torch.Tensor) -> bool:
        # a plain Conv2d only: the runtime swaps in its own kernel modules
        return module.training and x.device.type == "cpu" and isinstance(module, nn.Conv2d)

    @classmethod
    def depthwise(cls, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        if not cls.active(conv, x) or "forward" in vars(conv):  # routed to the sparse training kernels: they run it
            return conv(x)
        if (conv.groups == conv.in_channels == conv.out_channels and conv.bias is None and conv.padding_mode == "zeros"
                and len({*conv.stride}) == len({*conv.padding}) == len({*conv.dilation}) == 1
                and (not torch.is_autocast_enabled("cpu") or (conv.kernel_size[0], conv.stride[0], conv.dilation[0]) != (3, 1, 1))
                and (y := depthwise_conv2d(x, conv.weight, conv.stride[0], conv.padding[0], conv.dilation[0])) is not None):
            return y
        if (d := conv.dilation[0]) > 1 and conv.stride == conv.dilation and conv.padding[0] % d == 0:
            return F.conv2d(x[:, :, ::d, ::d], conv.weight, None, 1, conv.padding[0] // d, 1, conv.groups)
        return conv(x)

    @classmethod
    def factorized(cls, reduce: "FactorizedReduce", x: torch.Tensor) -> list[torch.Tensor]:
        """FactorizedReduce's two halves: its 1x1 stride-2 convolutions as stride-1 ones on x[:, :, o::2, o::2]
        (o = 0, 1: the same products), sampled in x's layout with the gradient handed back in it (`_Sampled`), on
        the matrix product where x is channels-last. oneDNN's AVX2 kernel gets a channels-last 1x1 stride-2 weight
        gradient wrong (torch 2.13 with ONEDNN_MAX_CPU_ISA=AVX2: off by a third of its size), and torch's slice
        backward made NCHW zeros, after which the sum and ReLU backward were 3-7x slower (bf16)."""
        halves = ((reduce.conv_1, 0), (reduce.conv_2, 1))
        if not all(cls.active(conv, x) and "forward" not in vars(conv) for conv, _ in halves):
            return [reduce.conv_1(x), reduce.conv_2(x[:, :, 1:, 1:])]
        sampled = [_Sampled.apply(x, offset) for _, offset in halves]
        return [y if (y := cls._product(conv, s)) is not None else F.conv2d(s, conv.weight, conv.bias)
                for (conv, _), s in zip(halves, sampled)]

    @classmethod
    def pointwise(cls, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        if cls.active(conv, x) and conv.stride == (1, 1) and (y := cls._product(conv, x)) is not None:
            return y
        return conv(x)

    @staticmethod
    def _product(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
        """A bias-free 1x1 convolution, at stride 1, on channels-last x as one matrix product over the pixels (the
        same forward bit for bit); None for anything else."""
        if not (conv.kernel_size == (1, 1) and conv.groups == 1 and conv.bias is None
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
            return None
        n, c, h, w = x.shape
        y = x.permute(0, 2, 3, 1).reshape(-1, c) @ conv.weight.view(-1, c).t()
        return y.view(n, h, w, -1).permute(0, 3, 1, 2)


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False),
                         nn.BatchNorm2d(c_out, affine=affine))

    def forward(self, x):
        return self[2](TrainingRewrites.pointwise(self[1], self[0](x)))


class DilConv(nn.Sequential):
    """ReLU -> depthwise k x k (dilated) -> pointwise 1x1 -> BN (both convolutions with TrainingRewrites)."""

    def __init__(self, c_in, c_out, kernel, stride, padding, dilation, affine=True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out, affine=affine),
        )

    def forward(self, x):
        return self.after_relu(self[0](x))

    def after_relu(self, x):
        """This operation on an input that is already ReLU(x)."""
        return self[3](TrainingRewrites.pointwise(self[2], TrainingRewrites.depthwise(self[1], x)))


class SepConv(nn.Sequential):
    """Two DilConv blocks with dilation 1; only the first carries the stride."""

    def __init__(self, c_in, c_out, kernel, stride, padding, affine=True):
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
                         DilConv(c_in, c_out, kernel, 1, padding, 1, affine))

    def after_relu(self, x):
        return self[1](self[0].after_relu(x))


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two 1x1 stride-2 convs, the second shifted by one."""

    def __init__(self, c_in, c_out, affine=True):
        super().__init__()
        if c_out % 2:
            raise ValueError("FactorizedReduce needs an even number of output channels")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat(TrainingRewrites.factorized(self, x), dim=1))


class _Sampled(torch.autograd.Function):
    """x[:, :, o::2, o::2] in x's memory format, its gradient too (torch's slice backward writes into NCHW zeros)."""

    @staticmethod
    def forward(ctx, x, offset: int):
        ctx.shape, ctx.offset = x.shape, offset
        ctx.layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return x[:, :, offset::2, offset::2].contiguous(memory_format=ctx.layout)

    @staticmethod
    def backward(ctx, grad):
        dx = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout).zero_()
        dx[:, :, ctx.offset::2, ctx.offset::2] = grad
        return dx, None


OPS = {
    "none": lambda c, stride, affine: Zero(stride),
    "avg_pool_3x3": lambda c, stride, affine: nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda c, stride, affine: nn.MaxPool2d(3, stride, padding=1),
    "skip_connect": lambda c, stride, affine: nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine),
    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, c, 3, stride, 1, affine),
    "sep_conv_5x5": lambda c, stride, affine: SepConv(c, c, 5, stride, 2, affine),
    "dil_conv_3x3": lambda c, stride, affine: DilConv(c, c, 3, stride, 2, 2, affine),
    "dil_conv_5x5": lambda c, stride, affine: DilConv(c, c, 5, stride, 4, 2, affine),
}


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples of a branch with probability drop_prob, rescaling the rest (DARTS' drop-path)."""
    if drop_prob <= 0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask
