"""In-memory batch loader: uint8 tensors in, augmented and normalised float batches out.

Augmentation (random crop with zero padding, horizontal flip) works on whole batches. Randomness is a
pure function of (seed, epoch, batch index), so a run resumed at batch k of epoch e sees exactly the
batches an uninterrupted run would have seen, with no generator state to save.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import distributed


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 4  # 0 disables the random crop
    flip: bool = True


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:  # a simple, stable mix of the keys into one 63-bit seed
        seed = (seed * 6364136223846793005 + k + 1442695040888963407) % (1 << 63)
    return torch.Generator().manual_seed(seed)


def random_crop_flip(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (after zero padding) and horizontal flip of a (B, C, H, W) batch."""
    b, _, h, w = x.shape
    if aug.crop_padding > 0:
        p = aug.crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
        rows = (dy[:, None] + torch.arange(h)).to(x.device)  # (B, H)
        cols = (dx[:, None] + torch.arange(w)).to(x.device)  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if aug.flip:
        flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


class TensorLoader:
    """Batches of (normalised float images, int64 labels) from uint8 tensors held in memory.

    `mean` and `std` (one value per channel) are on the 0-1 scale of the images divided by 255, as usually
    quoted (CIFAR-10: mean (0.491, 0.482, 0.447)): a batch is (x / 255 - mean) / std."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, mean, std,
                 shuffle: bool = False, augment: Augment | None = None, seed: int = 0,
                 drop_last: bool = False, device: str | torch.device = "cpu"):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last, self.device = seed, drop_last, torch.device(device)
        mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x/255 - mean)/std folded into one multiply-add
        self._scale = (1.0 / (255.0 * std)).to(self.device)
        self._shift = (-mean / std).to(self.device)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else len(self.x)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.x))
        return torch.randperm(len(self.x), generator=_generator(self.seed, self.epoch))

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield batches of the current epoch, beginning at batch index `start`."""
        order = self.order()
        for i in range(start, len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            xb = self.x[idx].to(self.device, non_blocking=True)
            if self.augment is not None:  # the whole batch, so every sample is augmented as in a one-process run
                xb = random_crop_flip(xb, self.augment, _generator(self.seed, self.epoch, i))
            xb, yb = distributed.shard(xb), distributed.shard(self.y[idx])  # under torchrun: this rank's share
            xb = xb.float().mul_(self._scale).add_(self._shift)
            yield xb, yb.to(self.device, non_blocking=True)

    def __iter__(self):
        return self.batches()
