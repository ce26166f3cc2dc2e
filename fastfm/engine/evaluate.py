"""Evaluation: test loss, accuracy, per-class accuracy and the confusion matrix, with optional
test-time augmentation, exact across ranks.

Each rank evaluates its contiguous shard of the test set (:func:`fastfm.data.resident.eval_loader`:
nothing dropped, nothing repeated); the summed loss and the confusion counts of all ranks are added
with one all-reduce, so accuracy under DDP is exactly the single-process figure.  Call it with the unwrapped
model (not the DDP wrapper, whose forward would broadcast buffers and expect a backward).

TTA: every view is a deterministic transform of the uint8 batch followed by the augmenter's own
test transform (``augmenter.test_transform``: resize, centre crop, normalise); the views' softmax
probabilities are averaged.  Views: the image itself, its horizontal flip (``tta_flip``), and the
image shifted by ``(+-s, +-s)`` pixels with zero fill (``tta_shift = s``; zero is the background of
Fashion-MNIST), i.e. the four corner crops of the zero-padded image.  With both: 10 views.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import all_reduce_sum

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

View = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EvalResult:
    """Summed over all ranks.  ``confusion[t][p]``: test images of class t predicted as p."""

    loss: float
    correct: int
    total: int
    confusion: list[list[int]]

    @property
    def acc(self) -> float:
        return self.correct / max(1, self.total)

    def per_class(self, classes: tuple[str, ...] = CLASSES) -> dict[str, float]:
        """Accuracy (recall) of every class, keyed by class name."""
        return {name: row[i] / max(1, sum(row)) for i, (name, row) in enumerate(zip(classes, self.confusion))}


def shift_images(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the content of a (B, C, H, W) batch by ``dy`` rows and ``dx`` columns, zero-filled."""
    s = max(abs(dy), abs(dx))
    h, w = images.shape[-2:]
    padded = F.pad(images, (s, s, s, s))
    return padded[..., s - dy:s - dy + h, s - dx:s - dx + w]


def tta_views(transform: View, flip: bool, shift: int) -> list[View]:
    """The TTA views (see the module docstring); the first is ``transform`` itself."""
    offsets = [(0, 0)]
    if shift:
        offsets += [(dy, dx) for dy in (-shift, shift) for dx in (-shift, shift)]
    views = []
    for flipped in ((False, True) if flip else (False,)):
        for dy, dx in offsets:
            views.append(_view(transform, flipped, dy, dx))
    return views


def _view(transform: View, flipped: bool, dy: int, dx: int) -> View:
    def view(images: torch.Tensor) -> torch.Tensor:
        if flipped:
            images = images.flip(-1)
        if dy or dx:
            images = shift_images(images, dy, dx)
        return transform(images)
    return view


@torch.inference_mode()
def evaluate(model: nn.Module, loader, views: list[View], autocast: Callable, num_classes: int) -> EvalResult:
    """Evaluate ``model`` on this rank's ``loader`` (uint8 images, int64 labels), summed over ranks.

    ``views``: functions uint8 batch -> model input; their softmax probabilities are averaged (one
    view: plain evaluation).  The loss is the mean negative log of the averaged probability of the
    true class.  One host sync, at the end.  The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    k = num_classes
    device = next(model.parameters()).device
    stats = torch.zeros(1 + k * k, dtype=torch.float64, device=device)   # [loss sum, confusion]
    log_views = math.log(len(views))
    for images, labels in loader:
        logp = []
        for view in views:
            with autocast():
                logits = model(view(images))
            logp.append(F.log_softmax(logits.float(), dim=1))
        logp = torch.logsumexp(torch.stack(logp), dim=0) - log_views
        stats[0] += F.nll_loss(logp, labels, reduction="sum")
        stats[1:] += torch.bincount(labels * k + logp.argmax(dim=1), minlength=k * k)
    model.train(was_training)
    all_reduce_sum(stats)
    values = stats.tolist()
    confusion = [[int(c) for c in values[1 + r * k:1 + (r + 1) * k]] for r in range(k)]
    total = sum(map(sum, confusion))
    correct = sum(confusion[i][i] for i in range(k))
    return EvalResult(loss=values[0] / max(1, total), correct=correct, total=total, confusion=confusion)
