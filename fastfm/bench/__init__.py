"""Measuring code, one module per concern, on top of the library: nothing in ``fastfm.data``,
``fastfm.augment``, ``fastfm.engine`` or ``fastfm.models`` imports it.  ``benchmarks/*.py`` parse
arguments and call into it.

* :mod:`~fastfm.bench.timing`: warm-up, device synchronisation, median of repeated runs.
* :mod:`~fastfm.bench.flops`: FLOPs per training image, device peaks, the GTX 1060's computed ceiling.
* :mod:`~fastfm.bench.inputs`: the images a benchmark runs on (real when prepared, else synthetic).
* :mod:`~fastfm.bench.hot_path`: the engine's hot path, built by the engine and run as the trainer
  runs it.
* :mod:`~fastfm.bench.baseline`: the baseline, the original report's per-sample PIL + DataLoader
  pipeline, kept only to be timed beside fastfm.
* :mod:`~fastfm.bench.aug_cost`: what each augmentation op costs, per backend (``benchmarks/aug_cost.py``).
* :mod:`~fastfm.bench.throughput`: training images/sec of the engine's hot path (``benchmarks/throughput.py``).
* :mod:`~fastfm.bench.trace`: a ``torch.profiler`` trace of the hot path with named ranges.
* :mod:`~fastfm.bench.report`: the one row format of every benchmark, its markdown table, JSON and plot.
"""
