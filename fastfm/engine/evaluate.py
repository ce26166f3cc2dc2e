"""Evaluation: test loss, accuracy, per-class accuracy and the confusion matrix, with optional
test-time augmentation, exact across ranks.

Each rank evaluates its contiguous shard of the test set (``EpochLoader(even=False)``: nothing
dropped, nothing repeated); the summed loss and the confusion counts of all ranks are added with one
all-reduce, so accuracy under DDP is exactly the single-process figure.  Call it with the unwrapped
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
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import create_augmenter
from ..config import Config, ConfigError
from ..data.resident import EpochLoader, ResidentData
from ..distributed import DistInfo, all_reduce_sum, init_distributed, parse_device
from ..models import create_model, to_device
from ..models.factory import nonfinite_tensors, state_dict_misfit
from ..runinfo import device_name
from .amp import Precision, resolve_precision
from .state import CheckpointError, load_checkpoint, read_jsonl
from .summary import build_summary

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


def eval_loader(data: ResidentData, batch_size: int, info: DistInfo) -> EpochLoader:
    """This rank's exact shard of ``data`` for evaluation: in order, nothing dropped."""
    return EpochLoader(data, batch_size, rank=info.rank, world_size=info.world_size,
                       shuffle=False, drop_last=False, even=False)


def evaluate_checkpoint(path: str, *, tta: bool = False, weights: str = "auto", device: str = "auto",
                        data_root: str | None = None, batch_size: int | None = None) -> dict:
    """Rebuild the model from a checkpoint (its resolved config) and evaluate it on the test set.

    ``weights``: ``model``, ``ema``, or ``auto`` (the EMA weights when the run kept them: they are
    what the run reported as final); with the EMA, the model's own weights are evaluated too
    (``test_acc_model``), as at the end of a run.  The checkpoint alone is needed: its weights replace
    any ``model.pretrained`` file the run started from, which is not read.  Runs under torchrun too
    (each rank evaluates its shard).
    Returns the keys of ``summary.json`` (:func:`~fastfm.engine.summary.build_summary`, which says
    where each figure comes from): the training run's figures from the checkpoint's progress and
    config, and ``images_per_sec`` from the ``metrics.jsonl`` beside the checkpoint when there is one.

    Raises, before the checkpoint is read, :class:`ConfigError` naming the option (``--batch-size``,
    ``--weights``, ``--device``) for a bad argument; then :class:`CheckpointError` naming the file
    when it is not a complete fastfm checkpoint, or its weights do not fit the model of its config
    or hold NaN or inf; then ``DataError`` for missing test data.
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")
    if weights not in ("auto", "model", "ema"):
        raise ConfigError(f"--weights: {weights!r} is not auto, model or ema")
    parse_device(device)
    state = load_checkpoint(path)
    cfg, model, weights = _model_from_checkpoint(path, state, weights)
    norm = _norm(path, state)
    progress = state.get("progress") if isinstance(state.get("progress"), dict) else {}
    info = init_distributed(device)
    to_device(model, cfg, info.device)
    augmenter = create_augmenter(cfg.aug, info.device, seed=0, mean=norm["mean"], std=norm["std"])
    test = ResidentData.load(data_root or cfg.data.root, "test", info.device, cfg.data.test_limit or None)
    loader = eval_loader(test, cfg.eval.batch_size if batch_size is None else batch_size, info)
    precision = resolve_precision(cfg.train.precision, info.device)
    autocast = Precision(precision, info.device).autocast
    k = cfg.aug.num_classes
    plain = evaluate(model, loader, [augmenter.test_transform], autocast, k)
    views, res_tta = None, None
    if tta:
        views = tta_views(augmenter.test_transform, cfg.eval.tta_flip, cfg.eval.tta_shift)
        res_tta = evaluate(model, loader, views, autocast, k)
    own = None
    if weights == "ema":
        try:          # the model's own weights, as a run reports them beside the EMA's
            _load_weights(path, model, state, "model")
            own = evaluate(model, loader, [augmenter.test_transform], autocast, k)
        except CheckpointError:
            pass      # unusable: test_acc_model stays null; the EMA's figures stand

    epochs_done = progress.get("epoch", 0)
    records = [r for r in read_jsonl(Path(path).with_name("metrics.jsonl")) if r["epoch"] <= epochs_done]
    return build_summary(final=plain, final_weights=weights, model=own, tta=res_tta,
                         tta_views=len(views) if views else None, best_acc=progress.get("best_acc"),
                         best_epoch=progress.get("best_epoch"), records=records,
                         device=device_name(info.device), world_size=info.world_size, precision=precision,
                         epochs=cfg.train.epochs, wall_time_s=progress.get("wall_time"))


def _model_from_checkpoint(path: str, state: dict, weights: str) -> tuple[Config, nn.Module, str]:
    """The checkpoint's config, its model (on the CPU) holding the chosen weights, and which weights
    (``auto`` resolved); :class:`CheckpointError` naming ``path`` when any of them is unusable."""
    try:
        cfg = Config.from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config is not valid ({e})") from None
    # The checkpoint holds every weight: the run's starting weights file may be gone or changed.
    cfg.model.pretrained = ""
    if weights == "auto":
        weights = "ema" if state.get("ema") is not None else "model"
    try:
        model = create_model(cfg)
    except ConfigError as e:      # a timm model this installation does not know
        raise CheckpointError(f"{path}: cannot rebuild its model ({e})") from None
    _load_weights(path, model, state, weights)
    return cfg, model, weights


def _load_weights(path: str, model: nn.Module, state: dict, weights: str) -> None:
    """Load the checkpoint's ``weights`` entry (``model`` or ``ema``) into ``model``;
    :class:`CheckpointError` naming ``path`` when it is missing, does not fit or holds NaN/inf."""
    sd = state.get(weights)
    if sd is None:
        raise CheckpointError(f"{path}: holds no {weights!r} weights")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: its {weights!r} entry is not a state dict of tensors")
    why = state_dict_misfit(model.state_dict(), sd)
    if why:
        raise CheckpointError(f"{path}: its {weights} weights do not fit the model of its config "
                              f"({state['config'].get('model', {}).get('name')}): {why}")
    bad = nonfinite_tensors(sd)
    if bad:
        raise CheckpointError(f"{path}: its {weights} weights hold NaN or inf (in {', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); there is nothing to evaluate")
    model.load_state_dict(sd)


def _norm(path: str, state: dict) -> dict:
    """The training set's pixel mean and std the checkpoint was trained with."""
    norm = state.get("norm")
    ok = isinstance(norm, dict) and all(isinstance(norm.get(k), (int, float)) and math.isfinite(norm[k])
                                        for k in ("mean", "std"))
    if not ok or norm["std"] <= 0:
        raise CheckpointError(f"{path}: holds no valid 'norm' entry (the training images' pixel mean and "
                              f"std), got {norm!r}")
    return norm
