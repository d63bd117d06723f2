"""The training kernels' libraries, built and loaded by `sparsearch.native`, with their functions' argument types:
`sparse_kernels.cpp` (the sparse convolution's three products and BatchNorm on NCHW planes) and `depthwise.cpp`
(depthwise convolution on NHWC activations)."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import torch

from ..native import load, shared_headers

SOURCE = Path(__file__).with_name("sparse_kernels.cpp")
DEPTHWISE = Path(__file__).with_name("depthwise.cpp")


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    lib = load("training", SOURCE, shared_headers(), instead="training runs PyTorch's dense kernels")
    if lib is not None:
        i64, ptr, c_int, c_float = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
        lib.tile_correlate.argtypes = [i64] * 6 + [ptr] * 6 + [c_int] * 3
        lib.flat_dot.argtypes = [i64] * 5 + [ptr] * 4 + [i64, ptr, c_int]
        lib.pad_planes.argtypes = [i64] * 3 + [ptr] + [i64] * 4 + [ptr, c_int]
        lib.pointwise.argtypes = [i64] * 5 + [ptr] * 6 + [c_int]
        lib.linear_rows.argtypes = [i64] * 3 + [ptr] * 7 + [c_int]
        lib.batchnorm_forward.argtypes = [i64] * 3 + [ptr] * 3 + [c_float] + [ptr] * 4 + [c_int]
        lib.batchnorm_backward.argtypes = [i64] * 3 + [ptr] * 8 + [c_int]
        for fn in (lib.tile_correlate, lib.pointwise, lib.linear_rows, lib.flat_dot, lib.pad_planes, lib.batchnorm_forward,
                   lib.batchnorm_backward):
            fn.restype = None
    return lib


@lru_cache(maxsize=1)
def depthwise_library() -> ctypes.CDLL | None:
    lib = load("depthwise", DEPTHWISE, shared_headers(), instead="depthwise convolutions run PyTorch's kernels")
    if lib is not None:
        i64, ptr, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
        lib.depthwise_correlate.argtypes = [c_int] + [i64] * 5 + [ptr, c_int] + [ptr] * 3 + [c_int]
        lib.depthwise_weight_grad.argtypes = [c_int] + [i64] * 6 + [ptr, c_int] + [ptr] * 3 + [c_int]
        lib.depthwise_correlate.restype = lib.depthwise_weight_grad.restype = None
        lib.vector_width.restype = lib.most_vectors.restype = lib.slack.restype = c_int
    return lib


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    # the caller keeps `t` alive until the native call returns: a temporary freed here would leave a dangling pointer
    return ctypes.c_void_p(0 if t is None else t.data_ptr())
