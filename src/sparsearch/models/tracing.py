"""What one traced forward pass tells about a model's data flow."""

from __future__ import annotations

import torch
import torch.nn as nn


def conv_bn_pairs(model: nn.Module, example: torch.Tensor, affine_only: bool = True) -> dict[str, str]:
    """BatchNorm name -> the name of the convolution whose output it normalises directly (found by tracing one
    forward pass of `example`); BatchNorms without a learned scale and shift only when not `affine_only`."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # holding the outputs keeps their ids from being reused
    pairs: dict[str, str] = {}

    def conv_hook(name):
        return lambda mod, inputs, out: produced.__setitem__(id(out), (name, out))

    def bn_hook(name):
        def hook(mod, inputs):
            if (src := produced.get(id(inputs[0]))) is not None and src[1] is inputs[0]:
                pairs[name] = src[0]
        return hook

    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            hooks.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.affine or not affine_only):
            hooks.append(m.register_forward_pre_hook(bn_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return pairs
