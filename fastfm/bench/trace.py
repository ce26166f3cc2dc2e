"""A ``torch.profiler`` Chrome trace of the engine's hot path, with named ranges.

The hot path is traced as the throughput benchmark times it, with nothing patched: the ranges come
from three places.

* Around the calls made here: ``train_step`` (one iteration: the next batch and ``hot.iteration``)
  and ``data.next`` (the next batch of ``hot.loader``).
* The augmenter's own ranges, ``aug.<op>`` (its ``op_ranges`` switch, on for a fresh augmenter made
  for the trace, never for the one that is timed).
* PyTorch's own names for the step: ``autograd::engine::evaluate_function: <Node>`` for each
  backward node and ``Optimizer.step#<Optimizer>.step`` / ``Optimizer.zero_grad#...`` for the
  optimizer.  The forward pass is the ATen ops (``aten::convolution``, ...) directly under
  ``train_step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

from ..augment import BackendUnavailable
from ..engine.step import HotPath
from .hot_path import endless_ahead, with_augmenter
from .timing import synchronize

OWN_RANGES = ("train_step", "data.next")
NAMED_PREFIXES = ("aug.", "Optimizer.step#", "Optimizer.zero_grad#")   # the augmenter's, the optimizer's
BACKWARD = "autograd::engine::evaluate_function: "                       # one per backward node


def range_names(names) -> list[str]:
    """The ranges a reader of the trace looks for among the profiler's event ``names``, sorted; the
    backward nodes as one entry, ``autograd::engine::evaluate_function: *``."""
    found = {n for n in names if n in OWN_RANGES or n.startswith(NAMED_PREFIXES)}
    if any(n.startswith(BACKWARD) for n in names):
        found.add(BACKWARD + "*")
    return sorted(found)


def write_trace(hot: HotPath, backends: Sequence[str], mean: float, std: float, out_dir: Path, steps: int,
                warmup: int = 1) -> dict | None:
    """Write ``out_dir/trace-<backend>.json`` (``export_chrome_trace``) of ``steps`` iterations of
    ``hot`` with the first available backend, after ``warmup`` untimed ones (at least one: lazy
    tables and autotuning stay out of the trace).  Returns the path, the backend, the steps and the
    ranges recorded (:func:`range_names`); None when no backend is available."""
    for name in backends:
        try:
            traced = with_augmenter(hot, name, mean, std, op_ranges=True)
            break
        except BackendUnavailable:
            continue                # that backend's rows say it is missing
    else:
        return None
    batches = endless_ahead(traced)

    def iteration(i: int) -> None:
        with record_function("train_step"):
            with record_function("data.next"):
                images, labels, ahead = next(batches)
            traced.iteration(images, labels, i, i, ahead)

    for i in range(max(1, warmup)):
        iteration(i)
    synchronize(hot.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if hot.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            iteration(max(1, warmup) + i)
        synchronize(hot.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"trace-{traced.augmenter.name}.json"
    prof.export_chrome_trace(str(path))
    ranges = range_names({e.key for e in prof.key_averages()})
    return dict(path=str(path), backend=traced.augmenter.name, steps=steps, ranges=ranges)
