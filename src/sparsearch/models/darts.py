"""Networks built from a genotype (DARTS' NetworkCIFAR): stem, stacked cells with reductions at 1/3
and 2/3 of the depth, optional auxiliary head, drop-path, global pooling, classifier."""

from __future__ import annotations

import torch
import torch.nn as nn

from . import register_model, scaled
from .genotypes import Genotype, load_genotype
from .operations import OPS, FactorizedReduce, ReLUConvBN, drop_path


class Cell(nn.Module):
    def __init__(self, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.preprocess0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.inputs = [src for _, src in edges]
        self.ops = nn.ModuleList(OPS[op](c, 2 if reduction and src < 2 else 1, True) for op, src in edges)
        self.multiplier = len(self.concat)

    def forward(self, s0, s1, drop_prob: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(len(self.ops) // 2):
            total = 0
            for j in (2 * node, 2 * node + 1):
                h = self.ops[j](states[self.inputs[j]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[j], nn.Identity):
                    h = drop_path(h, drop_prob)
                total = total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS' auxiliary classifier at 2/3 depth. Pools to 2x2 adaptively (DARTS: 5x5 pool, stride 3, on
    8x8 maps, which gives the same 2x2 output and the same parameters) so small inputs work too."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False), nn.BatchNorm2d(768), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class GenotypeNetwork(nn.Module):
    """In training mode with `auxiliary=True` the forward pass returns (logits, auxiliary logits)."""

    def __init__(self, genotype: Genotype | str, channels: int = 36, layers: int = 20, num_classes: int = 10,
                 in_channels: int = 3, auxiliary: bool = False, drop_path_prob: float = 0.0, stem_multiplier: int = 3):
        super().__init__()
        genotype = load_genotype(genotype)
        self.genotype, self.drop_path_prob = genotype, drop_path_prob
        c_curr = stem_multiplier * channels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_prev_prev, c_prev, c_curr = c_curr, c_curr, channels
        self.cells = nn.ModuleList()
        reduction_prev = False
        self.aux_at = 2 * layers // 3
        self.auxiliary_head = None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            cell = Cell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == self.aux_at and auxiliary:
                self.auxiliary_head = AuxiliaryHead(c_prev, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x):
        aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_at and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(torch.flatten(self.global_pooling(s1), 1))
        return (logits, aux) if aux is not None else logits


@register_model("genotype", widen=scaled("channels", 36, multiple=2))  # FactorizedReduce halves C
def genotype_network(num_classes: int = 10, in_channels: int = 3, genotype: str | dict = "DARTS_V2",
                     channels: int = 36, layers: int = 20, auxiliary: bool = False, drop_path_prob: float = 0.0):
    """A network from a genotype (name, JSON path or dict). DASS sizes: Tiny 30/16, Small 36/20, Medium 86/12,
    Large 108/14 (channels/layers)."""
    return GenotypeNetwork(genotype, channels, layers, num_classes, in_channels, auxiliary, drop_path_prob)
