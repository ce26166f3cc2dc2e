"""Honest timing shared by every benchmark: warm-up, device synchronisation, median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (CUDA is asynchronous; the CPU has nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Per-call wall time of a timed function: median and spread over ``repeats`` runs of ``iters``."""

    ms_median: float
    ms_min: float
    ms_max: float
    iters: int
    repeats: int
    clock: str = "wall"     # "cuda events" (device time) on CUDA, "wall" (perf_counter) on the CPU

    def per_second(self, items_per_call: int) -> float:
        return items_per_call * 1000.0 / self.ms_median


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, iters: int = 10,
            repeats: int = 5) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed runs of ``iters`` calls each.

    On CUDA each run is timed with CUDA events recorded on the stream before the first and after the
    last call: device time, so a difference between two timings (an augmentation op's rung) is what
    the GPU spent, not launch cost on the host.  On the CPU each run is wall time between two
    synchronisations.  The figure is the run's time divided by ``iters``; the median over runs is
    reported because it is robust to a stray slow run (another process, a GC pause).  ``clock`` in
    the result says which clock was used.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    cuda = device.type == "cuda"
    runs = []
    for _ in range(repeats):
        synchronize(device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        else:
            t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        if cuda:
            end.record()
            end.synchronize()
            runs.append(start.elapsed_time(end) / iters)
        else:
            runs.append((time.perf_counter() - t0) * 1000.0 / iters)
    return Timing(statistics.median(runs), min(runs), max(runs), iters, repeats,
                  clock="cuda events" if cuda else "wall")
