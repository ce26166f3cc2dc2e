"""The training engine, one module per concern (imported by whoever needs them):

* :mod:`~fastfm.engine.step`: the hot path, :class:`~fastfm.engine.step.HotPath` (loader, augmenter,
  optimizer step, device-side statistics, EMA), built once by ``build_hot_path``.
* :mod:`~fastfm.engine.run`: ``train(cfg)``, a run's lifecycle (:class:`~fastfm.engine.run.Run`:
  epochs, refreshes, signals, evaluation, summary).
* :mod:`~fastfm.engine.state`: run state: the run folder (marker, lock), atomic checkpoints,
  metrics, :class:`~fastfm.engine.state.Progress` and the rules of resuming.
* :mod:`~fastfm.engine.evaluate`: test loss/accuracy, TTA, per-class accuracy, confusion matrix.
* :mod:`~fastfm.engine.amp`: precision set-up (autocast context and gradient-update object).
* :mod:`~fastfm.engine.optim`: optimizers and the warm-up + cosine schedule.
* :mod:`~fastfm.engine.plots`: learning curves and confusion-matrix PNGs.
* :mod:`~fastfm.engine.summary`: the keys and figures of ``summary.json`` (also ``evaluate.py --json``).
* :mod:`~fastfm.engine.tensorboard`: a run's TensorBoard event files (rank 0, ``log.tensorboard``).
"""
