"""Training: :func:`fit` builds everything once, then alternates training epochs and evaluation.

Set-up order, once, outside the step: resident data -> model (channels_last, SyncBatchNorm) -> EMA
-> optimizer -> schedule -> precision (autocast + scaler) -> ``torch.compile`` -> DDP wrap ->
augmenter.  :class:`TrainStep` then runs the same code whatever was chosen.

Host synchronisation.  Inside an epoch the host waits for the device only at a *refresh*: every
``train.log_every`` steps and at the epoch's last step.  Per step, the loss, the number of finite
losses and the first step with a non-finite loss go into device accumulators (:class:`StepStats`)
and the scaler counts skipped steps on the device.  A refresh reads them all in one transfer (after
one all-reduce under DDP), updates the progress bar, stops the run on a non-finite loss (naming the
step), takes skipped steps out of the schedule and acts on a pending SIGTERM.

Skipped steps (fp16, or ``train.on_nonfinite: skip``).  Step ``n`` uses ``schedule(n - skipped)``
with ``skipped`` as of the last refresh: a skipped step leaves the schedule where it was, at most
``log_every`` steps late.  bf16 and fp32 never skip in the default ``stop`` mode.

Resume.  ``last.pt`` holds the model, optimizer, scaler, EMA, the epoch, the step within the epoch,
the global step and, for every rank, the torch CPU/CUDA generator states and the augmenter's state.
The data order is a function of (seed, epoch), so a resumed run skips the batches already done and
continues bit for bit (on the CPU; on CUDA with ``train.deterministic``).  ``last.pt`` is written at
every epoch end and, on SIGTERM, at the next refresh: the refresh's all-reduce makes every rank see
the request at the same step, so all ranks stop together.  Exact resume needs the same world size.

CPU multi-process runs (gloo, for tests) have no SyncBatchNorm: each rank's BatchNorm running
statistics then differ slightly, and per-epoch test figures come from per-rank statistics.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..augment import BackendUnavailable, create_augmenter
from ..bench import device_name, git_revision
from ..config import Config, ConfigError
from ..data.idx import DataError
from ..data.resident import EpochLoader, ResidentData
from ..distributed import (DistInfo, all_reduce_sum, broadcast_object, cleanup, convert_sync_bn,
                           init_distributed, wrap_ddp)
from ..models import create_model
from .amp import NoGuard, Precision, create_buffer_guard, create_scaler, resolve_precision
from .checkpoint import (CheckpointError, RunFolderError, append_jsonl, load_checkpoint, prepare_run_dir,
                         save_checkpoint, write_json)
from .evaluate import CLASSES, EvalResult, eval_loader, evaluate, tta_views
from .optim import WarmupCosine, create_optimizer
from .plots import plot_confusion, plot_curves

# Keys that may differ between a run and its resumption without a warning.
RESUME_FREE_KEYS = ("train.resume", "train.progress", "train.log_every")


class Interrupted(Exception):
    """Training stopped on request (SIGTERM) after writing ``last.pt``; rerun to resume."""


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite training loss under ``train.on_nonfinite: stop``."""


# Errors the user can act on (configuration, run folder, data, checkpoint, divergence): the scripts
# print them as "error: ..." without a traceback.
USER_ERRORS = (ConfigError, RunFolderError, CheckpointError, DataError, BackendUnavailable, NonFiniteLoss)


def error_line(e: Exception) -> str:
    """``error: <message>``; under torchrun every rank reports, so the rank is named (one node may
    lack the data while the others have it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"error: rank {os.environ.get('RANK', '?')}: {e}"
    return f"error: {e}"


class StopSignal:
    """A stop request, set by SIGTERM while installed; the trainer reads it at refreshes only.

    The handler only sets a flag, so a signal arriving in the middle of a checkpoint write or an
    all-reduce does no harm.
    """

    def __init__(self):
        self._set = False
        self._previous = None

    def set(self, *_) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self.set)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class TrainStep:
    """One optimisation step, built once; the same code for every precision, compile and DDP set-up.

    ``step(x, targets) -> loss``: ``x`` float (B, C, S, S), ``targets`` float (B, K) soft targets
    (rows sum to 1).  Returns the batch's mean soft-target cross-entropy (label smoothing applied to
    the soft targets) as a detached 0-d float32 tensor on the device; never syncs.  The scaler does
    backward, (unscale, clip,) optimizer step and zero_grad; the guard undoes a skipped step's
    BatchNorm statistics (a no-op object unless steps may be skipped on purpose).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision,
                 scaler, label_smoothing: float, guard=None):
        self.model = model
        self.optimizer = optimizer
        self.autocast = precision.autocast
        self.scaler = scaler
        self.label_smoothing = label_smoothing
        self.guard = guard or NoGuard()

    def __call__(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.guard.save()
        with self.autocast():
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        self.scaler(loss, self.optimizer)
        self.guard.restore_if(self.scaler.last_skipped)
        return loss.detach()


class StepStats:
    """Device-side accumulators of one epoch, updated every step without a host sync."""

    def __init__(self, device: torch.device, step: int, loss_sum: float = 0.0, finite: int = 0):
        self.loss_sum = torch.tensor(loss_sum, dtype=torch.float32, device=device)
        self.finite = torch.tensor(finite, dtype=torch.int64, device=device)
        self.first_bad = torch.tensor(-1, dtype=torch.int64, device=device)   # global step index
        self.step = torch.tensor(step, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor) -> None:
        ok = torch.isfinite(loss)
        self.loss_sum += torch.where(ok, loss, torch.zeros_like(loss))
        self.finite += ok
        self.first_bad = torch.where((self.first_bad < 0) & ~ok, self.step, self.first_bad)
        self.step += 1


@dataclass
class Snapshot:
    """What a refresh reads: epoch sums over all ranks, the run's skip count, pending requests."""

    loss_sum: float
    finite: int
    first_bad: int | None
    skipped: int
    stop: bool


def read_stats(stats: StepStats, scaler, stop: StopSignal, info: DistInfo) -> Snapshot:
    """One all-reduce and one device->host transfer: the only sync of a refresh.

    Slot ``r`` carries rank r's first non-finite step (+1, 0 = none) so that every rank learns the
    earliest one from a plain sum.
    """
    w = info.world_size
    v = torch.zeros(w + 4, dtype=torch.float64, device=stats.loss_sum.device)
    v[info.rank] = stats.first_bad + 1
    v[w] = stats.loss_sum
    v[w + 1] = stats.finite
    v[w + 2] = scaler.skipped          # equal on every rank (the gradients are all-reduced)
    v[w + 3] = float(stop.is_set())
    values = all_reduce_sum(v).tolist()
    bad = [int(b) - 1 for b in values[:w] if b > 0]
    return Snapshot(loss_sum=values[w], finite=int(values[w + 1]), first_bad=min(bad) if bad else None,
                    skipped=round(values[w + 2] / w), stop=values[w + 3] > 0)


@dataclass
class Progress:
    """Where the run is; saved in ``last.pt``."""

    epoch: int = 0            # epochs completed
    epoch_step: int = 0       # batches done in epoch ``epoch`` (mid-epoch checkpoints)
    step: int = 0             # optimizer steps taken, skipped ones included
    skipped: int = 0          # steps the scaler skipped, as of the last refresh
    loss_sum: float = 0.0     # the epoch's accumulators at a mid-epoch checkpoint (all ranks)
    finite: int = 0
    best_acc: float = -1.0    # best test accuracy of the final weights (EMA when kept)
    best_epoch: int = 0
    wall_time: float = 0.0    # seconds of training and evaluation, summed over resumptions


@dataclass
class Training:
    """The objects of the training step, made once by :func:`build_training`."""

    cfg: Config
    device: torch.device
    model: nn.Module                # unwrapped and uncompiled: checkpoints, EMA and evaluation use it
    ema: nn.Module | None
    optimizer: torch.optim.Optimizer
    precision: Precision
    scaler: object                  # PlainScaler | GradScalerStep (engine/amp.py)
    step: TrainStep                 # wraps the compiled, DDP-wrapped model
    schedule: WarmupCosine

    def iteration(self, augmenter, stats: "StepStats", images: torch.Tensor, labels: torch.Tensor,
                  step: int, schedule_step: int) -> float:
        """One iteration of the hot path, as the trainer runs it and the benchmarks time it:
        learning rate for ``schedule_step``, augmentation, the step, device-side loss statistics,
        the EMA update.  Returns the learning rate; never syncs."""
        lr = self.schedule.apply(self.optimizer, schedule_step)
        x, targets = augmenter(images, labels)
        stats.update(self.step(x, targets))
        if self.ema is not None:
            self.ema.update(self.model, step=step)
        return lr


def build_training(cfg: Config, info: DistInfo, steps_per_epoch: int) -> Training:
    """Model, EMA, optimizer, precision, scaler, schedule and step, in the one order every caller
    (the trainer, the benchmarks) uses: backend flags, seeded weights (the same on every rank),
    channels_last, SyncBatchNorm, EMA, optimizer, scaler, ``torch.compile``, DDP wrap."""
    device, tc = info.device, cfg.train
    precision = Precision(resolve_precision(tc.precision, device), device)
    if precision.name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: bf16 is not supported by this GPU; use fp16 or auto")
    set_backends(tc.deterministic, device)
    torch.manual_seed(tc.seed)          # the same initial weights on every rank
    model = create_model(cfg)
    fmt = torch.channels_last if cfg.aug.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)
    model = convert_sync_bn(model, info, tc.sync_bn)
    ema = None
    if cfg.ema.enabled:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)
    optimizer = create_optimizer(model, cfg.optim, device)
    schedule = WarmupCosine.from_config(cfg.optim.lr, cfg.sched, tc.epochs, steps_per_epoch)
    skip = tc.on_nonfinite == "skip"
    scaler = create_scaler(precision, model.parameters(), cfg.optim.clip_grad, device, skip)
    net = torch.compile(model) if tc.compile else model
    step = TrainStep(wrap_ddp(net, info), optimizer, precision, scaler, tc.label_smoothing,
                     create_buffer_guard(model, skip))
    return Training(cfg, device, model, ema, optimizer, precision, scaler, step, schedule)


class Trainer:
    """Everything a run needs, built once (see the module docstring for the order)."""

    def __init__(self, cfg: Config, info: DistInfo, run_dir: Path, stop: StopSignal):
        self.cfg, self.info, self.run_dir, self.stop = cfg, info, run_dir, stop
        device = info.device
        tc = cfg.train
        if tc.batch_size % info.world_size:
            raise ConfigError(f"train.batch_size: {tc.batch_size} is not divisible by the world size "
                              f"{info.world_size}")
        limit = cfg.data.train_limit or None
        self.train_data = ResidentData.load(cfg.data.root, "train", device, limit)
        self.test_data = ResidentData.load(cfg.data.root, "test", device, cfg.data.test_limit or None)
        self.mean, self.std = self.train_data.pixel_stats()
        self.loader = EpochLoader(self.train_data, tc.batch_size // info.world_size, rank=info.rank,
                                  world_size=info.world_size, seed=tc.seed, shuffle=True,
                                  drop_last=True, even=True, output="uint8")
        self.test_loader = eval_loader(self.test_data, cfg.eval.batch_size, info)
        self.training = t = build_training(cfg, info, len(self.loader))
        self.model, self.ema, self.optimizer = t.model, t.ema, t.optimizer
        self.precision, self.scaler, self.step, self.schedule = t.precision, t.scaler, t.step, t.schedule

        # Per-rank random streams (dropout, augmentation); the data order is shared by all ranks.
        torch.manual_seed(tc.seed + info.rank)
        self.augmenter = create_augmenter(cfg.aug, device, seed=tc.seed + info.rank, mean=self.mean, std=self.std)
        self.progress = Progress()
        self.wall_base, self.t_start = 0.0, time.perf_counter()
        self.last_eval: tuple[EvalResult, EvalResult | None] | None = None

    # ------------------------------------------------------------------ state

    @property
    def final_model(self) -> nn.Module:
        """The weights the run reports as its result: the EMA when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def wall(self) -> float:
        return self.wall_base + time.perf_counter() - self.t_start

    def _rank_state(self) -> dict:
        dev = self.info.device
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                "augmenter": self.augmenter.state_dict()}

    def _weights(self) -> dict:
        return {"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "norm": {"mean": self.mean, "std": self.std}}

    def save_last(self) -> None:
        """Write ``last.pt`` (a collective: every rank contributes its random-stream states)."""
        mine = self._rank_state()
        ranks = [broadcast_object(mine, src=r) for r in range(self.info.world_size)]
        if self.info.is_primary:
            self.progress.wall_time = self.wall()
            save_checkpoint({**self._weights(), "optimizer": self.optimizer.state_dict(),
                             "scaler": self.scaler.state_dict(), "progress": asdict(self.progress),
                             "rank_states": ranks}, self.run_dir / "last.pt")

    def save_best(self) -> None:
        if self.info.is_primary:
            save_checkpoint({**self._weights(), "progress": asdict(self.progress)}, self.run_dir / "best.pt")

    def load(self, path: Path) -> None:
        """Continue from ``last.pt`` (see the module docstring)."""
        state = load_checkpoint(path)     # on the CPU: load_state_dict copies to the right devices
        self._warn_config_changes(state["config"])
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"] if state["ema"] is not None else state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        if not self.info.is_primary:          # the saved epoch sums are all ranks' together
            self.progress.loss_sum, self.progress.finite = 0.0, 0
        self.wall_base, self.t_start = self.progress.wall_time, time.perf_counter()
        ranks = state["rank_states"]
        if len(ranks) == self.info.world_size:
            mine = ranks[self.info.rank]
            torch.set_rng_state(mine["torch"])
            if mine["cuda"] is not None and self.info.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.info.device)
            self.augmenter.load_state_dict(mine["augmenter"])
        else:
            self._log(f"warning: {path} was written by {len(ranks)} rank(s), this run has "
                      f"{self.info.world_size}: random streams restart, the resumption is not exact")
        if self.info.is_primary:
            _trim_metrics(self.run_dir / "metrics.jsonl", self.progress.epoch)
        self._log(f"resumed from {path}: epoch {self.progress.epoch + 1}, "
                  f"batch {self.progress.epoch_step} of {len(self.loader)}")

    def _warn_config_changes(self, saved: dict) -> None:
        now, before = _flatten(self.cfg.to_dict()), _flatten(saved)
        changed = [k for k in now if now[k] != before.get(k) and k not in RESUME_FREE_KEYS]
        if changed:
            self._log("warning: resuming with a changed config: "
                      + ", ".join(f"{k}: {before.get(k)!r} -> {now[k]!r}" for k in changed))

    def _log(self, msg: str) -> None:
        if self.info.is_primary:
            tqdm.write(msg)

    # ------------------------------------------------------------------ loops

    def train_one_epoch(self, epoch: int) -> dict:
        """Train epoch ``epoch`` (from ``progress.epoch_step`` when resuming mid-epoch).

        Returns ``{"train_loss", "lr", "images_per_sec"}``; raises :class:`NonFiniteLoss` or, after
        saving ``last.pt``, :class:`Interrupted`.
        """
        cfg, p, info = self.cfg, self.progress, self.info
        n, start = len(self.loader), p.epoch_step
        global_batch = self.loader.batch_size * info.world_size
        stats = StepStats(info.device, p.step, p.loss_sum, p.finite)
        self.loader.set_epoch(epoch)
        self.model.train()
        bar = tqdm(total=n, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                   dynamic_ncols=True, disable=not (info.is_primary and cfg.train.progress))
        t_epoch = t_window = time.perf_counter()
        last_refresh = start
        snap, lr = None, 0.0
        with bar:
            for i, (images, labels) in enumerate(itertools.islice(self.loader, start, None), start):
                lr = self.training.iteration(self.augmenter, stats, images, labels, p.step,
                                             p.step - p.skipped)
                p.step += 1
                if (i + 1) % cfg.train.log_every and i + 1 < n:
                    continue
                snap = read_stats(stats, self.scaler, self.stop, info)
                now = time.perf_counter()
                if snap.first_bad is not None and cfg.train.on_nonfinite == "stop":
                    first_of_epoch = p.step - (i + 1)
                    raise NonFiniteLoss(
                        f"non-finite training loss (NaN or inf) at step {snap.first_bad + 1} (epoch "
                        f"{epoch + 1}, batch {snap.first_bad - first_of_epoch + 1} of {n}); stopping. "
                        f"Lower optim.lr, set optim.clip_grad, or set train.on_nonfinite: skip.")
                p.skipped = snap.skipped
                bar.set_postfix(loss=f"{snap.loss_sum / max(1, snap.finite):.4f}", lr=f"{lr:.3g}",
                                img_s=f"{(i + 1 - last_refresh) * global_batch / (now - t_window):.0f}",
                                **({"skipped": p.skipped} if p.skipped else {}), refresh=False)
                bar.update(i + 1 - last_refresh)
                last_refresh, t_window = i + 1, now
                if snap.stop and i + 1 < n:
                    p.epoch_step, p.loss_sum, p.finite = i + 1, snap.loss_sum, snap.finite
                    self.save_last()
                    raise Interrupted(f"stopped by SIGTERM at epoch {epoch + 1}, batch {i + 1} of {n}; "
                                      f"{self.run_dir / 'last.pt'} written")
        seconds = time.perf_counter() - t_epoch
        p.epoch, p.epoch_step, p.loss_sum, p.finite = epoch + 1, 0, 0.0, 0
        return {"train_loss": snap.loss_sum / max(1, snap.finite), "lr": lr,
                "images_per_sec": (n - start) * global_batch / seconds}

    def evaluate(self) -> dict:
        """Test loss and accuracy of the model (and the EMA), plain; keeps the results for the end."""
        k, autocast = self.cfg.aug.num_classes, self.precision.autocast
        res = evaluate(self.model, self.test_loader, [self.augmenter.eval], autocast, k)
        ema = (evaluate(self.ema.module, self.test_loader, [self.augmenter.eval], autocast, k)
               if self.ema is not None else None)
        self.last_eval = (res, ema)
        out = {"test_loss": res.loss, "test_acc": res.acc}
        if ema is not None:
            out.update(test_loss_ema=ema.loss, test_acc_ema=ema.acc)
        return out

    def fit(self) -> dict:
        """Train the remaining epochs, then the final evaluation; returns the summary (all ranks)."""
        cfg, p = self.cfg, self.progress
        epochs, every = cfg.train.epochs, cfg.eval.every
        self._log(f"{self.run_dir}: {device_name(self.info.device)} x{self.info.world_size}, "
                  f"{self.precision.name}, {sum(t.numel() for t in self.model.parameters()):,} parameters, "
                  f"{len(self.loader)} steps/epoch of {cfg.train.batch_size}")
        for epoch in range(p.epoch, epochs):
            t0 = time.perf_counter()
            record = {"epoch": epoch + 1, **self.train_one_epoch(epoch)}
            improved = False
            if (every and (epoch + 1) % every == 0) or epoch + 1 == epochs:
                record.update(self.evaluate())
                acc = record.get("test_acc_ema", record["test_acc"])
                improved = acc > p.best_acc
                if improved:
                    p.best_acc, p.best_epoch = acc, epoch + 1
            record.update(epoch_time_s=time.perf_counter() - t0, wall_time_s=self.wall(), skipped_steps=p.skipped)
            if self.info.is_primary:
                append_jsonl(self.run_dir / "metrics.jsonl", record)
                self._log(_epoch_line(record, epochs))
            self.save_last()
            if improved:
                self.save_best()
            if _any_rank(self.stop.is_set(), self.info) and epoch + 1 < epochs:
                raise Interrupted(f"stopped by SIGTERM after epoch {epoch + 1}; "
                                  f"{self.run_dir / 'last.pt'} written")
        return self.finish()

    def finish(self) -> dict:
        """Final figures: plain and TTA test accuracy of the final weights, per-class accuracy,
        confusion matrix and curves (PNG), ``summary.json``."""
        if self.last_eval is None:          # resumed a run whose epochs were all done
            self.evaluate()
        res, ema = self.last_eval
        final = ema if ema is not None else res
        summary = {"test_acc": final.acc, "test_loss": final.loss}
        if self.cfg.eval.tta:
            views = tta_views(self.augmenter.eval, self.cfg.eval.tta_flip, self.cfg.eval.tta_shift)
            tta = evaluate(self.final_model, self.test_loader, views, self.precision.autocast,
                           self.cfg.aug.num_classes)
            summary.update(test_acc_tta=tta.acc, test_loss_tta=tta.loss, tta_views=len(views))
        p = self.progress
        summary.update(best_test_acc=p.best_acc, best_epoch=p.best_epoch,
                       final_weights="ema" if ema is not None else "model")
        if ema is not None:
            summary.update(test_acc_model=res.acc, test_loss_model=res.loss)
        summary["per_class_acc"] = final.per_class(CLASSES)
        if not self.info.is_primary:
            return summary
        records = _read_jsonl(self.run_dir / "metrics.jsonl")
        rates = [r["images_per_sec"] for r in records]
        summary.update(images_per_sec=statistics.median(rates) if rates else None,
                       device=device_name(self.info.device), world_size=self.info.world_size,
                       precision=self.precision.name, epochs=self.cfg.train.epochs,
                       wall_time_s=self.wall(), git_revision=git_revision(), torch=torch.__version__)
        write_json(self.run_dir / "summary.json", summary)
        plot_curves(records, self.run_dir / "curves.png")
        plot_confusion(final.confusion, CLASSES, self.run_dir / "confusion.png",
                       f"{self.cfg.name or 'run'}: test accuracy {100 * final.acc:.2f}%")
        line = f"test accuracy {100 * final.acc:.2f}% (loss {final.loss:.4f})"
        if "test_acc_tta" in summary:
            line += f", with TTA ({summary['tta_views']} views) {100 * summary['test_acc_tta']:.2f}%"
        self._log(f"{line}; best {100 * p.best_acc:.2f}% at epoch {p.best_epoch}; "
                  f"{summary['wall_time_s']:.0f} s; {self.run_dir}")
        self._log("per class: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in summary["per_class_acc"].items()))
        return summary


def fit(cfg: Config, *, overwrite: bool = False, stop: StopSignal | None = None) -> dict:
    """Train ``cfg`` into ``cfg.out_dir/cfg.name`` (with torchrun: on every rank) and return the summary.

    Raises :class:`ConfigError`, :class:`RunFolderError`, :class:`NonFiniteLoss`,
    :class:`Interrupted` (SIGTERM, after saving ``last.pt``) or data errors; always destroys the
    process group and restores the SIGTERM handler and the deterministic-algorithms setting.
    """
    cfg.validate()
    stop = stop or StopSignal()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    stop.install()
    all_ranks_here = False      # every rank reaches the end together: a barrier before teardown is safe
    try:
        info = init_distributed(cfg.train.device)
        run_dir = Path(cfg.out_dir) / (cfg.name or "run")
        resume_from = _prepare_run_dir(run_dir, cfg.train.resume, overwrite, info)
        trainer = Trainer(cfg, info, run_dir, stop)
        if resume_from is not None:
            trainer.load(resume_from)
        elif info.is_primary:
            cfg.save(run_dir / "config.yaml")
        try:
            summary = trainer.fit()
        except Interrupted:
            all_ranks_here = True   # SIGTERM: every rank stops at the same agreed step
            raise
        all_ranks_here = True
        return summary
    finally:
        stop.restore()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        cleanup(sync=all_ranks_here)


# ---------------------------------------------------------------------- helpers

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


def _prepare_run_dir(run_dir: Path, resume: str, overwrite: bool, info: DistInfo) -> Path | None:
    """Rank 0 decides (and creates or empties the folder); every rank gets the outcome or the error."""
    outcome = None
    if info.is_primary:
        try:
            outcome = ("ok", prepare_run_dir(run_dir, resume, overwrite))
        except RunFolderError as e:
            outcome = ("error", str(e))
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise RunFolderError(value)
    return value


def _any_rank(flag: bool, info: DistInfo) -> bool:
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=info.device)).item())


def _epoch_line(r: dict, epochs: int) -> str:
    line = f"epoch {r['epoch']:>3}/{epochs}  train loss {r['train_loss']:.4f}"
    if "test_acc" in r:
        line += f"  test loss {r['test_loss']:.4f}  acc {100 * r['test_acc']:.2f}%"
    if "test_acc_ema" in r:
        line += f"  (EMA {100 * r['test_acc_ema']:.2f}%)"
    return line + f"  lr {r['lr']:.3g}  {r['images_per_sec']:.0f} img/s  {r['wall_time_s']:.0f} s"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trim_metrics(path: Path, epochs_done: int) -> None:
    """Drop records of epochs after the checkpoint (written before a crash, redone on resume)."""
    records = _read_jsonl(path)
    kept = [r for r in records if r["epoch"] <= epochs_done]
    if len(kept) != len(records):
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
