"""A PNG grid of real images before and after augmentation, one panel per backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..config import ConfigError
from ..distributed import parse_device
from ..files import check_writable
from . import BackendUnavailable, create_augmenter
from .config import AugConfig


def _to_grid(x: torch.Tensor, mean: float, std: float, nrow: int) -> torch.Tensor:
    """Normalised (B, C, S, S) -> one (H, W) grey image in 0..1 (first channel)."""
    from torchvision.utils import make_grid

    img = (x[:, :1].float() * std + mean).clamp(0, 1).cpu()
    return make_grid(img, nrow=nrow, padding=2, pad_value=1.0)[0]


def preview(out: str | Path, *, backends=("native",), data_root="data", n: int = 8, rows: int = 4,
            seed: int = 0, device="cpu", aug: AugConfig | None = None) -> dict:
    """Write ``out``: for each backend, ``n`` training images (top row: the test-time view) and
    ``rows`` independent augmentations of each.  Returns {backend: "ok" | reason it is missing}.

    Raises, before any data is read, an error naming the script's option: :class:`ConfigError`
    (``--n``, ``--rows`` below 1), :class:`~fastfm.distributed.DeviceError` (``--device``) or
    :class:`~fastfm.files.OutputPathError` (``--out``); :class:`BackendUnavailable` when no backend
    could be built.
    """
    for name, value in (("--n", n), ("--rows", rows)):
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    device = parse_device(str(device))
    check_writable(out, "--out")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.resident import ResidentData

    train = ResidentData.load(data_root, "train", device=device)
    mean, std = train.pixel_stats()
    images, labels = train.images[:n], train.labels[:n]
    aug = aug or AugConfig()
    panels, status = [], {}
    for name in backends:
        try:
            a = create_augmenter(dataclasses.replace(aug, backend=name), device, seed=seed,
                                 mean=mean, std=std)
        except BackendUnavailable as exc:
            status[name] = f"missing: {exc}"
            continue
        shown = [a.test_transform(images)] + [a(images, labels)[0] for _ in range(rows)]
        panels.append((name, _to_grid(torch.cat(shown), mean, std, nrow=n)))
        status[name] = "ok"
    if not panels:
        raise BackendUnavailable("no backend could be built: " + "; ".join(f"{k}: {v}" for k, v in status.items()))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2 * (rows + 1) / n + 0.7), squeeze=False)
    for ax, (name, grid) in zip(axes[0], panels):
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{name}: top row unaugmented (test view),\nbelow: {rows} augmented draws", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return status
