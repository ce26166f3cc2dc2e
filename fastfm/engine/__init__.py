"""The training engine, one module per job (imported by whoever needs them):

* :mod:`~fastfm.engine.step`: the hot path, :class:`~fastfm.engine.step.HotPath` (loader, augmenter,
  optimizer step, device-side statistics, EMA), built once by ``build_hot_path``; what a refresh
  reads of it (``read_stats``).
* :mod:`~fastfm.engine.run`: ``train(cfg)``, a run's lifecycle and its epoch loop.
* :mod:`~fastfm.engine.checkpoint`: the checkpoint format (what ``last.pt``/``best.pt`` hold, saving,
  loading, the rules of resuming) and evaluating a checkpoint file.
* :mod:`~fastfm.engine.folder`: the run folder (marker, lock, cleaning) and ``metrics.jsonl``.
* :mod:`~fastfm.engine.signals`: stopping on SIGTERM/SIGINT.
* :mod:`~fastfm.engine.evaluate`: test loss/accuracy, TTA, per-class accuracy, confusion matrix.
* :mod:`~fastfm.engine.amp`: precision set-up (autocast context and gradient-update object).
* :mod:`~fastfm.engine.optim`: optimizers and the warm-up + cosine schedule.
* :mod:`~fastfm.engine.outputs`: what a run shows: ``summary.json``, TensorBoard, plots, and
  several runs compared.
"""
