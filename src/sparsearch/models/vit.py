"""A Vision Transformer for small images (Dosovitskiy et al. 2021, at CIFAR scale: patch 4 on 32x32 gives 64
tokens). Attention is `nn.MultiheadAttention` (attention="torch"; its packed q/k/v projection is masked like any
linear layer) or a hand-written one (attention="manual": a q/k/v Linear and scaled dot-product attention), so both
ways users write attention are tested with every method."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register_model, scaled


class SelfAttention(nn.Module):
    """Multi-head self-attention written out: one Linear for q, k and v, one for the output."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(attention(q, k, v).transpose(1, 2).reshape(b, t, d))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v. Training on the CPU under autocast it is written out in float32 (the inputs'
    rounded values, the output in their dtype): torch's fused CPU kernel's bf16 backward is 5-10x slower than that at
    a CIFAR ViT's sizes ([128, 2, 65, 32]: 103 vs 16 ms forward and backward; Sapphire Rapids, torch 2.13), 70% of a
    training step. Elsewhere (evaluation, export, float32, CUDA) it is torch's fused kernel."""
    if not (q.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v)
    with torch.autocast("cpu", enabled=False):
        scores = q.float() @ k.float().transpose(-2, -1) * q.shape[-1] ** -0.5
        return (scores.softmax(-1) @ v.float()).to(v.dtype)


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attention: str):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.torch_attention = attention == "torch"
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True) if self.torch_attention else SelfAttention(dim, heads)
        hidden = round(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + (self.attn(y, y, y, need_weights=False)[0] if self.torch_attention else self.attn(y))
        return x + self.mlp(self.norm2(x))


@register_model("vit", widen=scaled("dim", 192, multiple=12))
class ViT(nn.Module):
    """ViT for 32x32 images by default (64 patches of 4x4 plus a class token; dim 192, depth 6, 3 heads: 1.8M
    parameters). For digits (8x8): image_size=8, patch=2."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, patch: int = 4,
                 dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 2.0, attention: str = "torch"):
        super().__init__()
        if attention not in ("torch", "manual"):
            raise ValueError(f"attention must be 'torch' (nn.MultiheadAttention) or 'manual', got {attention!r}")
        if image_size % patch or dim % heads:
            raise ValueError(f"image_size {image_size} must divide by patch {patch}, and dim {dim} by heads {heads}")
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, attention) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


@register_model("vit_tiny", widen=scaled("dim", 192, multiple=12))
def vit_tiny(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224, attention: str = "torch",
             dim: int = 192) -> nn.Module:
    """ViT-Tiny/16 (Touvron et al. 2021's DeiT-Tiny shape): 224x224 in 196 patches of 16x16 plus a class token, dim 192,
    depth 12, 3 heads, MLP ratio 4; 5.7M parameters for 1000 classes."""
    return ViT(num_classes, in_channels, image_size, 16, dim=dim, depth=12, heads=3, mlp_ratio=4.0, attention=attention)


@register_model("encoder")
class Encoder(nn.Module):
    """A BERT-style encoder (Devlin et al. 2019: post-norm layers, GELU, nn.TransformerEncoder's own layers) over
    embedded tokens: input (batch, tokens, dim) floats, output the classes from the first token. BERT-Tiny's shape by
    default (dim 128, 2 layers, 2 heads, MLP 512). No width rule: its input is as wide as it is."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, dim: int = 128, depth: int = 2, heads: int = 2,
                 hidden: int = 512):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, heads, hidden, dropout=0.0, activation="gelu", batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[:, 0])
