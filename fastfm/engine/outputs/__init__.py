"""What a run shows: ``summary.json`` (:mod:`.summary`), TensorBoard events (:mod:`.tensorboard`),
the PNG plots (:mod:`.plots`), what rank 0 writes while a run trains (:mod:`.live`) and several
runs side by side (:mod:`.compare`, for ``scripts/compare_runs.py``)."""
