"""TensorBoard event files of a run (``log.tensorboard``): rank 0 writes ``runs/<name>/tb/``.

    tensorboard --logdir runs

One step axis for everything: the global optimizer step (skipped steps included, ``Progress.global_step``).

* ``train/loss``, ``train/lr``, ``train/images_per_sec`` at every progress refresh (every
  ``train.log_every`` steps and at an epoch's end), at the step reached.  The figures are the ones
  the refresh already holds (no extra host sync): the loss is the mean over the steps since the
  previous refresh (no point when none of them had a finite loss), the lr that of the last step,
  images/sec over the same window.
* ``epoch/*`` (train loss, test loss and accuracy of the model and the EMA, epoch time, images/sec,
  skipped steps, and ``epoch/epoch``: the epoch's number) at the step where the epoch ended: epoch N
  ends at step N x steps per epoch.
* ``final/*`` (test accuracy and loss, with TTA, per-class accuracy) at the last step + 1.
* ``config`` (text: the resolved config.yaml) at step 0, and again at the resume step + 1 on every
  resumption (the config may have changed).

Resuming without duplicates.  A resumed run opens a new event file with ``purge_step`` = its
checkpoint's step + 1: TensorBoard then drops, for every tag, the events of the earlier files at that
step or later, i.e. whatever the stopped run wrote after the checkpoint it resumes from (the events
at the checkpoint's step itself were all written before the checkpoint was), and the resumed run
writes them again, as :func:`~fastfm.engine.folder.trim_metrics` does for ``metrics.jsonl``.  This is
why the epoch and final figures sit on the step axis too: purging works on steps, never on epochs.
The final figures sit one step past the last so that a resumed run whose epochs were all done (it
only evaluates again) replaces them instead of adding a second point.

Logging must never stop a run: a missing ``tensorboard`` package is one warning and no events; an
error while writing (a full disk) is one warning, then no more events.  The writer is flushed at
every epoch's end and closed (flushed) at the end of the run, however it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

# TensorBoard's tag separator is "/": class names such as "T-shirt/top" are made one tag level.
_TAG_SAFE = str.maketrans({"/": "_", " ": "_"})

EPOCH_KEYS = {"train_loss": "train_loss", "test_loss": "test_loss", "test_acc": "test_acc",
              "test_loss_ema": "test_loss_ema", "test_acc_ema": "test_acc_ema", "epoch_time_s": "time_s",
              "images_per_sec": "images_per_sec", "skipped_steps": "skipped_steps", "epoch": "epoch"}
FINAL_KEYS = ("test_acc", "test_loss", "test_acc_tta", "test_loss_tta", "test_acc_model", "test_loss_model")


class NullLog:
    """No TensorBoard: every call does nothing (other ranks, ``log.tensorboard: false``, no package)."""

    def refresh(self, step: int, loss: float | None, lr: float, images_per_sec: float) -> None:
        pass

    def epoch(self, step: int, record: dict) -> None:
        pass

    def final(self, step: int, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLog(NullLog):
    """A ``SummaryWriter`` on ``folder`` whose every call is guarded (see the module docstring)."""

    def __init__(self, writer, folder: Path, warn: Callable[[str], None]):
        self.writer, self.folder, self.warn = writer, folder, warn

    @classmethod
    def open(cls, folder: Path, config_text: str, resume_step: int | None,
             warn: Callable[[str], None]) -> NullLog:
        """The log of a run starting afresh (``resume_step`` None) or resuming at that step; a
        :class:`NullLog` (after one warning) when it cannot be written."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warn(f"warning: log.tensorboard: the tensorboard package is not installed (pip install "
                 f"'fastfm[tb]' or set --log.tensorboard false); not writing {folder}")
            return NullLog()
        except Exception as e:  # noqa: BLE001 - a broken install (say, a protobuf it cannot use)
            warn(f"warning: log.tensorboard: the tensorboard package cannot be loaded ({type(e).__name__}: "
                 f"{e}); not writing {folder}")
            return NullLog()
        purge = None if resume_step is None else resume_step + 1
        try:
            writer = SummaryWriter(log_dir=str(folder), purge_step=purge)
        except Exception as e:  # noqa: BLE001 - an unwritable folder, whatever the writer raises
            warn(f"warning: log.tensorboard: cannot write {folder} ({type(e).__name__}: {e}); "
                 f"no TensorBoard events for this run")
            return NullLog()
        log = cls(writer, folder, warn)
        log._guard(lambda w: w.add_text("config", _as_code(config_text), 0 if purge is None else purge))
        return log

    def refresh(self, step: int, loss: float | None, lr: float, images_per_sec: float) -> None:
        self._scalars("train/", {"loss": loss, "lr": lr, "images_per_sec": images_per_sec}, step)

    def epoch(self, step: int, record: dict) -> None:
        self._scalars("epoch/", {tag: record.get(key) for key, tag in EPOCH_KEYS.items()}, step)
        self._guard(lambda w: w.flush())        # a live view: the epoch shows up at once

    def final(self, step: int, summary: dict) -> None:
        values = {key: summary.get(key) for key in FINAL_KEYS}
        values.update({f"per_class_acc/{name.translate(_TAG_SAFE)}": acc
                       for name, acc in (summary.get("per_class_acc") or {}).items()})
        self._scalars("final/", values, step)

    def close(self) -> None:
        self._guard(lambda w: w.close())
        self.writer = None

    def _scalars(self, prefix: str, values: dict, step: int) -> None:
        def write(w):
            for tag, value in values.items():
                if value is not None:
                    w.add_scalar(prefix + tag, value, step)
        self._guard(write)

    def _guard(self, call) -> None:
        """Run ``call(writer)``; the first failure is one warning and ends the log (a broken
        writer is closed quietly: it may fail again)."""
        if self.writer is None:
            return
        try:
            call(self.writer)
        except Exception as e:  # noqa: BLE001 - TensorBoard must never stop the run
            writer, self.writer = self.writer, None
            self.warn(f"warning: log.tensorboard: writing {self.folder} failed ({type(e).__name__}: {e}); "
                      f"no more TensorBoard events for this run")
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass


def _as_code(text: str) -> str:
    """TensorBoard renders text as Markdown: indent it into a code block so YAML keeps its layout."""
    return "\n".join("    " + line for line in text.splitlines())
