"""Sparse training: a masked convolution or linear layer whose forward and both backwards do the work of its kept
weights only (`sparse_kernels.cpp`), as an autograd function any model gets through `sparse_kernels(model, mode)`.

    with sparse_kernels(model, "on"):       # or "auto": per layer, whichever of sparse and dense is faster here
        loss = loss_fn(model(x), y)         # masked layers run on the sparse kernels in training mode
        loss.backward()                     # the masked weight's gradient: exact zeros where the mask is zero

It computes the function of the masked dense layer (`weight * mask`, then PyTorch's convolution): the same outputs
and gradients up to the order of their sums. Only fixed masks (`sparsity.Mask`) take the sparse path, and only while
no dense gradient is being tracked (RigL's regrowth steps need the gradient of every weight); learned and N:M masks,
evaluation and tracing run the plain layer. The kept weights' layout is rebuilt when a mask changes (compared by value).
"""

from __future__ import annotations

import ctypes
import statistics
import time
from contextlib import contextmanager
from typing import Iterator, Literal

import torch
import torch.nn as nn

from .. import sparsity as sp
from ..native import tile_shape
from .batchnorm import native_batchnorm
from ..kernels.loading import _ptr, library

Mode = Literal["off", "on", "auto"]
SLACK = 64  # floats a read may run past a row's end: the widest tile's (conv_tile.h) last columns


class Geometry(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("N", "C", "H", "W", "O", "OH", "OW", "S", "P_H", "P_W", "D_H", "D_W")]


class Pattern:
    """A mask's kept weights by output channel (`rows`), with each one's input channel, taps and flat position `at` in
    the dense weight."""

    def __init__(self, mask: torch.Tensor, groups: int, in_channels: int):
        mask = mask.reshape(mask.shape[0], mask.shape[1], *mask.shape[2:], *([1, 1] if mask.dim() == 2 else []))
        outs, per_group = mask.shape[:2]
        o, c, ky, kx = mask.nonzero(as_tuple=True)  # row-major: by output channel, then input channel and taps
        cin = (o // (outs // groups)) * per_group + c
        self.mask = mask.clone()
        self.at = ((o * per_group + c) * mask.shape[2] + ky) * mask.shape[3] + kx
        self.rows = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(o, minlength=outs).cumsum(0)])
        self.cin, self.ky, self.kx = cin.int(), ky.int(), kx.int()
        self.row_of = o
        self.density = float(mask.float().mean())
        self._flats: dict[tuple, _Flat] = {}

    def flat(self, g: Geometry) -> _Flat:
        """Where the kept weights read for this input geometry, made once: a layer sees one shape per batch size."""
        key = tuple(getattr(g, name) for name, _ in Geometry._fields_)
        if key not in self._flats:
            self._flats[key] = _Flat(self, g)
        return self._flats[key]


def _pad(t: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    """t's planes zero-padded to h x w at (top, left), flat (one parallel pass; F.pad fills, then copies)."""
    n, c, th, tw = t.shape
    t = t.contiguous()
    out = t.new_empty(n * c * h * w)
    library().pad_planes(n * c, th, tw, _ptr(t), top, left, h, w, _ptr(out), torch.get_num_threads())
    return out


def _floor_split(reach: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """reach = s * q + r with 0 <= r < s: the phase r and the phase-plane shift q of an input offset."""
    return torch.remainder(reach, s), torch.div(reach, s, rounding_mode="floor")


def _int32(t: torch.Tensor) -> torch.Tensor:
    if len(t) and (int(t.max()) >= 2**31 or int(t.min()) < -(2**31)):
        raise OverflowError("a layer this large does not fit the sparse kernels' 32-bit offsets")
    return t.to(torch.int32)


class _Flat:
    """Where each kept weight reads, on the input split into its stride's s x s phase planes (x[:, :, a::s, b::s]),
    each zero-padded so that every read of every output position lands inside it: a strided convolution is then a
    stride-1 one over phase-stacked channels, and each kept weight a fixed offset `off` into one flat buffer."""

    def __init__(self, p: Pattern, g: Geometry):
        s = g.S
        ry, qy = _floor_split(p.ky.long() * g.D_H - g.P_H, s)
        rx, qx = _floor_split(p.kx.long() * g.D_W - g.P_W, s)
        lo_y, hi_y = (int(qy.min()), int(qy.max())) if len(qy) else (0, 0)
        lo_x, hi_x = (int(qx.min()), int(qx.max())) if len(qx) else (0, 0)
        self.s, self.hs, self.ws = s, -(-g.H // s), -(-g.W // s)
        self.top, self.left = max(0, -lo_y), max(0, -lo_x)
        self.w = self.left + max(self.ws, g.OW + max(hi_x, 0))
        # and rows of zeros below each plane, which reads past a row's end (a tile's last columns, at most SLACK
        # floats) may reach: no read leaves the buffer
        self.h = self.top + max(self.hs, g.OH + max(hi_y, 0)) + -(-SLACK // self.w) + 1
        self.key = (ry * s + rx) * g.C + p.cin.long()  # the phase-stacked input channel each weight reads
        self.off = (self.key * self.h + qy + self.top) * self.w + qx + self.left
        self.off32 = _int32(self.off)  # the tiles' offsets
        self.tile = tile_shape(g.OH, g.OW)
        # the input gradient: each phase plane of dx correlates dy (padded) with the taps of that phase
        self.dtop, self.dleft = max(0, hi_y), max(0, hi_x)
        self.dw = self.dleft + max(g.OW, self.ws - min(lo_x, 0))
        self.dh = self.dtop + max(g.OH, self.hs - min(lo_y, 0)) + -(-SLACK // self.dw) + 1
        self.order = torch.argsort(self.key, stable=True)
        self.cols = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(self.key, minlength=s * s * g.C).cumsum(0)])
        self.off_t = _int32((p.row_of * self.dh + self.dtop - qy) * self.dw + self.dleft - qx)[self.order].contiguous()
        self.tile_t = tile_shape(self.hs, self.ws)

    def phases(self, x: torch.Tensor) -> torch.Tensor:
        """x as the flat buffer of its zero-padded phase planes."""
        n, c, h, w = x.shape
        s = self.s
        if s == 1:  # one plane: a padding copy
            return _pad(x, self.top, self.left, self.h, self.w)
        buf = x.new_zeros(n, s * s, c, self.h, self.w)
        for a in range(s):
            for b in range(s):
                part = x[:, :, a::s, b::s]
                buf[:, a * s + b, :, self.top:self.top + part.shape[2], self.left:self.left + part.shape[3]] = part
        return buf.reshape(-1)

    def padded(self, grad: torch.Tensor) -> torch.Tensor:
        """dy zero-padded for the input gradient, flat."""
        return _pad(grad, self.dtop, self.dleft, self.dh, self.dw)

    def unphase(self, planes: torch.Tensor, n: int, c: int, h: int, w: int) -> torch.Tensor:
        """The input gradient from its phase planes (n, s * s * c, hs, ws): itself where the stride is 1."""
        s = self.s
        if s == 1:
            return planes
        planes = planes.view(n, s * s, c, self.hs, self.ws)
        out = planes.new_empty(n, c, h, w)
        for a in range(s):
            for b in range(s):
                rows, cols = len(range(a, h, s)), len(range(b, w, s))
                out[:, :, a::s, b::s] = planes[:, a * s + b, :, :rows, :cols]
        return out


class _SparseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, pattern: Pattern, g: Geometry, threads: int):
        lib, values = library(), weight.detach().reshape(-1)[pattern.at].contiguous()
        b = None if bias is None else bias.detach().contiguous()
        flat = pattern.flat(g)
        src = flat.phases(x.detach())
        out = src.new_empty(g.N, g.O, g.OH, g.OW)
        lib.tile_correlate(g.N, g.O, g.OH, g.OW, g.S * g.S * g.C * flat.h * flat.w, flat.w, _ptr(src), _ptr(pattern.rows),
                           _ptr(flat.off32), _ptr(values), _ptr(b), _ptr(out), *flat.tile, threads)
        ctx.save_for_backward(x, values)  # not `src`: x is kept alive anyway (by the ReLU before it, say)
        ctx.flat, ctx.pattern, ctx.geometry, ctx.threads, ctx.weight_shape = flat, pattern, g, threads, weight.shape
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, values = ctx.saved_tensors
        p, g, f, lib, threads = ctx.pattern, ctx.geometry, ctx.flat, library(), ctx.threads
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        padded = f.padded(grad) if ctx.needs_input_grad[0] or f.dw == f.w else None
        if ctx.needs_input_grad[0]:
            by_key = values[f.order].contiguous()  # named: alive during the call
            out = grad.new_empty(g.N, g.S * g.S * g.C, f.hs, f.ws)
            lib.tile_correlate(g.N, g.S * g.S * g.C, f.hs, f.ws, g.O * f.dh * f.dw, f.dw, _ptr(padded), _ptr(f.cols),
                               _ptr(f.off_t), _ptr(by_key), _ptr(None), _ptr(out), *f.tile_t, threads)
            grad_x = f.unphase(out, g.N, g.C, g.H, g.W)
        if ctx.needs_input_grad[1]:  # dy at the phase planes' width with zeros in the extra columns: the padded dy
            src = f.phases(x)  # padded again rather than saved: the step's peak memory stays the dense step's
            if f.dw == f.w:  # itself where its width is that (a "same" convolution), else a copy
                dy, plane, start = padded, f.dh * f.dw, f.dtop * f.dw + f.dleft
            else:
                dy, plane, start = _pad(grad, 0, 0, g.OH, f.w), g.OH * f.w, 0
            kept = values.new_empty(len(values))
            lib.flat_dot(g.N, g.O, g.OH * f.w, plane, g.S * g.S * g.C * f.h * f.w, ctypes.c_void_p(dy.data_ptr() + 4 * start),
                         _ptr(src), _ptr(p.rows), _ptr(f.off), len(values), _ptr(kept), threads)
            grad_w = values.new_zeros(ctx.weight_shape.numel())
            grad_w[p.at] = kept
            grad_w = grad_w.view(ctx.weight_shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pattern: Pattern, stride: int,
                  padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """conv2d(x, weight * mask, bias) on the sparse kernels; the gradient reaches `weight` at its kept positions."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride + 1
    geometry = Geometry(n, c, h, w, weight.shape[0], oh, ow, stride, *padding, *dilation)
    return _SparseConv.apply(x.float(), weight, bias, pattern, geometry, torch.get_num_threads())


def sparse_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pattern: Pattern) -> torch.Tensor:
    """linear(x, weight * mask, bias): a 1x1 convolution over one image whose positions are the rows of x."""
    rows = x.reshape(-1, x.shape[-1])
    image = rows.t().reshape(1, rows.shape[1], 1, rows.shape[0])
    out = sparse_conv2d(image, weight.view(*weight.shape, 1, 1), bias, pattern, 1, (0, 0), (1, 1))
    return out.reshape(weight.shape[0], rows.shape[0]).t().reshape(*x.shape[:-1], weight.shape[0])


class _Layer:
    """One masked layer's sparse path: its pattern (rebuilt when the mask changes) and, in auto mode, its choice."""

    def __init__(self, module: nn.Module, mode: Mode):
        self.module, self.mode, self.pattern, self.sparse = module, mode, None, mode == "on"

    def applies(self, x: torch.Tensor) -> bool:
        p = sp.mask_parametrization(self.module)
        if not (self.module.training and isinstance(p, sp.Mask) and p.grad_sink is None and x.device.type == "cpu"
                and torch.is_grad_enabled() and x.dtype == torch.float32 and not torch.jit.is_tracing()):
            return False
        mask = p.current()
        if self.pattern is None or not torch.equal(self.pattern.mask, mask.reshape(self.pattern.mask.shape)):
            m = self.module
            groups, cin = (m.groups, m.in_channels) if isinstance(m, nn.Conv2d) else (1, m.in_features)
            changed = self.pattern is None or abs(self.pattern.density - float(mask.float().mean())) > 1e-6
            self.pattern = Pattern(mask, groups, cin)
            if self.mode == "auto" and changed:
                self.sparse = self._sparse_is_faster(x)
        return self.sparse

    def sparse_forward(self, x: torch.Tensor) -> torch.Tensor:
        m, weight = self.module, self.module.parametrizations.weight.original
        if isinstance(m, nn.Linear):
            return sparse_linear(x, weight, m.bias, self.pattern)
        return sparse_conv2d(x, weight, m.bias, self.pattern, m.stride[0], m.padding, m.dilation)

    def _sparse_is_faster(self, x: torch.Tensor) -> bool:
        """Time forward and backward of both on this input (medians of 3, alternating): the faster wins."""
        x = x.detach().requires_grad_()
        weight = self.module.parametrizations.weight.original
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(3):
            for sparse in (True, False):
                t0 = time.perf_counter()
                out = self.sparse_forward(x) if sparse else type(self.module).forward(self.module, x)
                torch.autograd.grad(out.sum(), [x, weight])
                times[sparse].append(time.perf_counter() - t0)
        return statistics.median(times[True]) < statistics.median(times[False])


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
            and module.stride[0] == module.stride[1])


@contextmanager
def sparse_kernels(model: nn.Module, mode: Mode = "auto") -> Iterator[dict[str, _Layer]]:
    """Within the block, `model`'s masked conv and linear layers train on the sparse kernels ("on"), or each on
    whichever of sparse and dense it measured faster when its mask was set ("auto"), and its BatchNorms on the
    activations those leave NCHW on the native BatchNorm (`batchnorm.py`); "off" changes nothing, nor does a machine
    where the kernels cannot be built (after one line saying so)."""
    layers: dict[str, _Layer] = {}
    if mode != "off" and library() is not None:
        for name, module in sp.masked_layers(model).items():
            if _supported(module):
                layers[name] = _Layer(module, mode)
                module.forward = _routed(layers[name])
    try:
        with native_batchnorm(model, mode != "off"):
            yield layers
    finally:
        for name in layers:
            del model.get_submodule(name).forward  # the class's own forward again


def _routed(layer: _Layer):
    plain = type(layer.module).forward

    def forward(x):
        return layer.sparse_forward(x) if layer.applies(x) else plain(layer.module, x)
    return forward


__all__ = ["Pattern", "library", "sparse_conv2d", "sparse_kernels", "sparse_linear"]
