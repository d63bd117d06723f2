"""The architect: updates alpha on validation batches, first order or second order (DARTS' one-step unroll).

Second order: with w' = w - xi * (grad_w L_train(w, a) + wd * w), the alpha gradient is
    dL_val(w', a)/da - xi * [grad_a L_train(w+, a) - grad_a L_train(w-, a)] / (2 eps),
where v = grad_w' L_val(w', a), w+- = w +- eps * v and eps = 0.01 / ||v||. Weights are swapped in place and
restored; every gradient is taken with torch.autograd.grad, so the weights' own .grad is never touched.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed


def _loss(model: nn.Module, x, y) -> torch.Tensor:
    out = model(x)
    return F.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, y)


class Architect:
    def __init__(self, model: nn.Module, arch_params: list[nn.Parameter], lr: float = 3e-4,
                 betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 1e-3, second_order: bool = False):
        self.model, self.arch_params, self.second_order = model, list(arch_params), second_order
        self.optimizer = torch.optim.Adam(self.arch_params, lr=lr, betas=betas, weight_decay=weight_decay)

    def step(self, train_batch, val_batch, weights: list[nn.Parameter], xi: float, weight_decay: float) -> float:
        """One alpha update. `weights` are the parameters the weight optimiser trains now (xi: its lr)."""
        if self.second_order:
            grads, loss = self._unrolled_grads(train_batch, val_batch, weights, xi, weight_decay)
        else:
            loss = _loss(self.model, *val_batch)
            grads = torch.autograd.grad(loss, self.arch_params)
        distributed.average_(list(grads))  # under torchrun each rank saw its share of the batch: alpha stays the same on all
        for p, g in zip(self.arch_params, grads):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    @torch.no_grad()
    def _swap(self, weights, values):
        for w, v in zip(weights, values):
            w.copy_(v)

    def _unrolled_grads(self, train_batch, val_batch, weights, xi, weight_decay):
        original = [w.detach().clone() for w in weights]
        g_train = torch.autograd.grad(_loss(self.model, *train_batch), weights, allow_unused=True)
        unrolled = [w - xi * ((g if g is not None else 0) + weight_decay * w) for w, g in zip(original, g_train)]
        self._swap(weights, unrolled)
        val_loss = _loss(self.model, *val_batch)
        grads = torch.autograd.grad(val_loss, self.arch_params + weights, allow_unused=True)
        d_alpha, v = grads[: len(self.arch_params)], grads[len(self.arch_params):]
        v = [g if g is not None else torch.zeros_like(w) for g, w in zip(v, weights)]
        # in float64: score gradients right after the scaled score init can exceed 1e19, whose square overflows float32
        eps = float(0.01 / torch.sqrt(sum((g.double() ** 2).sum() for g in v)).clamp_min(1e-12))
        self._swap(weights, [w + eps * g for w, g in zip(original, v)])
        g_pos = torch.autograd.grad(_loss(self.model, *train_batch), self.arch_params)
        self._swap(weights, [w - eps * g for w, g in zip(original, v)])
        g_neg = torch.autograd.grad(_loss(self.model, *train_batch), self.arch_params)
        self._swap(weights, original)
        return [da - xi * (gp - gn) / (2 * eps) for da, gp, gn in zip(d_alpha, g_pos, g_neg)], val_loss

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
