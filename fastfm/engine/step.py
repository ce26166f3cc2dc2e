"""The hot path: one object, :class:`HotPath`, owns everything a training iteration touches.

``build_hot_path`` makes it once, in the one order every caller uses (the trainer in
:mod:`fastfm.engine.run`, the throughput benchmark in :mod:`fastfm.bench.throughput`): backend
flags, seeded weights (the same on every rank), channels_last, SyncBatchNorm, EMA, optimizer,
schedule, gradient update, DDP wrap, ``torch.compile`` (of the DDP-wrapped model: see
:func:`fastfm.distributed.wrap_ddp` for why this order), then the per-rank random streams and the
augmenter, and the epoch loader over the resident data.  ``HotPath.iteration`` is then the same
code whatever was chosen: no branch on precision, compile or DDP inside it, and no host sync: the
loss statistics stay on the device in :class:`StepStats` until a refresh reads them
(:func:`read_stats`).
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
from ..data.resident import EpochLoader, ResidentData, train_loader
from ..distributed import DistInfo, all_reduce_sum, convert_sync_bn, wrap_ddp
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


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite training loss under ``train.on_nonfinite: stop``, or too many skipped steps."""


class OptimizerStep:
    """One optimisation step, built once; the same code for every precision, compile and DDP set-up.

    ``optimizer_step(x, targets) -> loss``: ``x`` float (B, C, S, S), ``targets`` float (B, K) soft
    targets (rows sum to 1).  Returns the batch's mean soft-target cross-entropy (label smoothing
    applied to the soft targets) as a detached 0-d float32 tensor on the device; never syncs.  The gradient
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
    ``first_bad``: the global index of the first step with a non-finite loss (-1: none);
    ``next_step``: the global index of the next step.  :meth:`reset` refills them in place at an
    epoch's start.
    """

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self.finite = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.next_step = torch.zeros((), dtype=torch.int64, device=device)

    def reset(self, global_step: int, loss_sum: float = 0.0, finite: int = 0) -> None:
        self.loss_sum.fill_(loss_sum)
        self.finite.fill_(finite)
        self.first_bad.fill_(-1)
        self.next_step.fill_(global_step)

    def update(self, loss: torch.Tensor) -> None:
        ok = torch.isfinite(loss)
        self.loss_sum += torch.where(ok, loss, torch.zeros_like(loss))
        self.finite += ok
        self.first_bad = torch.where((self.first_bad < 0) & ~ok, self.next_step, self.first_bad)
        self.next_step += 1


@dataclass
class Snapshot:
    """What a refresh reads: epoch sums over all ranks, the run's skip count, pending requests."""

    loss_sum: float
    finite: int
    first_bad: int | None
    skipped: int
    stop: bool
    save: bool       # rank 0's clock says a periodic checkpoint is due


def read_stats(stats: StepStats, update: GradientUpdate, info: DistInfo, stop: bool,
               save_due: bool) -> Snapshot:
    """One all-reduce and one device->host transfer: the only sync of a refresh.

    Slot ``r`` carries rank r's first non-finite step (+1, 0 = none) so that every rank learns the
    earliest one from a plain sum.  ``stop``: this rank has a stop request; ``save_due`` counts
    from rank 0 only: one clock decides, so all ranks save at the same step.
    """
    w = info.world_size
    v = torch.zeros(w + 5, dtype=torch.float64, device=stats.loss_sum.device)
    v[info.rank] = stats.first_bad + 1
    v[w] = stats.loss_sum
    v[w + 1] = stats.finite
    v[w + 2] = update.skipped          # equal on every rank (the gradients are all-reduced)
    v[w + 3] = float(stop)
    v[w + 4] = float(save_due and info.is_primary)
    values = all_reduce_sum(v).tolist()
    bad = [int(b) - 1 for b in values[:w] if b > 0]
    return Snapshot(loss_sum=values[w], finite=int(values[w + 1]), first_bad=min(bad) if bad else None,
                    skipped=round(values[w + 2] / w), stop=values[w + 3] > 0, save=values[w + 4] > 0)


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
    optimizer_step: OptimizerStep   # wraps the DDP-wrapped, compiled model
    schedule: WarmupCosine
    stats: StepStats
    # What the iteration calls: ``augmenter`` itself, or under ``train.compile_mode`` on a GPU its
    # pure part compiled (fastfm.augment.compiled says why not on the CPU).  Derived, so
    # ``dataclasses.replace(hot, augmenter=...)`` (the benchmarks' other backends) derives it again.
    # Checkpoint ``augmenter``, not this.
    augment_batch: Callable = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.augment_batch = compile_augmenter(self.augmenter, self.cfg.train.compile_mode)

    def batches(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """The loader's batches of the current epoch from batch ``start``, each with the *next*
        batch's images (None for the last): ``for images, labels, ahead in hot.batches(start):
        hot.iteration(images, labels, global_step, lr_step, ahead)``.  Looking one batch ahead costs
        one index gather on the device a step early and nothing else; it lets a backend that works
        beside the device stream (DALI) start on the next batch during the current step."""
        it = itertools.islice(self.loader, start, None)
        cur = next(it, None)
        while cur is not None:
            nxt = next(it, None)
            yield cur[0], cur[1], None if nxt is None else nxt[0]
            cur = nxt

    def iteration(self, images: torch.Tensor, labels: torch.Tensor, global_step: int, lr_step: int,
                  ahead: torch.Tensor | None = None) -> float:
        """One iteration, as the trainer runs it and the benchmark times it: the learning rate of
        schedule step ``lr_step``, augmentation, the optimizer step, the device-side loss
        statistics, the EMA update (``global_step``, for the EMA's warm-up).  ``ahead``: the next
        iteration's images, promised to the augmenter (:meth:`~fastfm.augment.base.Augmenter.prefetch`)
        once this batch is augmented, before the step is launched.  Returns the learning rate;
        never syncs."""
        lr = self.schedule.apply(self.optimizer, lr_step)
        x, targets = self.augment_batch(images, labels)
        if ahead is not None:
            self.augmenter.prefetch(ahead)
        self.stats.update(self.optimizer_step(x, targets))
        if self.ema is not None:
            self.ema.update(global_step)
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
    loader = train_loader(train_data, tc.batch_size // info.world_size, info, tc.seed)
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
    optimizer_step = OptimizerStep(net, optimizer, precision, update, tc.label_smoothing,
                                   create_buffer_guard(model, skip))
    # Per-rank random streams (dropout, augmentation); the data order is shared by all ranks.
    torch.manual_seed(tc.seed + info.rank)
    augmenter = create_augmenter(cfg.aug, device, seed=tc.seed + info.rank, mean=mean, std=std)
    return HotPath(cfg, device, loader, augmenter, model, ema, optimizer, precision, update, optimizer_step,
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
