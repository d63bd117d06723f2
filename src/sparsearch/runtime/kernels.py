"""Inference kernels for conv and linear layers whose weights are mostly zeros.

Each kernel is a module built from a plain (BatchNorm-folded, masks baked in) layer and computes the same
function. Which one a layer gets is decided by measurement (`runtime.compile`); dense stays an option.

    csr      the weight as a CSR matrix (out, in * kh * kw) times the input columns: the input itself for
             Linear and unstrided 1x1 convolutions, im2col (`F.unfold`) otherwise; torch.sparse runs it
             (MKL on x86 builds).
    bsr      the same product with the weight as a block-sparse (BSR) matrix; a candidate only where the mask is
             made of blocks on that (out, in * kh * kw) view (the `block` mask kind), found by `block_size`.
    taps     (needs numba, the `fast` extra) no im2col: the zero-padded input is laid out once as (in, N * Hp * Wp),
             where the kernel tap (i, j) is a shift by i * Wp + j. Per output channel (in parallel) and per
             block of output positions, each non-zero weight adds weight x the shifted input row (an axpy over
             contiguous memory, which LLVM vectorises). Grouped and depthwise convolutions are the same loop
             with each weight reading its group's channel. Strided convolutions compute the stride-1 grid and
             subsample it. torch.sparse's CSR product reached about 1 GFLOP/s on these shapes here, this loop
             about 10 (one thread).
    native   the sparse training kernels' forward (`kernels/sparse_conv.py`, on the inference engine's convolution
             tile): a 1x1 convolution or linear layer as tiles of 64 positions over every output channel, any other
             convolution as output tiles over the input padded once (split into phase planes where strided), a
             linear layer as those tiles over its rows (tokens x features), transposed in and out inside the kernel.
`csr` and `bsr` handle ungrouped convolutions only. A max pool's one other kernel is `nhwc` (PyTorch's channels-last
max pool between two layout copies). N:M masks run on these general kernels: a CPU has no
sparse tensor cores, and their one regularity (the same count per row) saves little here.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import sparse_conv
from ..kernels.loading import library

try:
    import numba
except ImportError:  # the `fast` extra is not installed: the taps kernel is simply not a candidate
    numba = None

if numba is not None:
    @numba.njit(cache=True, fastmath=True)
    def _axpy(acc, w, src, n):
        for i in range(n):
            acc[i] += w * src[i]

    @numba.njit(cache=True, fastmath=True)
    def _axpy4(acc, w0, s0, w1, s1, w2, s2, w3, s3, n):
        for i in range(n):
            acc[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i]

    @numba.njit(parallel=True, cache=True, fastmath=True)
    def _taps_product(indptr, cols, offsets, values, x, out, length, block):
        """out[o, q] += sum over the non-zeros k of row o: values[k] * x[cols[k], q + offsets[k]], q < length.
        Four non-zeros per pass over the accumulator: one load and store of it per four multiply-adds."""
        for o in numba.prange(out.shape[0]):
            for q0 in range(0, length, block):
                n = min(q0 + block, length) - q0
                acc = out[o, q0:q0 + n]
                k, end = indptr[o], indptr[o + 1]
                while k + 4 <= end:
                    _axpy4(acc, values[k], x[cols[k], q0 + offsets[k]:], values[k + 1], x[cols[k + 1], q0 + offsets[k + 1]:],
                           values[k + 2], x[cols[k + 2], q0 + offsets[k + 2]:],
                           values[k + 3], x[cols[k + 3], q0 + offsets[k + 3]:], n)
                    k += 4
                while k < end:
                    _axpy(acc, values[k], x[cols[k], q0 + offsets[k]:], n)
                    k += 1


def _sparse(matrix: torch.Tensor, blocksize: tuple[int, int] | None = None) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls CSR/BSR support beta; we rely on it on purpose
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        matrix = matrix.detach()
        return matrix.to_sparse_bsr(blocksize) if blocksize else matrix.to_sparse_csr()


def block_size(matrix: torch.Tensor, sizes=((32, 32), (16, 16), (8, 8), (4, 4))) -> tuple[int, int] | None:
    """The largest block shape whose non-zero blocks are at least 80% filled and at most half of all blocks: a
    mask made of blocks. None for unstructured masks (their scattered non-zeros touch most blocks)."""
    rows, cols = matrix.shape
    nonzero = matrix != 0
    nnz = int(nonzero.sum())
    for bh, bw in sizes:
        if rows % bh or cols % bw or nnz == 0:
            continue
        blocks = nonzero.reshape(rows // bh, bh, cols // bw, bw).any(3).any(1)
        used = int(blocks.sum())
        if used * bh * bw <= 1.25 * nnz and used <= blocks.numel() // 2:
            return bh, bw
    return None


def _bias(layer: nn.Module) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.detach().clone()


class CSRLinear(nn.Module):
    """The `csr` kernel (or `bsr`, given a block size) for linear layers."""

    def __init__(self, layer: nn.Linear, blocksize: tuple[int, int] | None = None):
        super().__init__()
        self.out_features = layer.out_features
        self.weight = _sparse(layer.weight, blocksize)
        self.bias = _bias(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = (self.weight @ flat.t()).t()  # (W x^T)^T: torch multiplies sparse-on-the-left
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class CSRConv2d(nn.Module):
    """The `csr` kernel (or `bsr`, given a block size) for ungrouped convolutions."""

    def __init__(self, layer: nn.Conv2d, blocksize: tuple[int, int] | None = None):
        super().__init__()
        if layer.groups != 1 or not isinstance(layer.padding, tuple):
            raise ValueError("CSRConv2d handles ungrouped convolutions with numeric padding")
        self.out_channels, self.kernel_size = layer.out_channels, layer.kernel_size
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        self.pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
        self.weight = _sparse(layer.weight.reshape(self.out_channels, -1), blocksize)
        self.bias = _bias(layer)

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        sizes = []
        for size, k, s, p, d in zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation):
            sizes.append((size + 2 * p - d * (k - 1) - 1) // s + 1)
        return sizes[0], sizes[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        oh, ow = self._out_size(h, w)
        if self.pointwise:
            cols = x.transpose(0, 1).reshape(c, n * h * w)  # (C, N*H*W)
        else:
            unfolded = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C*k*k, L)
            cols = unfolded[0] if n == 1 else unfolded.transpose(0, 1).reshape(unfolded.shape[1], -1)
        # back to NCHW, contiguous: the next layer's kernels (depthwise ones above all) are slow on strided inputs
        y = (self.weight @ cols).reshape(self.out_channels, n, oh, ow).transpose(0, 1).contiguous()
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


class TapsConv2d(nn.Module):
    """The `taps` kernel (numba) for convolutions (grouped and depthwise too) and, as a 1 x 1 convolution, linear
    layers."""

    block = 2048  # output positions per inner pass: the accumulator (8 KB) stays in L1

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        weight = layer.weight.detach()
        self.linear = weight.dim() == 2
        if self.linear:
            weight = weight[:, :, None, None]
            self.stride, self.padding, self.dilation = (1, 1), (0, 0), (1, 1)
            groups = 1
        else:
            if not isinstance(layer.padding, tuple):
                raise ValueError("TapsConv2d handles convolutions with numeric padding")
            self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
            groups = layer.groups
        self.out_channels, in_per_group, kh, kw = weight.shape
        self.span = (self.dilation[0] * (kh - 1), self.dilation[1] * (kw - 1))
        o, c, i, j = weight.nonzero(as_tuple=True)  # row-major: sorted by output channel
        self.values = weight[o, c, i, j].float().numpy().copy()
        # the input channel a weight reads: its group's first channel plus its index within the group
        self.cols = ((o // (self.out_channels // groups)) * in_per_group + c).numpy().astype("int64")
        self.tap_rows = (i * self.dilation[0]).numpy().astype("int64")
        self.tap_cols = (j * self.dilation[1]).numpy().astype("int64")
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.long),
                                 torch.bincount(o, minlength=self.out_channels).cumsum(0)]).numpy()
        self.bias = _bias(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if self.linear:
            lead = x.shape[:-1]
            x = x.reshape(-1, x.shape[-1], 1, 1)
        n, c, h, w = x.shape
        (ph, pw), (sh, sw) = self.padding, self.span
        hp, wp = h + 2 * ph, w + 2 * pw
        padded = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        flat = (padded[0].reshape(c, hp * wp) if n == 1 else padded.transpose(0, 1).reshape(c, n * hp * wp))
        flat = flat.float().contiguous().numpy()
        out = torch.zeros(self.out_channels, n * hp * wp)
        _taps_product(self.indptr, self.cols, self.tap_rows * wp + self.tap_cols, self.values, flat, out.numpy(),
                      n * hp * wp - (sh * wp + sw), self.block)
        torch.set_num_threads(threads)  # numba's OpenMP layer left torch's thread count at every core
        y = out.view(self.out_channels, n, hp, wp)[:, :, : hp - sh: self.stride[0], : wp - sw: self.stride[1]]
        y = y.transpose(0, 1).contiguous()
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.reshape(*lead, self.out_channels) if self.linear else y


class NativeConv2d(nn.Module):
    """The `native` kernel for convolutions (grouped and depthwise too: each kept weight reads its group's channel)
    and linear layers, on float32 CPU tensors."""

    def __init__(self, layer: nn.Conv2d | nn.Linear):
        super().__init__()
        weight = layer.weight.detach().float()
        self.linear = weight.dim() == 2
        if not self.linear and not (isinstance(layer.padding, tuple) and layer.stride[0] == layer.stride[1]):
            raise ValueError("NativeConv2d handles convolutions with numeric padding and equal strides")
        groups, cin = (1, weight.shape[1]) if self.linear else (layer.groups, layer.in_channels)
        self.pattern = sparse_conv.Pattern(weight != 0, groups, cin)
        self.values = weight.reshape(-1)[self.pattern.at].contiguous()
        self.weight_shape = weight.shape if not self.linear else (*weight.shape, 1, 1)
        self.settings = ((1, (0, 0), (1, 1)) if self.linear else (layer.stride[0], layer.padding, layer.dilation))
        self.bias = None if layer.bias is None else layer.bias.detach().float().contiguous()

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        g = sparse_conv.Geometry.of(x.shape, self.weight_shape, *self.settings)
        return sparse_conv.forward(x.float(), self.values, self.bias, self.pattern, g, torch.get_num_threads())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.linear:
            return self._conv(x)
        out = sparse_conv.linear_rows(x.reshape(-1, x.shape[-1]).float(), self.values, self.bias, self.pattern,
                                      torch.get_num_threads())
        return out.view(*x.shape[:-1], -1)


class ChannelsLastMaxPool2d(nn.MaxPool2d):
    """The `nhwc` kernel for max pooling: PyTorch's NCHW max pool is not vectorised on the CPU (6.4 ms for ResNet-50's
    64 x 112 x 112 stem output, one thread, 2-core Zen 4) and its channels-last one is (0.4 ms); two layout copies
    cost less than the difference. The same function: a maximum is exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def candidates(layer: nn.Module, only: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
    """The kernels that can run `layer`, by name (those in `only`, where given); "dense" is the layer itself."""
    out: dict[str, nn.Module] = {"dense": layer}
    wanted = (lambda kind: only is None or kind in only)  # noqa: E731 - building a kernel costs a layout
    if isinstance(layer, nn.MaxPool2d):
        if not layer.return_indices and wanted("nhwc"):
            out["nhwc"] = ChannelsLastMaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                                ceil_mode=layer.ceil_mode)
        return out
    matmul = {nn.Linear: CSRLinear, nn.Conv2d: CSRConv2d}.get(type(layer))
    if isinstance(layer, nn.Conv2d) and not (isinstance(layer.padding, tuple) and layer.padding_mode == "zeros"):
        return out
    if matmul is not None and getattr(layer, "groups", 1) == 1:
        if wanted("csr"):
            out["csr"] = matmul(layer)
        if wanted("bsr") and (blocks := block_size(layer.weight.detach().reshape(layer.weight.shape[0], -1))):
            out["bsr"] = matmul(layer, blocks)
    native = library() is not None and (isinstance(layer, nn.Linear) or layer.stride[0] == layer.stride[1])
    if native and wanted("native"):
        out["native"] = NativeConv2d(layer)
    # taps only where native cannot run (or asked for by name): numba's OpenMP is a second thread pool beside torch's,
    # whose workers spin after each call and take a core from the next operation on a small machine
    if numba is not None and isinstance(layer, (nn.Linear, nn.Conv2d)) and (only is not None and "taps" in only
                                                                              or only is None and not native):
        out["taps"] = TapsConv2d(layer)
    return out
