"""The training engine, one module per concern (imported by whoever needs them):

* :mod:`~fastfm.engine.train`: ``fit(cfg)``, the step function and the epoch loop.
* :mod:`~fastfm.engine.evaluate`: test loss/accuracy, TTA, per-class accuracy, confusion matrix.
* :mod:`~fastfm.engine.amp`: precision set-up (autocast context and scaler object).
* :mod:`~fastfm.engine.optim`: optimizers and the warm-up + cosine schedule.
* :mod:`~fastfm.engine.checkpoint`: the run folder and atomic checkpoints.
* :mod:`~fastfm.engine.plots`: learning curves and confusion-matrix PNGs.
"""
