"""The hot path: one object, :class:`HotPath`, owns everything a training iteration touches.

``build_hot_path`` makes it once, in the one order every caller uses (the trainer in
:mod:`fastfm.engine.run`, the throughput benchmark in :mod:`fastfm.bench.throughput`): backend
flags, seeded weights (the same on every rank), channels_last, SyncBatchNorm, EMA, optimizer,
schedule, gradient update, DDP wrap, ``torch.compile`` (of the DDP-wrapped model: see
:func:`fastfm.distributed.wrap_ddp` for why this order), then the per-rank random streams and the
augmenter, and the epoch loader over the resident data.  ``HotPath.iteration`` is then the same
code whatever was chosen: no branch on precision, compile or DDP inside it, and no host sync (the
loss statistics stay on the device in :class:`StepStats` until the trainer's periodic refresh).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import Augmenter, create_augmenter
from ..augment.compiled import compile_augmenter
from ..config import Config, ConfigError
from ..data.resident import EpochLoader, ResidentData
from ..distributed import DistInfo, convert_sync_bn, wrap_ddp
from ..models import create_model, to_device
from .amp import (
    GradientUpdate,
    NoGuard,
    Precision,
    create_buffer_guard,
    create_gradient_update,
    resolve_precision,
)
from .ema import ModelEma
from .optim import WarmupCosine, create_optimizer


class OptimizerStep:
    """One optimisation step, built once; the same code for every precision, compile and DDP set-up.

    ``step(x, targets) -> loss``: ``x`` float (B, C, S, S), ``targets`` float (B, K) soft targets
    (rows sum to 1).  Returns the batch's mean soft-target cross-entropy (label smoothing applied to
    the soft targets) as a detached 0-d float32 tensor on the device; never syncs.  The gradient
    update does backward, (unscale, clip,) optimizer step and zero_grad; the guard undoes a skipped
    step's BatchNorm statistics (a no-op object unless steps may be skipped on purpose).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision,
                 update: GradientUpdate, label_smoothing: float, guard=None):
        self.model = model
        self.optimizer = optimizer
        self.autocast = precision.autocast
        self.update = update
        self.label_smoothing = label_smoothing
        self.guard = guard or NoGuard()

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.guard.save()
        with self.autocast():
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        self.update(loss, self.optimizer)
        self.guard.restore_if(self.update.last_skipped)
        return loss.detach()


class StepStats:
    """Device-side accumulators of one epoch, updated every step without a host sync.

    ``loss_sum`` (float32) and ``finite`` (int64): the sum and count of the finite losses;
    ``first_bad``: the global index of the first step with a non-finite loss (-1: none); ``step``:
    the global index of the next step.  :meth:`reset` refills them in place at an epoch's start.
    """

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self.finite = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.step = torch.zeros((), dtype=torch.int64, device=device)

    def reset(self, step: int, loss_sum: float = 0.0, finite: int = 0) -> None:
        self.loss_sum.fill_(loss_sum)
        self.finite.fill_(finite)
        self.first_bad.fill_(-1)
        self.step.fill_(step)

    def update(self, loss: torch.Tensor) -> None:
        ok = torch.isfinite(loss)
        self.loss_sum += torch.where(ok, loss, torch.zeros_like(loss))
        self.finite += ok
        self.first_bad = torch.where((self.first_bad < 0) & ~ok, self.step, self.first_bad)
        self.step += 1


@dataclass
class HotPath:
    """Everything one training iteration touches, made once by :func:`build_hot_path`."""

    cfg: Config
    device: torch.device
    loader: EpochLoader             # this rank's shard of each epoch, uint8 batches on the device
    augmenter: Augmenter
    model: nn.Module                # unwrapped and uncompiled: checkpoints, EMA and evaluation use it
    ema: ModelEma | None            # ema.module: the averaged copy
    optimizer: torch.optim.Optimizer
    precision: Precision
    update: GradientUpdate          # backward, clipping, optimizer step (engine/amp.py)
    step: OptimizerStep             # wraps the DDP-wrapped, compiled model
    schedule: WarmupCosine
    stats: StepStats
    # What the iteration calls: ``augmenter`` itself, or under ``train.compile_mode`` on a GPU its
    # pure part compiled (fastfm.augment.compiled says why not on the CPU).  Derived, so ``dataclasses.replace(hot, augmenter=...)``
    # (the benchmarks' other backends) derives it again.  Checkpoint ``augmenter``, not this.
    augment: Callable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.augment = compile_augmenter(self.augmenter, self.cfg.train.compile_mode)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """The loader's batches of the current epoch from batch ``start``, each with the *next*
        batch's images (None for the last): ``for images, labels, ahead in hot.batches(start):
        hot.iteration(images, labels, step, schedule_step, ahead)``.  Looking one batch ahead costs
        one index gather on the device a step early and nothing else; it lets a backend that works
        beside the device stream (DALI) start on the next batch during the current step."""
        it = itertools.islice(self.loader, start, None)
        cur = next(it, None)
        while cur is not None:
            nxt = next(it, None)
            yield cur[0], cur[1], None if nxt is None else nxt[0]
            cur = nxt

    def iteration(self, images: torch.Tensor, labels: torch.Tensor, step: int, schedule_step: int,
                  ahead: torch.Tensor | None = None) -> float:
        """One iteration, as the trainer runs it and the benchmark times it: the learning rate for
        ``schedule_step``, augmentation, the optimizer step, the device-side loss statistics, the
        EMA update (``step``: the global step, for the EMA's warm-up).  ``ahead``: the next
        iteration's images, promised to the augmenter (:meth:`~fastfm.augment.base.Augmenter.prefetch`)
        once this batch is augmented, before the step is launched.  Returns the learning rate;
        never syncs."""
        lr = self.schedule.apply(self.optimizer, schedule_step)
        x, targets = self.augment(images, labels)
        if ahead is not None:
            self.augmenter.prefetch(ahead)
        self.stats.update(self.step(x, targets))
        if self.ema is not None:
            self.ema.update(step)
        return lr


def build_hot_path(cfg: Config, info: DistInfo, train_data: ResidentData, mean: float, std: float) -> HotPath:
    """Build the hot path over ``train_data`` (resident on ``info.device``) for this rank.

    ``mean``/``std``: the training set's pixel statistics, for the augmenter's normalisation.
    Raises :class:`ConfigError` for a configuration this device cannot run.
    """
    device, tc = info.device, cfg.train
    precision = Precision(resolve_precision(tc.precision, device), device)
    if precision.name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: bf16 is not supported by this GPU; use fp16 or auto")
    loader = EpochLoader(train_data, tc.batch_size // info.world_size, rank=info.rank,
                         world_size=info.world_size, seed=tc.seed, shuffle=True, drop_last=True, even=True)
    set_backends(tc.deterministic, device)
    torch.manual_seed(tc.seed)          # the same initial weights on every rank
    model = to_device(create_model(cfg), cfg, device)
    model = convert_sync_bn(model, info, tc.sync_bn)
    ema = None
    if cfg.ema.enabled:
        ema = ModelEma(model, decay=cfg.ema.decay, warmup=cfg.ema.warmup)
    optimizer = create_optimizer(model, cfg.optim, device)
    schedule = WarmupCosine.from_config(cfg.optim.lr, cfg.sched, tc.epochs, len(loader))
    skip = tc.on_nonfinite == "skip"
    update = create_gradient_update(precision, model.parameters(), cfg.optim.clip_grad, device, skip)
    net = wrap_ddp(model, info)
    if tc.compile_mode != "none":
        net = torch.compile(net, mode=tc.compile_mode)
    step = OptimizerStep(net, optimizer, precision, update, tc.label_smoothing,
                         create_buffer_guard(model, skip))
    # Per-rank random streams (dropout, augmentation); the data order is shared by all ranks.
    torch.manual_seed(tc.seed + info.rank)
    augmenter = create_augmenter(cfg.aug, device, seed=tc.seed + info.rank, mean=mean, std=std)
    return HotPath(cfg, device, loader, augmenter, model, ema, optimizer, precision, update, step,
                   schedule, StepStats(device))


def set_backends(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        # cuBLAS reads this when its handle is created (the first matmul), so setting it here works.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a model with an op that has no deterministic kernel (e.g. the CUDA backward of
        # adaptive average pooling in timm models) still trains, with a warning naming the op.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True           # fixed shapes: the autotuned kernel pays off
        torch.backends.cuda.matmul.allow_tf32 = True    # fp32 runs on Ampere+: TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
