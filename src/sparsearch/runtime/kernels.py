"""Inference kernels for conv and linear layers whose weights are mostly zeros.

Each kernel is a module built from a plain (BatchNorm-folded, masks baked in) layer and computes the same
function. Which one a layer gets is decided by measurement (`runtime.compile`); dense stays an option.

    csr      the weight as a CSR matrix (out, in * kh * kw) times the input columns: the input itself for
             Linear and unstrided 1x1 convolutions, im2col (`F.unfold`) otherwise; torch.sparse runs it
             (MKL on x86 builds). Grouped convolutions (depthwise) are not handled and stay dense.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


def _csr(matrix: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # torch calls CSR support beta; we rely on it on purpose
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return matrix.detach().to_sparse_csr()


def _bias(layer: nn.Module) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.detach().clone()


class CSRLinear(nn.Module):
    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.out_features = layer.out_features
        self.weight = _csr(layer.weight)
        self.bias = _bias(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = torch.sparse.mm(self.weight, flat.t()).t()  # (W x^T)^T: torch multiplies sparse-on-the-left
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


class CSRConv2d(nn.Module):
    def __init__(self, layer: nn.Conv2d):
        super().__init__()
        if layer.groups != 1 or not isinstance(layer.padding, tuple):
            raise ValueError("CSRConv2d handles ungrouped convolutions with numeric padding")
        self.out_channels, self.kernel_size = layer.out_channels, layer.kernel_size
        self.stride, self.padding, self.dilation = layer.stride, layer.padding, layer.dilation
        self.pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
        self.weight = _csr(layer.weight.reshape(self.out_channels, -1))
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
        y = torch.sparse.mm(self.weight, cols).reshape(self.out_channels, n, oh, ow).transpose(0, 1).contiguous()
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


def candidates(layer: nn.Module) -> dict[str, nn.Module]:
    """The kernels that can run `layer`, by name; "dense" is the layer itself."""
    out: dict[str, nn.Module] = {"dense": layer}
    if isinstance(layer, nn.Linear):
        out["csr"] = CSRLinear(layer)
    elif isinstance(layer, nn.Conv2d) and layer.groups == 1 and isinstance(layer.padding, tuple) \
            and layer.padding_mode == "zeros":
        out["csr"] = CSRConv2d(layer)
    return out
