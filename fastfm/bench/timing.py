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

    def per_second(self, items_per_call: int) -> float:
        return items_per_call * 1000.0 / self.ms_median


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, iters: int = 10,
            repeats: int = 5) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed runs of ``iters`` calls each.

    Each run is bracketed by device synchronisation (CUDA work is asynchronous: without it only the
    launch would be timed); the figure is the run's wall time divided by ``iters``.  The median over
    runs is reported because it is robust to a stray slow run (another process, a GC pause).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    runs = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        synchronize(device)
        runs.append((time.perf_counter() - t0) * 1000.0 / iters)
    return Timing(statistics.median(runs), min(runs), max(runs), iters, repeats)
