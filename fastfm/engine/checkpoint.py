"""The checkpoint format: what ``last.pt`` and ``best.pt`` hold, writing and reading them, the rules
of resuming from one, and evaluating one.

A checkpoint is a ``torch.save`` dict of tensors and plain values (read back with
``weights_only=True``)::

    version       CHECKPOINT_VERSION
    config        the run's resolved config (Config.to_dict)
    model         the model's state dict (unwrapped, uncompiled)
    ema           the EMA copy's state dict, or None
    norm          {"mean", "std"}: the training images' pixel statistics (the augmenter's normalisation)
    progress      :class:`Progress`: where the run was
  last.pt only, for resuming:
    optimizer     the optimizer's state dict
    update        the gradient update's state (loss scale, skipped steps)
    rank_states   per rank: the torch CPU and CUDA generator states and the augmenter's state

``best.pt`` is written before ``last.pt`` at an improved evaluation, so after a crash between the
two it may be an epoch ahead: a resumed run takes its best accuracy and epoch from ``best.pt``
itself (:func:`best_so_far`).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..augment import create_augmenter
from ..config import Config, ConfigError
from ..data.resident import ResidentData, eval_loader
from ..distributed import DistInfo, broadcast_object, init_distributed, parse_device
from ..models import create_model, to_device
from ..models.factory import nonfinite_tensors, state_dict_misfit
from ..runinfo import device_name
from .amp import Precision, resolve_precision
from .evaluate import evaluate, tta_views
from .folder import read_jsonl, write_bytes
from .outputs.summary import build_summary

if TYPE_CHECKING:
    from .step import HotPath

CHECKPOINT_VERSION = 1
# What last.pt holds beyond best.pt: a checkpoint without them cannot be resumed.
RESUMABLE = ("model", "optimizer", "update", "progress", "rank_states")

# Keys that may differ between a run and its resumption without a warning.
RESUME_FREE_KEYS = ("train.resume", "train.progress", "train.log_every", "train.checkpoint_every_min",
                    "train.dist_timeout_s", "train.device", "data.root", "model.pretrained", "log.tensorboard")
# Keys a resumption cannot follow: they shape the weights, the optimizer and gradient-update state,
# or the steps of an epoch.  Resuming with any of them changed is refused, naming them.
RESUME_FIXED = ("model.", "aug.channels", "aug.num_classes", "optim.name", "train.batch_size",
                "train.precision", "train.on_nonfinite", "data.train_limit", "ema.enabled")


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, not a fastfm checkpoint, or does not fit this run."""


class ResumeRefused(CheckpointError):
    """The run's config changed in a key that the checkpoint cannot follow."""


@dataclass
class Progress:
    """Where the run is; saved in ``last.pt`` (and in ``best.pt``, whose best_* it describes)."""

    epoch: int = 0            # epochs completed
    epoch_step: int = 0       # batches done in epoch ``epoch`` (mid-epoch checkpoints)
    global_step: int = 0      # optimizer steps taken, skipped ones included
    skipped: int = 0          # steps skipped for a non-finite loss or gradient, as of the last refresh
    loss_sum: float = 0.0     # the epoch's accumulators at a mid-epoch checkpoint (all ranks)
    finite: int = 0
    best_acc: float = -1.0    # best test accuracy of the final weights (EMA when kept)
    best_epoch: int = 0
    wall_time: float = 0.0    # seconds of training and evaluation, summed over resumptions

    def to_dict(self) -> dict:
        """The checkpoint's ``progress`` entry."""
        return {_ON_DISK.get(k, k): v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, saved: dict) -> Progress:
        return cls(**{_FIELD.get(k, k): v for k, v in saved.items()})


# Progress field -> its key in a checkpoint, where the two differ: the keys stay as first written,
# so that older checkpoints still load.
_ON_DISK = {"global_step": "step"}
_FIELD = {v: k for k, v in _ON_DISK.items()}


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` atomically: ``path`` holds the old or the new file, whole."""
    # Serialised in memory first: torch's zip writer turns a failed write (a full disk) into an
    # opaque RuntimeError ("unexpected pos"); a plain write of the bytes raises the OSError itself.
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **state}, buffer)
    write_bytes(path, buffer.getbuffer())


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors only: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "config" not in state:
        raise CheckpointError(f"{path}: not a fastfm checkpoint (version {CHECKPOINT_VERSION})")
    return state


# ---------------------------------------------------------------------- a run's checkpoints


def _weights(hot: HotPath, norm: tuple[float, float]) -> dict:
    return {"config": hot.cfg.to_dict(), "model": hot.model.state_dict(),
            "ema": hot.ema.module.state_dict() if hot.ema is not None else None,
            "norm": {"mean": norm[0], "std": norm[1]}}


def _rank_state(hot: HotPath) -> dict:
    dev = hot.device
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "augmenter": hot.augmenter.state_dict()}


def save_last(path: Path, hot: HotPath, norm: tuple[float, float], progress: Progress, info: DistInfo) -> None:
    """Write ``last.pt``: a collective (every rank contributes its random-stream states, rank 0 writes)."""
    mine = _rank_state(hot)
    ranks = [broadcast_object(mine, src=r) for r in range(info.world_size)]
    if info.is_primary:
        save_checkpoint({**_weights(hot, norm), "optimizer": hot.optimizer.state_dict(),
                         "update": hot.update.state_dict(), "progress": progress.to_dict(),
                         "rank_states": ranks}, path)


def save_best(path: Path, hot: HotPath, norm: tuple[float, float], progress: Progress) -> None:
    """Write ``best.pt``: the weights, the config and the progress (no resumable state)."""
    save_checkpoint({**_weights(hot, norm), "progress": progress.to_dict()}, path)


def resume(path: Path, hot: HotPath, info: DistInfo, log) -> Progress:
    """Load ``last.pt`` into the hot path's objects (and this rank's random streams); returns the
    run's progress.  ``log``: where the warnings go (a changed config, another world size).

    Raises :class:`ResumeRefused` when a key of :data:`RESUME_FIXED` changed, and
    :class:`CheckpointError` when the file does not fit this run (another model, a missing part);
    both before any state is changed.
    """
    state = load_checkpoint(path)     # on the CPU: load_state_dict copies to the right devices
    missing = [k for k in RESUMABLE if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a resumable checkpoint (no {', '.join(missing)}); "
                              f"best.pt is for evaluation, last.pt for resuming")
    changes = resume_changes(hot.cfg.to_dict(), state["config"], path)
    if changes:
        log("warning: resuming with a changed config: " + ", ".join(changes))
    try:
        hot.model.load_state_dict(state["model"])
        if hot.ema is not None:
            hot.ema.module.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
        hot.optimizer.load_state_dict(state["optimizer"])
        hot.update.load_state_dict(state["update"])
        progress = Progress.from_dict(state["progress"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise CheckpointError(f"{path}: does not fit this run's model or optimizer ({first})") from None
    progress.best_acc, progress.best_epoch = best_so_far(path.with_name("best.pt"))
    if not info.is_primary:          # the saved epoch sums are all ranks' together
        progress.loss_sum, progress.finite = 0.0, 0
    ranks = state["rank_states"]
    if len(ranks) == info.world_size:
        mine = ranks[info.rank]
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] is not None and info.device.type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"], info.device)
        hot.augmenter.load_state_dict(mine["augmenter"])
    else:
        log(f"warning: {path} was written by {len(ranks)} rank(s), this run has "
            f"{info.world_size}: random streams restart, the resumption is not exact")
    return progress


# ---------------------------------------------------------------------- resuming rules


def resume_changes(now: dict, saved: dict, path: Path) -> list[str]:
    """The config changes between a checkpoint's config (``saved``) and this run's (``now``), as
    ``key: old -> new`` strings, for a warning; raises :class:`ResumeRefused` when a key of
    :data:`RESUME_FIXED` changed."""
    now, before = _flatten(now), _flatten(saved)
    changed = [k for k in now if now[k] != before.get(k) and k not in RESUME_FREE_KEYS]
    fixed = [k for k in changed if k.startswith(RESUME_FIXED)]
    describe = [f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed]
    if fixed:
        raise ResumeRefused(f"cannot resume {path} with a changed "
                            f"{', '.join(d for k, d in zip(changed, describe) if k in fixed)}: the "
                            f"checkpoint cannot follow that change; restore the value(s), or start a new "
                            f"run (--name)")
    return describe


def best_so_far(best: Path) -> tuple[float, int]:
    """(accuracy, epoch) that ``best.pt`` holds, or (-1, 0) without one.  After a crash between the
    two writes ``best.pt`` may be an epoch ahead of ``last.pt``: what it holds is the truth."""
    if not best.is_file():
        return -1.0, 0
    saved = load_checkpoint(best).get("progress") or {}
    return saved.get("best_acc", -1.0), saved.get("best_epoch", 0)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------- evaluating a checkpoint


def evaluate_checkpoint(path: str, *, tta: bool = False, weights: str = "auto", device: str = "auto",
                        data_root: str | None = None, batch_size: int | None = None) -> dict:
    """Rebuild the model from a checkpoint (its resolved config) and evaluate it on the test set.

    ``weights``: ``model``, ``ema``, or ``auto`` (the EMA weights when the run kept them: they are
    what the run reported as final); with the EMA, the model's own weights are evaluated too
    (``test_acc_model``), as at the end of a run.  The checkpoint alone is needed: its weights replace
    any ``model.pretrained`` file the run started from, which is not read.  Runs under torchrun too
    (each rank evaluates its shard).  Returns the keys of ``summary.json``
    (:func:`~fastfm.engine.outputs.summary.build_summary`, which says where each figure comes from):
    the training run's figures from the checkpoint's progress and config, and ``images_per_sec``
    from the ``metrics.jsonl`` beside the checkpoint when there is one.

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
