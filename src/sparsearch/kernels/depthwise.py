"""Depthwise convolution for training on channels-last CPU activations, its backward on native kernels
(`depthwise.cpp`): `depthwise_conv2d(x, weight, stride, padding, dilation)` is `F.conv2d(x, weight, None, stride,
padding, dilation, groups=C)`, whose gradients are the same up to the order of their sums, or None where the kernels
do not take the case (the caller runs torch's). The search's separable and dilated convolutions spent most of their
time in torch's depthwise backward: at the 4-64 channels of a CPU supernet its weight gradient is 4-6x slower than
these kernels (measured on a 2-core Zen 4; the forward stays torch's, which is faster than ours).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from .loading import _ptr, depthwise_library


@lru_cache(maxsize=1)
def _widths() -> tuple[int, int, int] | None:
    """(floats a vector, vectors a block at most, floats a source buffer needs past its last row)"""
    lib = depthwise_library()
    return None if lib is None else (lib.vector_width(), lib.most_vectors(), lib.slack())


def block_vectors(channels: int) -> int | None:
    """Vectors per block of an output row: a multiple of the channel count in floats, at least 4 vectors where that
    fits (fewer loop trips), None where no block of at most `most_vectors` does."""
    if (widths := _widths()) is None:
        return None
    v, most, _ = widths
    base = math.lcm(channels, v) // v
    return None if base > most else base * max(1, -(-4 // base))


class _Layout:
    """Where each tap reads: the input zero-padded and split into its stride's phase planes (only those a tap
    reads), each tap a fixed offset into them; and, for the input gradient, each plane's taps mirrored over the
    padded output gradient, read for the plane's positions that hold an input pixel."""

    def __init__(self, shape: torch.Size, kernel: tuple[int, int], stride: int, padding: int, dilation: int, nv: int):
        n, c, h, w = shape
        s, p, d = stride, padding, dilation
        self.shape, self.s, self.p, self.nv = shape, s, p, nv
        self.oh = (h + 2 * p - d * (kernel[0] - 1) - 1) // s + 1
        self.ow = (w + 2 * p - d * (kernel[1] - 1) - 1) // s + 1
        self.hs, self.ws = -(-(h + 2 * p) // s), -(-(w + 2 * p) // s)
        taps = [(ky * d, kx * d) for ky in range(kernel[0]) for kx in range(kernel[1])]
        self.planes = sorted({(y % s, x % s) for y, x in taps})
        plane = n * self.hs * self.ws * c
        self.off = torch.tensor([self.planes.index((y % s, x % s)) * plane + ((y // s) * self.ws + x // s) * c
                                 for y, x in taps])
        self.ty, self.tx = max(y // s for y, _ in taps), max(x // s for _, x in taps)
        self.hd, self.wd = self.hs + self.ty, self.ws + self.tx
        self.slices = [self._slices(a, b, h, w) for a, b in self.planes]
        self.plane_taps = [torch.tensor([t for t, (y, x) in enumerate(taps) if (y % s, x % s) == ab]) for ab in self.planes]
        self.plane_off = [torch.tensor([((self.ty - taps[t][0] // s + ro.start) * self.wd + self.tx - taps[t][1] // s
                                         + co.start) * c for t in ts.tolist()])
                          for ts, (_, (ro, co)) in zip(self.plane_taps, self.slices)]

    def _slices(self, a: int, b: int, h: int, w: int):
        """The input rows and columns of phase (a, b), and where they sit in its plane."""
        i0, j0 = (a - self.p) % self.s, (b - self.p) % self.s
        rows, cols = len(range(i0, h, self.s)), len(range(j0, w, self.s))
        r0, c0 = (i0 + self.p) // self.s, (j0 + self.p) // self.s
        return (slice(i0, None, self.s), slice(j0, None, self.s)), (slice(r0, r0 + rows), slice(c0, c0 + cols))

    def phases(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        """The phase planes, flat, with the kernels' slack after them."""
        n, h, w, c = x_nhwc.shape
        size = len(self.planes) * n * self.hs * self.ws * c
        flat = x_nhwc.new_zeros(size + _widths()[2])
        buf = flat[:size].view(len(self.planes), n, self.hs, self.ws, c)
        for k, ((ri, ci), (ro, co)) in enumerate(self.slices):
            buf[k, :, ro, co] = x_nhwc[:, ri, ci]
        return flat

    def input_grad(self, lib, g: torch.Tensor, wrep: torch.Tensor, threads: int) -> torch.Tensor:
        """dx (NHWC) from g = dy (NHWC): per phase plane, the correlation of the padded dy with that plane's taps at
        the plane's input positions; written straight into dx where the stride is 1."""
        n, c, h, w = self.shape
        flat = g.new_zeros(n * self.hd * self.wd * c + _widths()[2])
        flat[:n * self.hd * self.wd * c].view(n, self.hd, self.wd, c)[:, self.ty:self.ty + self.oh,
                                                                      self.tx:self.tx + self.ow] = g
        every = len(self.planes) == self.s * self.s  # else some input pixels feed no tap: their gradient is zero
        dx = g.new_empty(n, h, w, c) if every else g.new_zeros(n, h, w, c)
        for taps, off, ((ri, ci), (ro, co)) in zip(self.plane_taps, self.plane_off, self.slices):
            rows, cols = ro.stop - ro.start, co.stop - co.start
            out = dx if self.s == 1 else g.new_empty(n, rows, cols, c)
            sub = wrep[taps].contiguous()
            lib.depthwise_correlate(self.nv, n, rows, cols * c, self.hd * self.wd * c, self.wd * c, _ptr(flat),
                                    len(off), _ptr(off), _ptr(sub), _ptr(out), threads)
            if self.s > 1:
                dx[:, ri, ci] = out
        return dx


def _repeated(weight: torch.Tensor, nv: int, v: int) -> torch.Tensor:
    """(taps, L) with each tap's C weights repeated along a block of L = nv * v floats."""
    c = weight.shape[0]
    return weight.detach().reshape(c, -1).t().repeat(1, nv * v // c).contiguous()


class _Depthwise(torch.autograd.Function):
    """torch's forward (oneDNN's NHWC depthwise kernel is fast; its backward, the weight gradient above all, is
    several times slower than these kernels)."""

    @staticmethod
    def forward(ctx, x, weight, layout: _Layout, dilation: int):
        ctx.save_for_backward(x, weight)
        ctx.layout = layout
        return F.conv2d(x, weight, None, layout.s, layout.p, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        lay, lib, threads = ctx.layout, depthwise_library(), torch.get_num_threads()
        n, c, h, w = lay.shape
        g = grad.permute(0, 2, 3, 1).contiguous()
        assert g.dtype == torch.float32, "the depthwise kernels read float32 gradients"
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = lay.input_grad(lib, g, _repeated(weight, lay.nv, _widths()[0]), threads).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            src = lay.phases(x.permute(0, 2, 3, 1))
            dw = g.new_empty(len(lay.off), c)
            lib.depthwise_weight_grad(lay.nv, n, lay.oh, lay.ow * c, c, lay.hs * lay.ws * c, lay.ws * c, _ptr(src),
                                      len(lay.off), _ptr(lay.off), _ptr(g), _ptr(dw), threads)
            grad_w = dw.t().reshape(weight.shape)
        return grad_x, grad_w, None, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int,
                     dilation: int) -> torch.Tensor | None:
    """conv2d(x, weight, groups=C) on the native kernels for a channels-last float32 CPU `x` and a (C, 1, k, k)
    `weight`; None where they do not take it (no compiler, another layout or dtype, a channel count no block fits).
    Under CPU autocast it is the convolution autocast runs (x and weight rounded to its dtype, products summed in
    float32, the output in its dtype): the kernels run in float32 on the rounded values."""
    if torch.is_autocast_enabled("cpu"):
        low = torch.get_autocast_dtype("cpu")
        if x.dtype not in (low, torch.float32):
            return None
        with torch.autocast("cpu", enabled=False):
            y = depthwise_conv2d(x.to(low).float(), weight.to(low).float(), stride, padding, dilation)
        return None if y is None else y.to(low)
    c = x.shape[1]
    if not (x.dim() == 4 and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and weight.shape[:2] == (c, 1) and x.is_contiguous(memory_format=torch.channels_last)):
        return None
    if (nv := block_vectors(c)) is None:
        return None
    layout = _layout(x.shape, tuple(weight.shape[2:]), stride, padding, dilation, nv)
    return _Depthwise.apply(x, weight, layout, dilation)


@lru_cache(maxsize=256)
def _layout(shape, kernel, stride, padding, dilation, nv) -> _Layout:
    return _Layout(torch.Size(shape), kernel, stride, padding, dilation, nv)


__all__ = ["block_vectors", "depthwise_conv2d"]
