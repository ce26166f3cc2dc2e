"""What rank 0 shows while a run trains, in its run folder: ``augment.png`` at the start,
``curves.png`` and ``confusion.png`` rewritten at every evaluation (so they can be opened mid-run),
and TensorBoard event files in ``tb/`` (``log.tensorboard``), fed from the figures the trainer's
refreshes already read: no extra host sync.  On the other ranks every method does nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ...augment import create_augmenter
from ...config import Config
from ...data.resident import ResidentData
from ..evaluate import CLASSES, EvalResult
from ..folder import TB_DIR, read_jsonl, writing
from .plots import plot_confusion, plot_curves
from .tensorboard import NullLog, TensorBoardLog


class LiveOutputs:
    """Rank 0's live files in ``run_dir``; ``tb`` is the TensorBoard log (a :class:`NullLog` until
    :meth:`open_tensorboard`, and on every other rank)."""

    def __init__(self, cfg: Config, run_dir: Path, primary: bool, log: Callable[[str], None]):
        self.cfg, self.run_dir, self.primary, self.log = cfg, run_dir, primary, log
        self.tb = NullLog()

    def open_tensorboard(self, resume_step: int | None) -> None:
        """The event files in ``tb/``; a resumed run continues the curves from its checkpoint's
        step (see :mod:`fastfm.engine.outputs.tensorboard`)."""
        if self.primary and self.cfg.log.tensorboard:
            self.tb = TensorBoardLog.open(self.run_dir / TB_DIR, self.cfg.dump(), resume_step, self.log)

    def close(self) -> None:
        self.tb.close()

    def augment_preview(self, data: ResidentData, device: torch.device, mean: float, std: float) -> None:
        """``augment.png``: the first training images before and after this run's own augmentation
        (its backend, config and rank 0's seed, CutMix included), by the code of
        ``scripts/preview_augment.py``.  A second augmenter built like the hot path's draws them: the
        hot path's augmenter and torch's global generators (restored by ``write_grid``) are left as
        they were, so the training is the same bit for bit with or without the picture.  Not redrawn
        when resuming."""
        path = self.run_dir / "augment.png"
        if not self.primary or path.exists():
            return
        from ...augment.preview import write_grid

        seed = self.cfg.train.seed          # rank 0's augmentation seed (build_hot_path: seed + rank)
        with writing(path):
            aug = create_augmenter(self.cfg.aug, device, seed=seed, mean=mean, std=std)
            n = min(8, len(data))
            write_grid(path, {f"{self.cfg.aug.backend} (this run, seed {seed})": aug},
                       data.images[:n], data.labels[:n], mean=mean, std=std, rows=4)

    def plots(self, epoch: int, final: EvalResult) -> None:
        """``curves.png`` (from ``metrics.jsonl``) and ``confusion.png`` (``final``: the latest
        evaluation of the final weights), each written atomically."""
        if not self.primary:
            return
        with writing(self.run_dir / "curves.png"):
            plot_curves(read_jsonl(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png")
        with writing(self.run_dir / "confusion.png"):
            plot_confusion(final.confusion, CLASSES, self.run_dir / "confusion.png",
                           f"{self.cfg.name or 'run'}, epoch {epoch}/{self.cfg.train.epochs}: "
                           f"test accuracy {100 * final.acc:.2f}%")


def epoch_line(r: dict, epochs: int) -> str:
    """The console line of an epoch (``r``: its row of ``metrics.jsonl``)."""
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
