"""The engine's hot path as the benchmarks drive it: built by the engine's own factory, run the way
the trainer runs it, never copied or patched.

:func:`build_single` builds :class:`~fastfm.engine.step.HotPath` for one process;
:func:`iteration_fn` is the trainer's per-step call on it; :func:`with_backend` is the same hot path
with another backend's augmenter (a new object sharing the model, optimizer and loader: the model is
built, and compiled, once for every backend).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator

import torch

from ..augment import create_augmenter
from ..config import Config
from ..data.resident import EpochLoader, ResidentData
from ..distributed import DistInfo
from ..engine.step import HotPath, build_hot_path


def native_config(cfg: Config, aug: dict | None = None, train: dict | None = None) -> Config:
    """``cfg`` with the native augmenter (it needs no optional dependency, so the hot path can always
    be built; the other backends' rows swap the augmenter, :func:`with_backend`) and the ``aug`` and
    ``train`` overrides."""
    return dataclasses.replace(cfg, aug=dataclasses.replace(cfg.aug, backend="native", **(aug or {})),
                               train=dataclasses.replace(cfg.train, **(train or {})))


def build_single(cfg: Config, device: torch.device, data: ResidentData, mean: float, std: float) -> HotPath:
    """The engine's hot path (:func:`~fastfm.engine.step.build_hot_path`) for one process over
    ``data`` (resident on ``device``)."""
    return build_hot_path(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=device), data, mean, std)


def with_augmenter(hot: HotPath, backend: str, mean: float, std: float, *, op_ranges: bool = False) -> HotPath:
    """A new hot path sharing everything with ``hot`` but the augmenter: a fresh one of ``backend``,
    created as :func:`~fastfm.engine.step.build_hot_path` creates it for rank 0; ``op_ranges``: with
    its named profiler ranges on (for a trace).  Raises :class:`~fastfm.augment.BackendUnavailable`
    when the backend's dependency is missing."""
    cfg = dataclasses.replace(hot.cfg, aug=dataclasses.replace(hot.cfg.aug, backend=backend))
    augmenter = create_augmenter(cfg.aug, hot.device, seed=cfg.train.seed, mean=mean, std=std)
    if op_ranges:
        augmenter.op_ranges = True
    return dataclasses.replace(hot, cfg=cfg, augmenter=augmenter)


def with_backend(hot: HotPath, backend: str, mean: float, std: float) -> HotPath:
    """``hot`` itself when its augmenter is ``backend``'s, else :func:`with_augmenter`."""
    return hot if hot.cfg.aug.backend == backend else with_augmenter(hot, backend, mean, std)


def endless(loader: EpochLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of epoch 0, 1, 2, ... (``set_epoch`` before each, as the trainer does)."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


def endless_ahead(hot: HotPath) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``hot.batches()`` of epoch 0, 1, 2, ...: each batch with the next one's images (None at an
    epoch's end), as the trainer iterates."""
    for epoch in itertools.count():
        hot.loader.set_epoch(epoch)
        yield from hot.batches()


def iteration_fn(hot: HotPath) -> Callable[[], None]:
    """``run()``: one training iteration as the trainer runs it: the next of ``hot.batches()`` (with
    the batch after it, for the augmenter's prefetch), then ``hot.iteration`` at global (and
    schedule) step 0, 1, 2, ...  Never syncs."""
    batches = endless_ahead(hot)
    steps = itertools.count()

    def run() -> None:
        i = next(steps)
        images, labels, ahead = next(batches)
        hot.iteration(images, labels, i, i, ahead)

    return run
