"""A training run: :func:`train` checks and builds everything once (:class:`Run`), then alternates
training epochs and evaluation.

Set-up order, once: config -> device and process group -> resident data (and the batch size against
it) -> the hot path (:func:`~fastfm.engine.step.build_hot_path`: model, EMA, optimizer, schedule,
gradient update, DDP wrap, ``torch.compile`` (``train.compile_mode``), augmenter, loader) -> the run
folder -> resume.  ``HotPath.iteration`` then runs the same code whatever was chosen.

Host synchronisation.  Inside an epoch the host waits for the device only at a *refresh*: every
``train.log_every`` steps and at the epoch's last step.  Per step, the loss, the number of finite
losses and the first step with a non-finite loss go into device accumulators
(:class:`~fastfm.engine.step.StepStats`) and the gradient update counts skipped steps on the device.
A refresh reads them all in one transfer (after
one all-reduce under DDP), updates the progress bar, stops the run on a non-finite loss (naming the
step), takes skipped steps out of the schedule and acts on a pending SIGTERM.

Skipped steps (fp16, or ``train.on_nonfinite: skip``).  Step ``n`` uses ``schedule(n - skipped)``
with ``skipped`` as of the last refresh: a skipped step leaves the schedule where it was, at most
``log_every`` steps late.  bf16 and fp32 never skip in the default ``stop`` mode.

A window of ``train.skip_window`` steps (an epoch's end also closes one) in which more than
``train.max_skipped`` of the steps were skipped stops the run with :class:`NonFiniteLoss`: a run whose
every step is skipped is dead, not training.  An epoch without a finite loss reports its train loss as
missing (``null``), never as 0.

Resume.  ``last.pt`` holds the model, optimizer, gradient-update state, EMA, the epoch, the step within the epoch,
the global step and, for every rank, the torch CPU/CUDA generator states and the augmenter's state.
The data order is a function of (seed, epoch), so a resumed run skips the batches already done and
continues bit for bit (on the CPU; on CUDA with ``train.deterministic``).  ``last.pt`` is written at
every epoch end, every ``train.checkpoint_every_min`` minutes (at a refresh), and on SIGTERM or
SIGINT at the next refresh: the refresh's all-reduce makes every rank see the request (and rank 0's
clock) at the same step, so all ranks stop or save together.  Exact resume needs the same world size
and the same shape-defining config (:data:`~fastfm.engine.state.RESUME_FIXED`; a change there is
refused, naming the keys).

Consistency of ``best.pt`` and ``last.pt``: at an improved evaluation ``best.pt`` is written first,
then ``last.pt``.  A crash between them leaves ``best.pt`` one epoch ahead; a resumed run takes the
best accuracy and epoch from ``best.pt`` itself, so ``summary.json`` always names what ``best.pt``
holds, whatever the crash point.

What rank 0 shows while the run trains: ``curves.png`` and ``confusion.png`` rewritten at every
evaluation, ``augment.png`` at the start (drawn by a second augmenter, so the training's random
streams are untouched), and TensorBoard event files in ``tb/`` (``log.tensorboard``; the step axis
and how a resumed run continues the curves: :mod:`fastfm.engine.tensorboard`), fed at the refreshes
from the figures they already read: no extra host sync.

Set-up checks everything it can (config, device, data, batch size against the data, model) before
the run folder is opened (:class:`~fastfm.engine.state.RunFolder`: marker, lock, cleaning).

CPU multi-process runs (gloo, for tests) have no SyncBatchNorm: each rank's BatchNorm running
statistics then differ slightly, and per-epoch test figures come from per-rank statistics.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..config import Config, ConfigError
from ..data.resident import ResidentData
from ..distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_object,
    cleanup,
    init_distributed,
    rank_failure,
)
from ..runinfo import device_name
from .evaluate import CLASSES, EvalResult, eval_loader, evaluate, tta_views
from .plots import plot_confusion, plot_curves
from .state import (
    TB_DIR,
    CheckpointError,
    Progress,
    RunFolder,
    RunFolderError,
    append_jsonl,
    best_so_far,
    load_checkpoint,
    read_jsonl,
    resume_changes,
    save_checkpoint,
    trim_metrics,
    write_json,
    write_text,
    writing,
)
from .step import StepStats, build_hot_path
from .summary import build_summary


class Interrupted(Exception):
    """Training stopped on request (SIGTERM or SIGINT) after writing ``last.pt``; rerun to resume.

    ``exit_code``: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), the shell's convention.
    """

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite training loss under ``train.on_nonfinite: stop``."""


class StopSignal:
    """A stop request, set by SIGTERM or SIGINT (Ctrl-C) while installed; the trainer reads it at
    refreshes only, writes ``last.pt`` and raises :class:`Interrupted`.

    The handler only sets a flag, so a signal arriving in the middle of a checkpoint write or an
    all-reduce does no harm.  A second SIGINT is the user insisting: it raises KeyboardInterrupt at
    once (no checkpoint; a write in progress is abandoned whole, the previous file kept).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def set(self, signum: int = signal.SIGTERM, _frame=None) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
        if signum == signal.SIGINT and int(os.environ.get("RANK", "0")) == 0:
            # os.write, not print: a handler may run in the middle of another write to stderr.
            os.write(2, b"\nCtrl-C: stopping at the next refresh and writing last.pt "
                        b"(press Ctrl-C again to quit at once, without saving)\n")

    def is_set(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self.set)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


@dataclass
class Snapshot:
    """What a refresh reads: epoch sums over all ranks, the run's skip count, pending requests."""

    loss_sum: float
    finite: int
    first_bad: int | None
    skipped: int
    stop: bool
    save: bool       # rank 0's clock says a periodic checkpoint is due


def read_stats(stats: StepStats, update, stop: StopSignal, info: DistInfo, save_due: bool) -> Snapshot:
    """One all-reduce and one device->host transfer: the only sync of a refresh.

    Slot ``r`` carries rank r's first non-finite step (+1, 0 = none) so that every rank learns the
    earliest one from a plain sum.  ``save_due`` counts from rank 0 only: one clock decides, so all
    ranks save at the same step.
    """
    w = info.world_size
    v = torch.zeros(w + 5, dtype=torch.float64, device=stats.loss_sum.device)
    v[info.rank] = stats.first_bad + 1
    v[w] = stats.loss_sum
    v[w + 1] = stats.finite
    v[w + 2] = update.skipped          # equal on every rank (the gradients are all-reduced)
    v[w + 3] = float(stop.is_set())
    v[w + 4] = float(save_due and info.is_primary)
    values = all_reduce_sum(v).tolist()
    bad = [int(b) - 1 for b in values[:w] if b > 0]
    return Snapshot(loss_sum=values[w], finite=int(values[w + 1]), first_bad=min(bad) if bad else None,
                    skipped=round(values[w + 2] / w), stop=values[w + 3] > 0, save=values[w + 4] > 0)


class Run:
    """A training run: the data, the hot path (:class:`~fastfm.engine.step.HotPath`), the epoch
    loop, evaluation, checkpoints and the final summary.

    Construction touches no file but the data: the run folder is given later (:meth:`attach`), once
    everything that can fail on the configuration or the data has been checked.
    """

    def __init__(self, cfg: Config, info: DistInfo, stop: StopSignal):
        self.cfg, self.info, self.stop = cfg, info, stop
        self.run_dir: Path | None = None
        device = info.device
        tc = cfg.train
        if tc.batch_size % info.world_size:
            raise ConfigError(f"train.batch_size: {tc.batch_size} is not divisible by the world size "
                              f"{info.world_size}")
        limit = cfg.data.train_limit or None
        self.train_data = ResidentData.load(cfg.data.root, "train", device, limit)
        self.test_data = ResidentData.load(cfg.data.root, "test", device, cfg.data.test_limit or None)
        n = len(self.train_data)
        if n // info.world_size < tc.batch_size // info.world_size:    # not one full batch per rank
            raise ConfigError(f"train.batch_size: {tc.batch_size} is larger than the training set ({n:,} "
                              f"images{' with data.train_limit' if limit else ''}): not one full batch "
                              f"per epoch; lower train.batch_size")
        self.mean, self.std = self.train_data.pixel_stats()
        self.test_loader = eval_loader(self.test_data, cfg.eval.batch_size, info)
        self.hot = hot = build_hot_path(cfg, info, self.train_data, self.mean, self.std)
        # The run's own references to the hot path's objects it checkpoints and evaluates.
        self.loader, self.augmenter, self.model, self.ema = hot.loader, hot.augmenter, hot.model, hot.ema
        self.optimizer, self.update, self.precision = hot.optimizer, hot.update, hot.precision
        self.progress = Progress()
        self.wall_base, self.t_start = 0.0, time.perf_counter()
        self.last_saved = self.t_start          # for train.checkpoint_every_min (rank 0's clock)
        self.last_eval: tuple[EvalResult, EvalResult | None] | None = None
        from .tensorboard import NullLog      # the module imports tensorboard itself only when opened

        self.tb = NullLog()                   # rank 0 opens the real one (open_tensorboard)

    def attach(self, run_dir: Path) -> None:
        """The run folder, opened (and locked by rank 0) once set-up has succeeded."""
        self.run_dir = run_dir

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
                             "update": self.update.state_dict(), "progress": asdict(self.progress),
                             "rank_states": ranks}, self.run_dir / "last.pt")
        self.last_saved = time.perf_counter()

    def save_best(self) -> None:
        if self.info.is_primary:
            self.progress.wall_time = self.wall()     # for evaluate.py's wall_time_s
            save_checkpoint({**self._weights(), "progress": asdict(self.progress)}, self.run_dir / "best.pt")

    def load(self, path: Path) -> None:
        """Continue from ``last.pt`` (see the module docstring).

        Raises :class:`ConfigError` when a key of :data:`RESUME_FIXED` changed, and
        :class:`CheckpointError` when the file does not fit this run (another model, a missing
        part); both before any state is changed.
        """
        state = load_checkpoint(path)     # on the CPU: load_state_dict copies to the right devices
        missing = [k for k in ("model", "optimizer", "update", "progress", "rank_states") if k not in state]
        if missing:
            raise CheckpointError(f"{path}: not a resumable checkpoint (no {', '.join(missing)}); "
                                  f"best.pt is for evaluation, last.pt for resuming")
        changes = resume_changes(self.cfg.to_dict(), state["config"], path)
        if changes:
            self._log("warning: resuming with a changed config: " + ", ".join(changes))
        try:
            self.model.load_state_dict(state["model"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.update.load_state_dict(state["update"])
            self.progress = Progress(**state["progress"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0][:300]
            raise CheckpointError(f"{path}: does not fit this run's model or optimizer ({first})") from None
        self.progress.best_acc, self.progress.best_epoch = best_so_far(path.with_name("best.pt"))
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
            trim_metrics(self.run_dir / "metrics.jsonl", self.progress.epoch, self._log)
        self._log(f"resumed from {path}: epoch {self.progress.epoch + 1}, "
                  f"batch {self.progress.epoch_step} of {len(self.loader)}")

    def _log(self, msg: str) -> None:
        if self.info.is_primary:
            tqdm.write(msg)

    # ------------------------------------------------------------------ what rank 0 shows

    def open_tensorboard(self, resumed: bool) -> None:
        """Rank 0, ``log.tensorboard``: the event files in ``tb/``; a resumed run continues the curves
        from its checkpoint's step (see :mod:`fastfm.engine.tensorboard`)."""
        if self.info.is_primary and self.cfg.log.tensorboard:
            from .tensorboard import TensorBoardLog

            self.tb = TensorBoardLog.open(self.run_dir / TB_DIR, self.cfg.dump(),
                                          self.progress.step if resumed else None, self._log)

    def close_tensorboard(self) -> None:
        self.tb.close()

    def write_augment_preview(self) -> None:
        """Rank 0: ``augment.png``, the first training images before and after this run's own
        augmentation (its backend, config and rank 0's seed, CutMix included), by the code of
        ``scripts/preview_augment.py``.  A second augmenter built like the hot path's draws them: the
        hot path's augmenter and torch's global generators (restored by ``write_grid``) are left as
        they were, so the training is the same bit for bit with or without the picture.  Not redrawn
        when resuming."""
        path = self.run_dir / "augment.png"
        if not self.info.is_primary or path.exists():
            return
        from ..augment import create_augmenter
        from ..augment.preview import write_grid

        seed = self.cfg.train.seed          # rank 0's augmentation seed (build_hot_path: seed + rank)
        with writing(path):
            aug = create_augmenter(self.cfg.aug, self.info.device, seed=seed, mean=self.mean, std=self.std)
            n = min(8, len(self.train_data))
            write_grid(path, {f"{self.cfg.aug.backend} (this run, seed {seed})": aug},
                       self.train_data.images[:n], self.train_data.labels[:n], mean=self.mean,
                       std=self.std, rows=4)

    def write_plots(self, epoch: int) -> None:
        """Rank 0: ``curves.png`` (from ``metrics.jsonl``) and ``confusion.png`` (the latest
        evaluation of the final weights), rewritten at every evaluation so they can be opened
        mid-run; each is written atomically."""
        if not self.info.is_primary or self.last_eval is None:
            return
        res, ema = self.last_eval
        final = ema if ema is not None else res
        with writing(self.run_dir / "curves.png"):
            plot_curves(read_jsonl(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png")
        with writing(self.run_dir / "confusion.png"):
            plot_confusion(final.confusion, CLASSES, self.run_dir / "confusion.png",
                           f"{self.cfg.name or 'run'}, epoch {epoch}/{self.cfg.train.epochs}: "
                           f"test accuracy {100 * final.acc:.2f}%")

    # ------------------------------------------------------------------ loops

    def train_one_epoch(self, epoch: int) -> dict:
        """Train epoch ``epoch`` (from ``progress.epoch_step`` when resuming mid-epoch).

        Returns ``{"train_loss", "lr", "images_per_sec", "epoch_skipped"}`` (``train_loss`` None
        when no step of the epoch had a finite loss); raises :class:`NonFiniteLoss` or, after saving
        ``last.pt``, :class:`Interrupted`.
        """
        cfg, p, info = self.cfg, self.progress, self.info
        n, start = len(self.loader), p.epoch_step
        global_batch = self.loader.batch_size * info.world_size
        stats = self.hot.stats
        stats.reset(p.step, p.loss_sum, p.finite)
        self.loader.set_epoch(epoch)
        self.model.train()
        bar = tqdm(total=n, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                   dynamic_ncols=True, disable=not (info.is_primary and cfg.train.progress))
        t_epoch = t_window = time.perf_counter()
        last_refresh = start
        snap, lr = None, 0.0
        at_refresh = (p.loss_sum, p.finite)          # the epoch's sums at the previous refresh
        skipped_at_start = window = (p.step, p.skipped)       # (step, skipped) where the window opened
        every_s = 60.0 * cfg.train.checkpoint_every_min
        with bar:
            for i, (images, labels, ahead) in enumerate(self.hot.batches(start), start):
                lr = self.hot.iteration(images, labels, p.step, p.step - p.skipped, ahead)
                p.step += 1
                if (i + 1) % cfg.train.log_every and i + 1 < n:
                    continue
                now = time.perf_counter()
                snap = read_stats(stats, self.update, self.stop, info,
                                  save_due=every_s > 0 and now - self.last_saved >= every_s)
                if snap.first_bad is not None and cfg.train.on_nonfinite == "stop":
                    first_of_epoch = p.step - (i + 1)
                    raise NonFiniteLoss(
                        f"non-finite training loss (NaN or inf) at step {snap.first_bad + 1} (epoch "
                        f"{epoch + 1}, batch {snap.first_bad - first_of_epoch + 1} of {n}); stopping. "
                        f"Lower optim.lr, set optim.clip_grad, or set train.on_nonfinite: skip.")
                p.skipped = snap.skipped
                if p.step - window[0] >= cfg.train.skip_window or i + 1 == n:
                    self._check_skipped(p.step - window[0], p.skipped - window[1], epoch)
                    window = (p.step, p.skipped)
                loss = f"{snap.loss_sum / snap.finite:.4f}" if snap.finite else "n/a"
                img_s = (i + 1 - last_refresh) * global_batch / (now - t_window)
                bar.set_postfix(loss=loss, lr=f"{lr:.3g}", img_s=f"{img_s:.0f}",
                                **({"skipped": p.skipped} if p.skipped else {}), refresh=False)
                finite = snap.finite - at_refresh[1]     # the window's mean loss, from the same sums
                self.tb.refresh(p.step, (snap.loss_sum - at_refresh[0]) / finite if finite else None, lr, img_s)
                at_refresh = (snap.loss_sum, snap.finite)
                bar.update(i + 1 - last_refresh)
                last_refresh, t_window = i + 1, now
                if (snap.stop or snap.save) and i + 1 < n:
                    p.epoch_step, p.loss_sum, p.finite = i + 1, snap.loss_sum, snap.finite
                    self.save_last()
                    if snap.stop:
                        raise Interrupted(f"stopped by {self.stop.name} at epoch {epoch + 1}, batch "
                                          f"{i + 1} of {n}; {self.run_dir / 'last.pt'} written",
                                          self.stop.signum or signal.SIGTERM)
        seconds = time.perf_counter() - t_epoch
        p.epoch, p.epoch_step, p.loss_sum, p.finite = epoch + 1, 0, 0.0, 0
        return {"train_loss": snap.loss_sum / snap.finite if snap.finite else None, "lr": lr,
                "images_per_sec": (n - start) * global_batch / seconds,
                "epoch_skipped": p.skipped - skipped_at_start[1]}

    def _check_skipped(self, steps: int, skipped: int, epoch: int) -> None:
        """Stop a run that no longer learns: too many of a window's steps skipped."""
        limit = self.cfg.train.max_skipped
        if limit < 1.0 and skipped > limit * steps:
            raise NonFiniteLoss(
                f"{skipped} of the last {steps} steps (up to epoch {epoch + 1}) were skipped for a "
                f"non-finite loss or gradient, more than train.max_skipped = {limit:g}: the run is not "
                f"learning. Lower optim.lr or set optim.clip_grad.")

    def evaluate(self) -> dict:
        """Test loss and accuracy of the model (and the EMA), plain; keeps the results for the end."""
        k, autocast = self.cfg.aug.num_classes, self.precision.autocast
        res = evaluate(self.model, self.test_loader, [self.augmenter.test_transform], autocast, k)
        ema = (evaluate(self.ema.module, self.test_loader, [self.augmenter.test_transform], autocast, k)
               if self.ema is not None else None)
        self.last_eval = (res, ema)
        out = {"test_loss": res.loss, "test_acc": res.acc}
        if ema is not None:
            out.update(test_loss_ema=ema.loss, test_acc_ema=ema.acc)
        return out

    def train_epochs(self) -> dict:
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
                self.tb.epoch(p.step, record)
                if "test_acc" in record:
                    self.write_plots(epoch + 1)
                self._log(_epoch_line(record, epochs))
            if improved:              # best.pt before last.pt: see "Consistency" in the module docstring
                self.save_best()
            self.save_last()
            if _any_rank(self.stop.is_set(), self.info) and epoch + 1 < epochs:
                raise Interrupted(f"stopped by {self.stop.name} after epoch {epoch + 1}; "
                                  f"{self.run_dir / 'last.pt'} written", self.stop.signum or signal.SIGTERM)
        return self.finish()

    def finish(self) -> dict:
        """Final figures: plain and TTA test accuracy of the final weights, per-class accuracy,
        ``summary.json`` (:func:`~fastfm.engine.summary.build_summary`); the plots were written at
        the last epoch's evaluation."""
        evaluated_here = self.last_eval is None
        if evaluated_here:                  # resumed a run whose epochs were all done
            self.evaluate()
        res, ema = self.last_eval
        final = ema if ema is not None else res
        tta, views = None, []
        if self.cfg.eval.tta:
            views = tta_views(self.augmenter.test_transform, self.cfg.eval.tta_flip, self.cfg.eval.tta_shift)
            tta = evaluate(self.final_model, self.test_loader, views, self.precision.autocast,
                           self.cfg.aug.num_classes)
        p = self.progress
        summary = build_summary(final=final, final_weights="ema" if ema is not None else "model",
                                model=res if ema is not None else None, tta=tta, tta_views=len(views) or None,
                                best_acc=p.best_acc, best_epoch=p.best_epoch,
                                records=read_jsonl(self.run_dir / "metrics.jsonl"),
                                device=device_name(self.info.device), world_size=self.info.world_size,
                                precision=self.precision.name, epochs=self.cfg.train.epochs,
                                wall_time_s=self.wall())
        if not self.info.is_primary:
            return summary
        write_json(self.run_dir / "summary.json", summary)
        if evaluated_here:
            self.write_plots(p.epoch)
        self.tb.final(p.step + 1, summary)
        line = f"test accuracy {100 * final.acc:.2f}% (loss {final.loss:.4f})"
        if tta is not None:
            line += f", with TTA ({summary['tta_views']} views) {100 * summary['test_acc_tta']:.2f}%"
        self._log(f"{line}; best {100 * p.best_acc:.2f}% at epoch {p.best_epoch}; "
                  f"{summary['wall_time_s']:.0f} s; {self.run_dir}")
        self._log("per class: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in summary["per_class_acc"].items()))
        return summary


def train(cfg: Config, *, overwrite: bool = False, stop: StopSignal | None = None) -> dict:
    """Train ``cfg`` into ``cfg.out_dir/cfg.name`` (with torchrun: on every rank) and return the summary.

    Order: validate the config, the device, the data and the batch size, build the model; only then
    open the run folder (rank 0: marker, lock, cleaning; see :class:`RunFolder`).  Raises
    :class:`ConfigError`, :class:`RunFolderError`, :class:`CheckpointError`, :class:`NonFiniteLoss`,
    :class:`RankFailure`, :class:`Interrupted` (SIGTERM/SIGINT, after saving ``last.pt``) or data
    errors; always releases the run folder's lock, destroys the process group and restores the signal
    handlers and the deterministic-algorithms setting.
    """
    cfg.validate()
    if overwrite and cfg.train.resume != "no":
        raise ConfigError(f"--overwrite and train.resume {cfg.train.resume!r} contradict each other: "
                          f"--overwrite starts the run again, resume continues it; choose one")
    stop = stop or StopSignal()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    all_ranks_here = False      # every rank reaches the end together: a barrier before teardown is safe
    folder: RunFolder | None = None
    run: Run | None = None
    try:
        try:
            info = init_distributed(cfg.train.device, cfg.train.dist_timeout_s)
        except ValueError as e:
            raise ConfigError(f"train.device: {e}") from None
        run = Run(cfg, info, stop)
        folder, resume_from = _open_run_folder(cfg, overwrite, info)
        run.attach(Path(cfg.out_dir) / _run_name(cfg))
        if resume_from is not None:
            run.load(Path(resume_from))
        elif info.is_primary:
            write_text(run.run_dir / "config.yaml", cfg.dump())
        run.write_augment_preview()
        run.open_tensorboard(resumed=resume_from is not None)
        # Only now: during set-up there is nothing to save, and a SIGTERM must end a process that
        # waits in a blocking call (a rendezvous), as torchrun expects when it stops a group.
        stop.install()
        try:
            summary = run.train_epochs()
        except Interrupted:
            all_ranks_here = True   # SIGTERM/SIGINT: every rank stops at the same agreed step
            raise
        all_ranks_here = True
        return summary
    except RuntimeError as e:
        failure = rank_failure(e, cfg.train.dist_timeout_s)
        if failure is None:
            raise
        raise failure from None
    finally:
        if run is not None:
            run.close_tensorboard()       # flushed whatever the end: done, stopped or failed
        if folder is not None:
            folder.close()
        stop.restore()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        cleanup(sync=all_ranks_here)


# ---------------------------------------------------------------------- helpers

def _run_name(cfg: Config) -> str:
    return cfg.name or "run"


def _open_run_folder(cfg: Config, overwrite: bool, info: DistInfo) -> tuple[RunFolder | None, str | None]:
    """Rank 0 opens (and locks) the folder and decides; every rank gets the checkpoint to resume
    from, or the error.  Returns (the open folder on rank 0, else None; ``last.pt`` or None)."""
    folder, outcome = None, None
    if info.is_primary:
        try:
            folder = RunFolder.open(cfg.out_dir, _run_name(cfg), cfg.train.resume, overwrite)
            for line in folder.warnings:
                tqdm.write(line)
            outcome = ("ok", str(folder.resume_from) if folder.resume_from else None)
        except (RunFolderError, CheckpointError) as e:
            outcome = ("error", str(e))
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise RunFolderError(value)
    return folder, value


def _any_rank(flag: bool, info: DistInfo) -> bool:
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=info.device)).item())


def _epoch_line(r: dict, epochs: int) -> str:
    if r["train_loss"] is None:
        train = f"train loss n/a (all {r['epoch_skipped']} steps skipped)"
    else:
        train = f"train loss {r['train_loss']:.4f}"
        if r.get("epoch_skipped"):
            train += f" ({r['epoch_skipped']} steps skipped)"
    line = f"epoch {r['epoch']:>3}/{epochs}  {train}"
    if "test_acc" in r:
        line += f"  test loss {r['test_loss']:.4f}  acc {100 * r['test_acc']:.2f}%"
    if "test_acc_ema" in r:
        line += f"  (EMA {100 * r['test_acc_ema']:.2f}%)"
    return line + f"  lr {r['lr']:.3g}  {r['images_per_sec']:.0f} img/s  {r['wall_time_s']:.0f} s"
