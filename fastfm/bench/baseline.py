"""The baseline: the original report's data pipeline, rebuilt only to be timed beside fastfm.

Per sample, on the CPU, on PIL images, with torchvision transforms, in the report's order:
Resize(36) -> RandomCrop(32) -> RandomHorizontalFlip -> AutoAugment(CIFAR10) -> ToTensor ->
Normalize -> RandomErasing; then CutMix on the collated batch (the reference implementation's
one-box-per-batch form).  End to end, a ``DataLoader`` with worker processes runs the transforms and
the main process applies CutMix and trains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from .report import Row
from .timing import Timing, time_fn

MEAN, STD = 0.2860, 0.3530
SIZE = 32           # side of the images the baseline trains on (Resize 36, RandomCrop 32)
DESCRIPTION = ("torchvision transforms on PIL images per sample (Resize 36, RandomCrop 32, flip, "
               "AutoAugment CIFAR10, ToTensor, Normalize, RandomErasing), CutMix per batch")


def baseline_transform(resize: int = 36, crop: int = 32):
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


class BaselineDataset(torch.utils.data.Dataset):
    """uint8 images (N, 28, 28) as PIL images through :func:`baseline_transform`, one at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        self.images, self.labels = images, labels
        self.transform = transform or baseline_transform()

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


def aug_row(images_u8: np.ndarray, labels: np.ndarray, batch_size: int, repeats: int) -> Row:
    """The baseline's augmentation alone (``aug``/``baseline`` row): per-sample transforms, collate
    and CutMix of one batch, in one process on the CPU, as the report ran it (its DataLoader workers
    are timed end to end by :func:`time_training`)."""
    ds = BaselineDataset(images_u8, labels)
    torch.manual_seed(0)

    def run():
        items = [ds[i % len(ds)] for i in range(batch_size)]
        x = torch.stack([a for a, _ in items])
        cutmix_batch(x, torch.tensor([c for _, c in items]))

    t = time_fn(run, torch.device("cpu"), warmup=1, iters=1, repeats=repeats)
    return Row.timed("aug", "baseline", batch_size, t,
                     config=dict(pipeline=DESCRIPTION, processes=1, device="cpu"))


def time_training(step: Callable[[torch.Tensor, torch.Tensor], object], images_u8: np.ndarray,
                  labels: np.ndarray, *, batch_size: int, workers: int, device: torch.device,
                  channels: int, num_classes: int, **timing) -> Timing:
    """The baseline end to end: ``DataLoader`` workers run the per-sample transforms, the main process
    applies CutMix, moves the batch to ``device`` and calls ``step(x, soft_targets)``.

    ``step``: the engine's optimizer step (``HotPath.optimizer_step``), built by the caller for fp32, NCHW.
    ``timing``: :func:`~fastfm.bench.timing.time_fn`'s warm-up, iters and repeats.
    """
    loader = torch.utils.data.DataLoader(
        BaselineDataset(images_u8, labels), batch_size=batch_size, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda")

    def endless() -> Iterator:
        while True:
            yield from loader

    batches = endless()

    def run():
        x, y = next(batches)
        x, t = cutmix_batch(x, y, num_classes)
        x = x.to(device, non_blocking=True).expand(-1, channels, -1, -1)
        step(x, t.to(device, non_blocking=True))

    try:
        return time_fn(run, device, **timing)
    finally:
        batches.close()             # drops the DataLoader's iterator, which stops its workers
