"""The original report's data pipeline, rebuilt for side-by-side measurement ("seed"/"baseline").

Per sample, on the CPU, on PIL images, with torchvision transforms, in the report's order:
Resize(36) -> RandomCrop(32) -> RandomHorizontalFlip -> AutoAugment(CIFAR10) -> ToTensor ->
Normalize -> RandomErasing; then CutMix on the collated batch (the reference implementation's
one-box-per-batch form).  This is what fastfm replaces; it is kept only to be timed against.
"""

from __future__ import annotations

import numpy as np
import torch

MEAN, STD = 0.2860, 0.3530


def seed_transform(resize: int = 36, crop: int = 32):
    from torchvision import transforms as T

    return T.Compose([
        T.Resize(resize),
        T.RandomCrop(crop),
        T.RandomHorizontalFlip(),
        T.AutoAugment(T.AutoAugmentPolicy.CIFAR10),
        T.ToTensor(),
        T.Normalize((MEAN,), (STD,)),
        T.RandomErasing(),
    ])


class SeedDataset(torch.utils.data.Dataset):
    """uint8 images (N, 28, 28) as PIL images through :func:`seed_transform`, one sample at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images, self.labels = images, labels
        self.transform = transform or seed_transform()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


def cutmix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int = 10, alpha: float = 1.0,
                 p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix as the reference implementation applies it: one box and one partner order per batch."""
    t = torch.nn.functional.one_hot(y, num_classes).float()
    if np.random.rand() >= p:
        return x, t
    lam = np.random.beta(alpha, alpha)
    perm = torch.randperm(x.shape[0])
    h, w = x.shape[-2:]
    cut = np.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = np.random.randint(h), np.random.randint(w)
    y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch // 2, 0, h)
    x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw // 2, 0, w)
    x = x.clone()
    x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    area = (y1 - y0) * (x1 - x0) / (h * w)
    return x, t * (1 - area) + t[perm] * area


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic stand-in for the dataset when no real data is at hand (same shapes and dtype)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)
