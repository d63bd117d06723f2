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
from ..kernels.loading import _ptr, library
from ..kernels.sparse_conv import Geometry, Pattern, _pad, _pointwise, forward, pointwise
from .batchnorm import native_batchnorm

Mode = Literal["off", "on", "auto"]


def _weight_grad(kept: torch.Tensor, p: Pattern, shape: torch.Size) -> torch.Tensor:
    """The kept weights' gradients in the dense weight's shape, zeros elsewhere."""
    grad_w = kept.new_zeros(shape.numel())
    grad_w[p.at] = kept
    return grad_w.view(shape)


def _bias_grad(ctx, grad: torch.Tensor) -> torch.Tensor | None:
    return grad.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None


class _SparseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, pattern: Pattern, g: Geometry, threads: int):
        values = weight.detach().reshape(-1)[pattern.at].contiguous()
        ctx.pattern, ctx.geometry, ctx.threads, ctx.weight_shape = pattern, g, threads, weight.shape
        ctx.has_bias = bias is not None
        x = x.detach()
        if _pointwise(g):
            x = x.contiguous()  # its backward's flat_dot reads the planes directly; the general one takes any layout
        out = forward(x, values, None if bias is None else bias.detach().contiguous(), pattern, g, threads)
        ctx.save_for_backward(x, values)  # not the padded input: x is kept alive anyway (by the ReLU before it, say)
        return out

    @staticmethod
    def backward(ctx, grad):
        if _pointwise(ctx.geometry):
            return _SparseConv.pointwise_backward(ctx, grad.contiguous())
        return _SparseConv.general_backward(ctx, grad)

    @staticmethod
    def pointwise_backward(ctx, grad):
        x, values = ctx.saved_tensors
        p, g, lib, threads = ctx.pattern, ctx.geometry, library(), ctx.threads
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            rows, outs, order = p.by_input()
            by_input = values[order].contiguous()
            grad_x = pointwise(grad, rows, outs, by_input, None, g.C, threads)
        if ctx.needs_input_grad[1]:  # each kept weight: its gradient plane dotted with its input plane
            off, kept = p.cin.long() * (g.H * g.W), values.new_empty(len(values))
            lib.flat_dot(g.N, g.O, g.H * g.W, g.H * g.W, g.C * g.H * g.W, _ptr(grad), _ptr(x), _ptr(p.rows), _ptr(off),
                         len(values), _ptr(kept), threads)
            grad_w = _weight_grad(kept, p, ctx.weight_shape)
        return grad_x, grad_w, _bias_grad(ctx, grad), None, None, None

    @staticmethod
    def general_backward(ctx, grad):
        x, values = ctx.saved_tensors
        p, g, lib, threads = ctx.pattern, ctx.geometry, library(), ctx.threads
        f = p.flat(g)  # made by the forward, cached in the pattern
        grad = grad.contiguous()
        grad_x = grad_w = None
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
            grad_w = _weight_grad(kept, p, ctx.weight_shape)
        return grad_x, grad_w, _bias_grad(ctx, grad), None, None, None


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pattern: Pattern, stride: int,
                  padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """conv2d(x, weight * mask, bias) on the sparse kernels; the gradient reaches `weight` at its kept positions."""
    geometry = Geometry.of(x.shape, weight.shape, stride, padding, dilation)
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
