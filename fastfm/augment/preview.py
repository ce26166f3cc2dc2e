"""A PNG grid of real images before and after augmentation, one panel per augmenter.

Used by ``scripts/preview_augment.py`` (:func:`preview`: one panel per backend) and by every training
run (:func:`write_grid` with the run's own augmentation: ``runs/<name>/augment.png``).  The figure is
drawn with matplotlib's object-oriented API (no pyplot, no global backend switch: a training process
shares it) and written atomically.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..config import AugConfig, ConfigError
from ..distributed import parse_device
from ..files import atomic_writer, check_writable
from . import BackendUnavailable, create_augmenter


def _to_grid(x: torch.Tensor, mean: float, std: float, nrow: int) -> torch.Tensor:
    """Normalised (B, C, S, S) -> one (H, W) grey image in 0..1 (first channel)."""
    from torchvision.utils import make_grid

    img = (x[:, :1].float() * std + mean).clamp(0, 1).cpu()
    return make_grid(img, nrow=nrow, padding=2, pad_value=1.0)[0]


def write_grid(out: str | Path, augmenters: dict, images: torch.Tensor, labels: torch.Tensor, *,
               mean: float, std: float, rows: int) -> None:
    """Write ``out``: one panel per ``{title: augmenter}``, its top row the ``n`` uint8 ``images``
    as the model sees them at test time, then ``rows`` independent augmented draws of them (CutMix
    and MixUp partners among those ``n``).

    Draws advance the augmenters' own generators only; torch's global generators (which some
    backends use) are restored afterwards, so a caller's random streams are unchanged.
    """
    n = len(images)
    dev = images.device
    devices = [dev.index] if dev.type == "cuda" else []         # a tensor's CUDA device has an index
    panels = []
    with torch.random.fork_rng(devices=devices):
        for title, a in augmenters.items():
            shown = [a.test_transform(images)] + [a(images, labels)[0] for _ in range(rows)]
            panels.append((title, _to_grid(torch.cat(shown), mean, std, nrow=n)))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(panels), 4.2 * (rows + 1) / n + 0.7))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, grid) in zip(axes[0], panels):
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{title}: top row unaugmented (test view),\nbelow: {rows} augmented draws", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    with atomic_writer(out) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight", pad_inches=0.1)   # no empty margin


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

    from ..data.resident import ResidentData

    train = ResidentData.load(data_root, "train", device=device)
    mean, std = train.pixel_stats()
    aug = aug or AugConfig()
    augmenters, status = {}, {}
    for name in backends:
        try:
            augmenters[name] = create_augmenter(dataclasses.replace(aug, backend=name), device, seed=seed,
                                                mean=mean, std=std)
        except BackendUnavailable as exc:
            status[name] = f"missing: {exc}"
            continue
        status[name] = "ok"
    if not augmenters:
        raise BackendUnavailable("no backend could be built: " + "; ".join(f"{k}: {v}" for k, v in status.items()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_grid(out, augmenters, train.images[:n], train.labels[:n], mean=mean, std=std, rows=rows)
    return status
