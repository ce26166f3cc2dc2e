"""What each augmentation op costs, per backend: the engine behind ``benchmarks/aug_cost.py``.

Ops are timed as a cumulative ladder in the documented order (:class:`fastfm.config.AugConfig`):
``base`` (every op off: normalisation and output format only), then ``+resize``, ``+crop``,
``+flip``, ``+autoaugment``, ``+erasing``, ``+cutmix``, ``+mixup``; an op that is off in the full
configuration gets no rung, and the last rung is the full configuration.  An op's cost is the
difference between its rung and the one below (a small negative difference means the op costs less
than the timing noise).  Each backend's whole stack is also an ``aug`` row, beside the baseline's
(:mod:`fastfm.bench.baseline`: the original per-sample PIL pipeline, one process, CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import torch

from ..augment import create_augmenter
from ..config import AugConfig
from ..distributed import resolve_device
from . import baseline
from .inputs import benchmark_images
from .report import Row, RowLog, compare_to_baseline, markdown_table, measured_environment, missing, problem_notes
from .timing import Timing, time_fn

# The ops in the documented order: (rung name, the AugConfig field that switches it on).
OPS = (("resize", "resize"), ("crop", "crop"), ("flip", "flip_p"), ("autoaugment", "autoaugment"),
       ("erasing", "erasing_p"), ("cutmix", "cutmix_p"), ("mixup", "mixup_p"))


def op_ladder(full: AugConfig) -> list[tuple[str, AugConfig]]:
    """Cumulative configurations from every op off to ``full``, one op switched on per rung.

    The base rung is ``full`` with each field of :data:`OPS` set as :meth:`AugConfig.off` (with no
    resize or crop) sets it; everything else (backend, channels, memory format, erasing and mixing
    parameters) is ``full``'s on every rung.
    """
    off = AugConfig.off(resize=0, crop=0)
    cfg = dataclasses.replace(full, **{key: getattr(off, key) for _, key in OPS})
    rungs = [("base", cfg)]
    for name, key in OPS:
        if getattr(cfg, key) != getattr(full, key):
            cfg = dataclasses.replace(cfg, **{key: getattr(full, key)})
            rungs.append((name, cfg))
    return rungs


def time_augmenter(cfg: AugConfig, images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
                   warmup: int = 3, iters: int = 10, repeats: int = 5) -> Timing:
    """A fresh ``cfg.backend`` augmenter, timed on one resident batch (uint8 images, int64 labels)."""
    aug = create_augmenter(cfg, images.device, seed=seed)
    return time_fn(lambda: aug(images, labels), images.device, warmup=warmup, iters=iters,
                   repeats=repeats)


def aug_row(cfg: AugConfig, images: torch.Tensor, labels: torch.Tensor, **timing) -> Row:
    """The whole ``cfg`` stack of ``cfg.backend`` (an ``aug`` row)."""
    t = time_augmenter(cfg, images, labels, **timing)
    return Row.timed("aug", cfg.backend, images.shape[0], t, config=dict(aug=dataclasses.asdict(cfg)))


def backend_rows(full: AugConfig, images: torch.Tensor, labels: torch.Tensor, **timing) -> list[Row]:
    """One ``op`` row per rung of :func:`op_ladder`, then the ``aug`` row of the whole stack (the
    last rung's timing: the last rung is ``full``)."""
    b = images.shape[0]
    rows, prev = [], 0.0
    for name, cfg in op_ladder(full):
        t = time_augmenter(cfg, images, labels, **timing)
        rows.append(Row.timed("op", full.backend, b, t, op="base" if not rows else "+" + name,
                              op_ms=t.ms_median - prev, config=dict(aug=dataclasses.asdict(cfg))))
        prev = t.ms_median
    for r in rows:
        r.op_share = r.op_ms / prev
    last = rows[-1]
    rows.append(dataclasses.replace(last, mode="aug", op=None, op_ms=None, op_share=None,
                                    config=dict(aug=dataclasses.asdict(full))))
    return rows


COLUMNS = [("pipeline", "backend", ""), ("mode", "row", ""), ("op", "op", ""),
           ("op_ms", "op ms/batch", ".3f"), ("op_share", "share of stack", ".1%"),
           ("ms_per_batch", "ms/batch", ".3f"), ("images_per_sec", "images/s", ",.0f"),
           ("vs_baseline", "× baseline", ".1f")]


def aug_cost_report(*, device="auto", backends=("native",), batch_size=512, data_root="data",
                    repeats=5, iters=None, include_baseline=True, full: AugConfig | None = None,
                    on_update: Callable[[dict], None] | None = None) -> dict:
    """Time every backend's op ladder and the baseline; return environment, rows and markdown.

    Raises ``ValueError`` for a batch below 2 or a device this machine does not have; a backend
    that is missing or fails gets a row saying so (:func:`~fastfm.bench.report.attempt`), the
    others are still measured.  ``on_update(report)``: the report so far, after every backend and
    at the end.  ``clock`` in the report: device time (CUDA events) on CUDA, so an op's cost is
    what the GPU spent on it, not launch cost on the host; wall time on the CPU.
    """
    load_before = os.getloadavg()
    dev = resolve_device(device)
    if batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2 (CutMix pairs samples), got {batch_size}")
    iters = iters or 10
    full = full or AugConfig()
    data, source = benchmark_images(dev, batch_size, data_root)
    clock = "cuda events (device time)" if dev.type == "cuda" else "wall (CPU)"

    def build(rows: list[Row]) -> dict:
        rows = list(rows)
        compare_to_baseline(rows)
        env = measured_environment(dev, load_before)
        md = [f"Augmentation cost on {env['device']} (git {env['git_revision']}), batch {batch_size}, "
              f"input: {source}; median of {repeats} runs of {iters} batches after warm-up; clock: {clock}.",
              "op rows: the cumulative ladder (ms/batch of the stack up to that op; op ms/batch, the "
              "difference to the rung below); aug rows: the whole stack; baseline: the original "
              "per-sample PIL pipeline, one process, CPU.", "", markdown_table(rows, COLUMNS)]
        md += [f"\n{note}" for note in problem_notes(rows)]
        return dict(environment=env, batch_size=batch_size, input=source, iters=iters, repeats=repeats,
                    clock=clock, rows=rows, missing=missing(rows), markdown="\n".join(md))

    log = RowLog(None if on_update is None else (lambda rows: on_update(build(rows))))
    for name in backends:
        cfg = dataclasses.replace(full, backend=name)
        log.attempt(functools.partial(backend_rows, cfg, data.images, data.labels, iters=iters, repeats=repeats),
                    mode="aug", pipeline=name, batch=batch_size)
    if include_baseline:
        log.attempt(lambda: baseline.aug_row(data.images.squeeze(1).cpu().numpy(),
                                             data.labels.cpu().numpy(), batch_size, min(repeats, 3)),
                    mode="aug", pipeline="baseline", batch=batch_size)
    report = build(log)
    if on_update is not None:
        on_update(report)
    return report

