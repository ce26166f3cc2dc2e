"""The figures of a trained model, as ``summary.json`` holds them: built in one place for the run's
end (:meth:`~fastfm.engine.run.Run.finish`) and for ``scripts/evaluate.py --json``
(:func:`~fastfm.engine.checkpoint.evaluate_checkpoint`), so the two files cannot drift apart.

Every key is always present (:data:`SUMMARY_KEYS`); a figure that does not apply is ``null``: the TTA
keys without TTA, ``test_*_model`` when the final weights are the model itself (no EMA).

What each key describes:

* ``test_*``, ``per_class_acc``, ``final_weights``: the evaluated weights (the EMA when kept);
* ``device``, ``world_size``, ``precision``, ``git_revision``, ``torch``: the process that computed
  those test figures (the training run itself, or the evaluation);
* ``best_test_acc``, ``best_epoch``, ``epochs`` (the configured number), ``wall_time_s``,
  ``images_per_sec`` (the median over the epochs of ``metrics.jsonl``): the training run.  An
  evaluation takes them from the checkpoint (its progress and config) and from ``metrics.jsonl``
  beside it when there is one; what neither holds is ``null``.
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

import torch

from ...runinfo import git_revision

if TYPE_CHECKING:
    from ..evaluate import EvalResult

SUMMARY_KEYS = ("test_acc", "test_loss", "test_acc_tta", "test_loss_tta", "tta_views", "best_test_acc",
                "best_epoch", "final_weights", "test_acc_model", "test_loss_model", "per_class_acc",
                "images_per_sec", "device", "world_size", "precision", "epochs", "wall_time_s",
                "git_revision", "torch")


def median_images_per_sec(records: list[dict]) -> float | None:
    """``images_per_sec`` of a run: the median over its epochs (rows of ``metrics.jsonl``), None
    when none recorded one.  Only finite numbers count: ``compare_runs`` reads folders it did not
    write this moment and must not fail on a damaged row."""
    rates = [v for r in records if isinstance(v := r.get("images_per_sec"), (int, float))
             and not isinstance(v, bool) and math.isfinite(v)]
    return statistics.median(rates) if rates else None


def build_summary(*, final: EvalResult, final_weights: str, model: EvalResult | None, tta: EvalResult | None,
                  tta_views: int | None, best_acc: float | None, best_epoch: int | None, records: list[dict],
                  device: str, world_size: int, precision: str, epochs: int, wall_time_s: float | None) -> dict:
    """The summary (keys in :data:`SUMMARY_KEYS`' order).

    ``final``: plain test figures of the reported weights (``final_weights``: ``ema`` or ``model``);
    ``model``: the model's own figures when the reported weights are the EMA, else None; ``tta``:
    the TTA figures of the reported weights (``tta_views`` views) or None; ``best_acc`` below 0 or
    ``best_epoch`` 0 (no evaluation yet) become null; ``records``: the rows of ``metrics.jsonl``.
    """
    best = best_epoch is not None and best_epoch > 0 and best_acc is not None and best_acc >= 0
    summary = {
        "test_acc": final.acc, "test_loss": final.loss,
        "test_acc_tta": tta.acc if tta is not None else None,
        "test_loss_tta": tta.loss if tta is not None else None,
        "tta_views": tta_views if tta is not None else None,
        "best_test_acc": best_acc if best else None, "best_epoch": best_epoch if best else None,
        "final_weights": final_weights,
        "test_acc_model": model.acc if model is not None else None,
        "test_loss_model": model.loss if model is not None else None,
        "per_class_acc": final.per_class(),
        "images_per_sec": median_images_per_sec(records),
        "device": device, "world_size": world_size, "precision": precision, "epochs": epochs,
        "wall_time_s": wall_time_s, "git_revision": git_revision(), "torch": torch.__version__,
    }
    if tuple(summary) != SUMMARY_KEYS:      # the one list of keys: a new key goes into both
        raise RuntimeError(f"summary keys {tuple(summary)} differ from SUMMARY_KEYS {SUMMARY_KEYS}")
    return summary
