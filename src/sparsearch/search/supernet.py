"""The DARTS supernet: every edge of every cell holds all 8 operations mixed by softmax(alpha).

alpha lives in `SuperNet.arch` (its own module) so that `weight_parameters()` never includes it: only the
architect updates alpha (the DASS reference code lets the weight optimiser update alpha too; we do not).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.genotypes import Genotype
from ..models.operations import OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN

CONV_OPS = {"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"}


class MixedOp(nn.Module):
    """sum_k softmax(alpha)_k op_k(x), added to `into` (the node's running sum) when given. The `none` term (x * 0) is
    left out, the four convolutional operations share one ReLU(x) instead of computing it each, and the weighted
    terms accumulate in place (one fused multiply-add each instead of a product and a fresh sum): the same function
    as the plain sum (`sparsearch.bench.plain`) with less work."""

    def __init__(self, c: int, stride: int):
        super().__init__()
        self.ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = OPS[name](c, stride, False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
            self.ops.append(op)

    def forward(self, x, weights, into=None):
        relu_x = F.relu(x)
        total = into
        for k, (name, op) in enumerate(zip(PRIMITIVES, self.ops)):
            if name == "none":
                continue
            y = op.after_relu(relu_x) if name in CONV_OPS else op(x)
            total = weights[k] * y if total is None else total.addcmul_(weights[k], y)
        return total


class SearchCell(nn.Module):
    def __init__(self, steps: int, multiplier: int, c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
        self.preprocess0 = (FactorizedReduce(c_prev_prev, c, affine=False) if reduction_prev
                            else ReLUConvBN(c_prev_prev, c, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(MixedOp(c, 2 if reduction and j < 2 else 1)
                                   for i in range(steps) for j in range(2 + i))

    def forward(self, s0, s1, weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node = None
            for j, h in enumerate(states):
                node = self.edges[offset + j](h, weights[offset + j], node)
            states.append(node)
            offset += len(states) - 1
        return torch.cat(states[-self.multiplier:], dim=1)


class ArchParameters(nn.Module):
    def __init__(self, edges: int, ops: int):
        super().__init__()
        self.normal = nn.Parameter(1e-3 * torch.randn(edges, ops))
        self.reduce = nn.Parameter(1e-3 * torch.randn(edges, ops))


class SuperNet(nn.Module):
    def __init__(self, channels: int = 16, layers: int = 8, num_classes: int = 10, in_channels: int = 3,
                 steps: int = 4, multiplier: int = 4, stem_multiplier: int = 3):
        super().__init__()
        self.steps = steps
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(steps, multiplier, c_prev_prev, c_prev, c_curr, reduction, reduction_prev))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)
        self.arch = ArchParameters(sum(2 + i for i in range(steps)), len(PRIMITIVES))

    def forward(self, x):
        w_normal, w_reduce = F.softmax(self.arch.normal, dim=-1), F.softmax(self.arch.reduce, dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(torch.flatten(self.global_pooling(s1), 1))

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.parameters())

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def genotype(self) -> Genotype:
        return derive_genotype(F.softmax(self.arch.normal, -1), F.softmax(self.arch.reduce, -1), self.steps)


def _derive_cell(weights: torch.Tensor, steps: int) -> tuple[tuple[str, int], ...]:
    """DARTS rule: per node, the two incoming edges with the strongest non-none operation; that operation on each."""
    none = PRIMITIVES.index("none")
    w = weights.detach().clone()
    w[:, none] = -float("inf")
    chosen, start = [], 0
    for i in range(steps):
        rows = w[start : start + 2 + i]
        best = rows.max(dim=1)
        order = torch.argsort(best.values, descending=True, stable=True)[:2]
        for j in sorted(order.tolist()):
            chosen.append((PRIMITIVES[int(best.indices[j])], j))
        start += 2 + i
    return tuple(chosen)


def derive_genotype(normal: torch.Tensor, reduce: torch.Tensor, steps: int = 4) -> Genotype:
    concat = tuple(range(2, 2 + steps))
    return Genotype(_derive_cell(normal, steps), _derive_cell(reduce, steps), concat, concat)
