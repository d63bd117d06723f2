"""The plain implementations of the training path, as wave 1 wrote them: each mixed edge sums every operation's term
(`none` included), each computing its own ReLU; the operations run their plain layers (no `TrainingRewrites`; torch's
own slice in FactorizedReduce); the CIFAR ViT's attention is torch's fused kernel. No product path uses them: the
tests check the fast path against them, and `sparsearch bench search --implementations` and `sparsearch bench book`
time them as their baseline. `plain_layers()` swaps them in for the length of a `with` block (restored after it,
also on an exception)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import vit
from ..models.operations import DilConv, FactorizedReduce, ReLUConvBN
from ..search.supernet import MixedOp


def _plain_mixed(self: MixedOp, x, weights, into=None):
    out = sum(w * op(x) for w, op in zip(weights, self.ops))
    return out if into is None else into + out


def _plain_factorized_reduce(self: FactorizedReduce, x):
    # its convolutions on NCHW: oneDNN's AVX2 channels-last 1x1 stride-2 weight gradient is wrong (operations.py)
    x = self.relu(x).contiguous()
    return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


@contextmanager
def plain_layers() -> Iterator[None]:
    swaps = [(MixedOp, _plain_mixed), (ReLUConvBN, nn.Sequential.forward), (DilConv, nn.Sequential.forward),
             (FactorizedReduce, _plain_factorized_reduce)]
    saved = [(cls, cls.__dict__["forward"]) for cls, _ in swaps]
    written_out = vit.attention
    try:
        for cls, forward in swaps:
            cls.forward = forward
        vit.attention = F.scaled_dot_product_attention
        yield
    finally:
        for cls, forward in saved:
            cls.forward = forward
        vit.attention = written_out
