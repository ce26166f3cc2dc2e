"""A training run: :func:`train` checks and builds everything once (:class:`Run`), then alternates
training epochs and evaluation.

Set-up checks all it can (config, device, data, the batch size against the data, the model) before
the run folder is opened (:class:`~fastfm.engine.folder.RunFolder`), so a mistake costs no file.
Inside an epoch the host waits for the device only at a *refresh* (every ``train.log_every`` steps
and at an epoch's last step): one all-reduce and one transfer (:func:`~fastfm.engine.step.read_stats`).
Everything that needs the host is decided there, on every rank at the same step: a non-finite loss
stops the run, skipped steps leave the schedule, a stop request (SIGTERM, SIGINT) or a due periodic
checkpoint writes ``last.pt`` (:mod:`fastfm.engine.checkpoint`), from which a resumed run continues
bit for bit.  The protocol in full (refreshes, skipped steps, resume, best/last): ``docs/runs.md``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ..config import Config, ConfigError
from ..data.resident import ResidentData, eval_loader
from ..distributed import DistInfo, all_reduce_sum, cleanup, init_distributed, rank_failure
from ..runinfo import device_name
from . import checkpoint
from .checkpoint import Progress
from .evaluate import EvalResult, evaluate, tta_views
from .folder import RunFolder, append_jsonl, open_run_folder, read_jsonl, trim_metrics, write_json, write_text
from .outputs.live import LiveOutputs, epoch_line
from .outputs.summary import build_summary
from .signals import Interrupted, StopSignal
from .step import NonFiniteLoss, build_hot_path, read_stats


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
        self.norm = self.train_data.pixel_stats()       # (mean, std)
        self.test_loader = eval_loader(self.test_data, cfg.eval.batch_size, info)
        self.hot = hot = build_hot_path(cfg, info, self.train_data, *self.norm)
        self.loader, self.augmenter, self.model, self.ema = hot.loader, hot.augmenter, hot.model, hot.ema
        self.precision = hot.precision
        self.progress = Progress()
        self.wall_base, self.t_start = 0.0, time.perf_counter()
        self.last_saved = self.t_start          # for train.checkpoint_every_min (rank 0's clock)
        self.last_eval: tuple[EvalResult, EvalResult | None] | None = None
        self.outputs: LiveOutputs | None = None

    def attach(self, run_dir: Path) -> None:
        """The run folder, opened (and locked by rank 0) once set-up has succeeded."""
        self.run_dir = run_dir
        self.outputs = LiveOutputs(self.cfg, run_dir, self.info.is_primary, self._log)

    def close(self) -> None:
        if self.outputs is not None:
            self.outputs.close()      # TensorBoard flushed whatever the end: done, stopped or failed

    # ------------------------------------------------------------------ state

    @property
    def final_model(self) -> nn.Module:
        """The weights the run reports as its result: the EMA when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def wall(self) -> float:
        return self.wall_base + time.perf_counter() - self.t_start

    def save_last(self) -> None:
        """Write ``last.pt`` (a collective: every rank contributes its random-stream states)."""
        self.progress.wall_time = self.wall()
        checkpoint.save_last(self.run_dir / "last.pt", self.hot, self.norm, self.progress, self.info)
        self.last_saved = time.perf_counter()

    def save_best(self) -> None:
        if self.info.is_primary:
            self.progress.wall_time = self.wall()     # for evaluate.py's wall_time_s
            checkpoint.save_best(self.run_dir / "best.pt", self.hot, self.norm, self.progress)

    def load(self, path: Path) -> None:
        """Continue from ``last.pt`` (:func:`~fastfm.engine.checkpoint.resume`)."""
        self.progress = checkpoint.resume(path, self.hot, self.info, self._log)
        self.wall_base, self.t_start = self.progress.wall_time, time.perf_counter()
        if self.info.is_primary:
            trim_metrics(self.run_dir / "metrics.jsonl", self.progress.epoch, self._log)
        self._log(f"resumed from {path}: epoch {self.progress.epoch + 1}, "
                  f"batch {self.progress.epoch_step} of {len(self.loader)}")

    def _log(self, msg: str) -> None:
        if self.info.is_primary:
            tqdm.write(msg)

    def write_plots(self, epoch: int) -> None:
        if self.last_eval is not None:
            res, ema = self.last_eval
            self.outputs.plots(epoch, ema if ema is not None else res)

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
        stats.reset(p.global_step, p.loss_sum, p.finite)
        self.loader.set_epoch(epoch)
        self.model.train()
        bar = tqdm(total=n, initial=start, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", leave=False,
                   dynamic_ncols=True, disable=not (info.is_primary and cfg.train.progress))
        t_epoch = t_window = time.perf_counter()
        last_refresh = start
        snap, lr = None, 0.0
        at_refresh = (p.loss_sum, p.finite)          # the epoch's sums at the previous refresh
        skipped_at_start = window = (p.global_step, p.skipped)   # where the skip window opened
        every_s = 60.0 * cfg.train.checkpoint_every_min
        with bar:
            for i, (images, labels, ahead) in enumerate(self.hot.batches(start), start):
                lr = self.hot.iteration(images, labels, p.global_step, p.global_step - p.skipped, ahead)
                p.global_step += 1
                if (i + 1) % cfg.train.log_every and i + 1 < n:
                    continue
                now = time.perf_counter()
                snap = read_stats(stats, self.hot.update, info, stop=self.stop.is_set(),
                                  save_due=every_s > 0 and now - self.last_saved >= every_s)
                if snap.first_bad is not None and cfg.train.on_nonfinite == "stop":
                    first_of_epoch = p.global_step - (i + 1)
                    raise NonFiniteLoss(
                        f"non-finite training loss (NaN or inf) at step {snap.first_bad + 1} (epoch "
                        f"{epoch + 1}, batch {snap.first_bad - first_of_epoch + 1} of {n}); stopping. "
                        f"Lower optim.lr, set optim.clip_grad, or set train.on_nonfinite: skip.")
                p.skipped = snap.skipped
                if p.global_step - window[0] >= cfg.train.skip_window or i + 1 == n:
                    self._check_skipped(p.global_step - window[0], p.skipped - window[1], epoch)
                    window = (p.global_step, p.skipped)
                loss = f"{snap.loss_sum / snap.finite:.4f}" if snap.finite else "n/a"
                img_s = (i + 1 - last_refresh) * global_batch / (now - t_window)
                bar.set_postfix(loss=loss, lr=f"{lr:.3g}", img_s=f"{img_s:.0f}",
                                **({"skipped": p.skipped} if p.skipped else {}), refresh=False)
                finite = snap.finite - at_refresh[1]     # the window's mean loss, from the same sums
                window_loss = (snap.loss_sum - at_refresh[0]) / finite if finite else None
                self.outputs.tb.refresh(p.global_step, window_loss, lr, img_s)
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
                self.outputs.tb.epoch(p.global_step, record)
                if "test_acc" in record:
                    self.write_plots(epoch + 1)
                self._log(epoch_line(record, epochs))
            if improved:              # best.pt before last.pt: see fastfm.engine.checkpoint
                self.save_best()
            self.save_last()
            if _any_rank(self.stop.is_set(), self.info) and epoch + 1 < epochs:
                raise Interrupted(f"stopped by {self.stop.name} after epoch {epoch + 1}; "
                                  f"{self.run_dir / 'last.pt'} written", self.stop.signum or signal.SIGTERM)
        return self.finish()

    def finish(self) -> dict:
        """Final figures: plain and TTA test accuracy of the final weights, per-class accuracy,
        ``summary.json`` (:func:`~fastfm.engine.outputs.summary.build_summary`); the plots were
        written at the last epoch's evaluation."""
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
        self.outputs.tb.final(p.global_step + 1, summary)
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
        folder, resume_from = open_run_folder(cfg.out_dir, _run_name(cfg), cfg.train.resume, overwrite, info,
                                              tqdm.write)
        run.attach(Path(cfg.out_dir) / _run_name(cfg))
        if resume_from is not None:
            run.load(Path(resume_from))
        elif info.is_primary:
            write_text(run.run_dir / "config.yaml", cfg.dump())
        run.outputs.augment_preview(run.train_data, info.device, *run.norm)
        run.outputs.open_tensorboard(run.progress.global_step if resume_from is not None else None)
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
            run.close()
        if folder is not None:
            folder.close()
        stop.restore()
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        cleanup(sync=all_ranks_here)


# ---------------------------------------------------------------------- helpers

def _run_name(cfg: Config) -> str:
    return cfg.name or "run"


def _any_rank(flag: bool, info: DistInfo) -> bool:
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=info.device)).item())
