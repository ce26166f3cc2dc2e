"""The images a benchmark runs on: the prepared dataset when there is one, random images otherwise
(the cost of every op and step does not depend on the pixels), and a synthetic batch for the
step-only rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import Config
from ..data.idx import DataError
from ..data.resident import ResidentData


def benchmark_images(device: torch.device, n: int, data_root) -> tuple[ResidentData, str]:
    """The first ``n`` training images on ``device`` and where they came from, in words.

    Synthetic images when the dataset is missing or unreadable.  Raises ``ValueError`` when the
    dataset holds fewer than ``n`` images.
    """
    try:
        data = ResidentData.load(data_root, "train", device=device, limit=n)
        source = f"Fashion-MNIST ({data_root})"
    except DataError as exc:
        data = ResidentData.synthetic(n, device=device)
        source = f"synthetic ({exc})"
    if len(data) < n:
        raise ValueError(f"--batch-size: the run needs {n} images, but {data_root} holds only "
                         f"{len(data)}; lower --batch-size")
    return data, source


def synthetic_batch(cfg: Config, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What the step sees after augmentation: a normalised-looking float batch (B, C, S, S) in the
    configured memory format, and one-hot float targets (B, K)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = cfg.aug
    x = torch.randn(batch, a.channels, a.out_size, a.out_size, generator=g, device=device)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, a.num_classes, (batch,), generator=g, device=device)
    return x, F.one_hot(y, a.num_classes).float()
