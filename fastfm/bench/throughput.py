"""Training throughput beside the baseline: the engine behind ``benchmarks/throughput.py``.

Every training figure times the engine's own hot path, :class:`~fastfm.engine.step.HotPath`, made by
:func:`~fastfm.engine.step.build_hot_path` exactly as the trainer makes it, never a copy:

* ``aug``: each backend's whole augmentation stack on one resident batch
  (:func:`fastfm.bench.aug_cost.aug_row`), and the ``baseline`` row: the original per-sample PIL
  pipeline's augmentation in one process (:func:`fastfm.bench.baseline.aug_row`);
* ``step``: ``hot.optimizer_step`` (forward, backward, optimizer) on a synthetic float batch;
* ``full``: per backend, what the trainer does per step: the next batch of ``hot.loader`` (epochs
  advanced with ``set_epoch``), then ``hot.iteration`` (schedule, augmentation, step, device-side
  loss statistics, EMA when configured), without the trainer's periodic progress refresh (one host
  sync every ``train.log_every`` steps).  One hot path serves every backend: a backend's row runs
  ``dataclasses.replace(hot, augmenter=<that backend's>)``, so the model is built (and compiled) once;
* ``baseline``: the original report's pipeline on this machine: torchvision transforms on PIL images
  in a ``DataLoader`` with worker processes, CutMix on the collated batch, then ``hot.optimizer_step``
  of a hot path built for fp32, NCHW, batch 128 (:func:`fastfm.bench.baseline.time_training`);
* ``reference``: the GTX 1060 6GB ceiling, *computed* from the model's FLOPs per image and the card's
  FP32 peak (:mod:`fastfm.bench.flops`), never measured.
* the matrix (``--matrix``, :func:`matrix_rows`): ``step`` and ``full`` rows of a hot path built by
  the engine for each ``train.compile_mode`` (eager, compiled, compiled with CUDA graphs) x batch,
  named in ``variant``, with the ATen operator calls of one augmenter call and one step
  (``op_calls``, :func:`count_op_calls`).

Derived columns: achieved TFLOP/s = FLOPs per training image (fwd + bwd, ``FlopCounterMode``) x
images/sec; fraction of the device's spec peak for the math mode the row ran in (bf16/fp16, TF32 or
FP32; ``peak_source``) and of a measured matrix-product ceiling (:class:`~fastfm.bench.flops.Peaks`);
figures on CUDA are device time from CUDA events (``clock``); speed-up over the
baseline (:func:`~fastfm.bench.report.compare_to_baseline`) and over the GTX 1060 ceiling.  The
augmentation share of a ``full`` row is ``1 - step_ms / full_ms``: the measured full iteration
against the step-only timing of the same configuration.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import BACKENDS, Config
from ..data.resident import ResidentData
from ..distributed import resolve_device
from ..engine.step import HotPath
from . import baseline
from .aug_cost import aug_row
from .flops import GTX1060_FP32_TFLOPS, Peaks, gtx1060_ceiling_images_per_sec, train_flops_per_image
from .hot_path import build_single, iteration_fn, native_config, with_backend
from .inputs import benchmark_images, synthetic_batch
from .report import (TRAINING_MODES, Row, RowLog, attempt, compare_to_baseline, guarded, markdown_table,
                     measured_environment, missing, problem_notes)
from .timing import synchronize, time_fn
from .trace import write_trace

MODES = ("aug", "step", "full", "baseline")
# The matrix's compile modes (train.compile_mode) and what each row calls them.
MATRIX_MODES = {"none": "eager", "default": "compiled", "reduce-overhead": "compiled + CUDA graphs",
                "max-autotune": "compiled, max-autotune"}
MATRIX_BATCHES = (128, 512)
FULL_DATASET = 60_000

# What a CUDA run uses unless told otherwise, and the CPU's scaled-down stand-ins (a WRN-40-4 step
# at batch 512 takes minutes on 2 cores; WRN-16-4 is the smallest WRN whose convolutions still run
# near the CPU's matrix-product speed).
GPU_DEFAULTS = dict(model="wrn-40-4", batch_size=512, warmup=5, iters=20, repeats=5)
CPU_DEFAULTS = dict(model="wrn-16-4", batch_size=64, warmup=1, iters=2, repeats=5)


@dataclass
class Settings:
    """A resolved benchmark run: the training configuration and how long to time each row."""

    device: torch.device
    cfg: Config                     # model, aug stack, optimizer, batch, precision, compile
    modes: tuple[str, ...]
    backends: tuple[str, ...]
    warmup: int                     # untimed calls before timing (cuDNN autotuning, lazy tables)
    iters: int                      # calls per timed run
    repeats: int                    # timed runs; the median is reported
    baseline_batch: int
    workers: int                    # DataLoader worker processes of the baseline
    data_root: str
    scaled: list[str] = field(default_factory=list)   # what differs from the GPU defaults, in words

    @property
    def batch_size(self) -> int:
        return self.cfg.train.batch_size

    @property
    def timing(self) -> dict:
        """:func:`~fastfm.bench.timing.time_fn`'s keyword arguments."""
        return dict(warmup=self.warmup, iters=self.iters, repeats=self.repeats)

    @property
    def calls(self) -> int:
        """Calls of a timed function per row (warm-up included): how many batches a row consumes."""
        return self.warmup + self.iters * self.repeats

    def full_images(self) -> int:
        """Resident images for ``full`` rows: the whole training set on CUDA; on the CPU just the
        batches a row consumes (loading all 60,000 there only costs start-up time)."""
        if self.device.type == "cuda":
            return FULL_DATASET
        return min(FULL_DATASET, self.batch_size * self.calls)


def model_overrides(spec: str) -> list[str]:
    """``wrn-D-K`` (any case) -> WideResNet depth D, width K; any other name is a timm model."""
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", spec.lower())
    if m:
        return ["--model.name", "wrn", "--model.depth", m.group(1), "--model.width", m.group(2)]
    return ["--model.name", spec]


def model_label(cfg: Config) -> str:
    m = cfg.model
    return f"wrn-{m.depth}-{m.width}" if m.name == "wrn" else m.name


def resolve_settings(*, device: str = "auto", config: str | None = None, model: str | None = None,
                     batch_size: int | None = None, precision: str | None = None,
                     channels_last: bool | None = None, compile: bool | None = None,  # noqa: A002
                     compile_mode: str | None = None,
                     modes=MODES, backends=BACKENDS, workers: int | None = None,
                     warmup: int | None = None, iters: int | None = None, repeats: int | None = None,
                     baseline_batch: int = 128, data_root: str = "data") -> Settings:
    """Defaults <- ``config`` (a YAML preset) <- the explicit arguments, with CPU stand-ins for the
    model, batch and timing counts that neither names.  Raises ``ValueError`` (``ConfigError`` is
    one) naming the bad option: unknown mode or backend, batch < 2, CUDA asked for but absent.
    ``compile``: the old switch, True meaning ``compile_mode="default"``, False ``"none"``;
    ``compile_mode`` (``train.compile_mode``) wins when both are given."""
    dev = resolve_device(device)
    bad_modes = [m for m in modes if m not in MODES]
    if bad_modes or not modes:
        raise ValueError(f"--mode: {bad_modes or 'none'} not among {', '.join(MODES)}")
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        raise ValueError(f"--backends: {bad or 'none'} not among {', '.join(BACKENDS)}")
    cpu = dev.type == "cpu"
    defaults = CPU_DEFAULTS if cpu else GPU_DEFAULTS
    overrides = ["--train.device", str(dev), "--data.root", str(data_root)]
    scaled = []
    if model is None and config is None:
        model = defaults["model"]
        if cpu:
            scaled.append(f"model {model} (GPU default {GPU_DEFAULTS['model']})")
    if model is not None:
        overrides += model_overrides(model)
    if batch_size is None and config is None:
        batch_size = defaults["batch_size"]
        if cpu:
            scaled.append(f"batch {batch_size} (GPU default {GPU_DEFAULTS['batch_size']})")
    if batch_size is not None:
        overrides += ["--train.batch_size", str(batch_size)]
    if compile_mode is None and compile is not None:
        compile_mode = "default" if compile else "none"
    for key, value in (("train.precision", precision), ("aug.channels_last", channels_last),
                       ("train.compile_mode", compile_mode)):
        if value is not None:
            overrides += [f"--{key}", str(value).lower()]
    cfg = Config.load(config, overrides)
    for name, value in (("--batch-size", cfg.train.batch_size), ("--baseline-batch", baseline_batch)):
        if value < 2:
            raise ValueError(f"{name} must be at least 2 (CutMix pairs samples, BatchNorm needs 2), "
                             f"got {value}")
    counts = dict(warmup=warmup, iters=iters, repeats=repeats)
    given = {k: v for k, v in counts.items() if v is not None}
    counts = {k: defaults[k] if v is None else v for k, v in counts.items()}
    if cpu and len(given) < 3:
        scaled.append(f"{counts['iters']} batch(es) x {counts['repeats']} timed runs after "
                      f"{counts['warmup']} warm-up (GPU default {GPU_DEFAULTS['iters']} x "
                      f"{GPU_DEFAULTS['repeats']} after {GPU_DEFAULTS['warmup']})")
    if counts["iters"] < 1 or counts["repeats"] < 1 or counts["warmup"] < 0:
        raise ValueError(f"--iters and --repeats must be >= 1 and --warmup >= 0, got {counts}")
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    settings = Settings(dev, cfg, tuple(modes), tuple(backends), baseline_batch=baseline_batch,
                        workers=workers, data_root=str(data_root), scaled=scaled, **counts)
    if cpu and settings.full_images() < FULL_DATASET:
        scaled.append(f"full rows cycle {settings.full_images():,} resident training images "
                      f"(GPU: all {FULL_DATASET:,})")
    return settings


# ---------------------------------------------------------------------- rows


def describe(hot: HotPath) -> dict:
    """The row configuration: what was trained and how."""
    c = hot.cfg
    return dict(model=model_label(c), parameters=sum(p.numel() for p in hot.model.parameters()),
                batch=c.train.batch_size, precision=hot.precision.name,
                channels_last=c.aug.channels_last, compile_mode=c.train.compile_mode, optimizer=c.optim.name,
                ema=c.ema.enabled, input=(c.aug.channels, c.aug.out_size, c.aug.out_size),
                # the augmenter is compiled with the model only off the CPU (fastfm/augment/compiled.py)
                augmenter_compiled=hot.augment_batch is not hot.augmenter)


def aug_rows(s: Settings, pool: ResidentData, log: RowLog) -> None:
    """Each backend's whole stack on ``pool``'s first batch, and the baseline's augmentation, each in
    its own guard, into ``log``."""
    images, labels, b = pool.images[: s.batch_size], pool.labels[: s.batch_size], s.batch_size
    for name in s.backends:
        cfg = dataclasses.replace(s.cfg.aug, backend=name)
        log.attempt(functools.partial(aug_row, cfg, images, labels, seed=s.cfg.train.seed, **s.timing),
                    mode="aug", pipeline=name, batch=b)
    log.attempt(lambda: baseline.aug_row(images.squeeze(1).cpu().numpy(), labels.cpu().numpy(), b, s.repeats),
                mode="aug", pipeline="baseline", batch=b)


def step_row(s: Settings, hot: HotPath) -> Row:
    x, targets = synthetic_batch(hot.cfg, s.batch_size, s.device)
    t = time_fn(lambda: hot.optimizer_step(x, targets), s.device, **s.timing)
    return Row.timed("step", "synthetic input", s.batch_size, t, precision=hot.precision.name,
                     config=describe(hot))


def full_row(s: Settings, hot: HotPath, backend: str, mean: float, std: float, step_ms: float | None) -> Row:
    path = with_backend(hot, backend, mean, std)
    t = time_fn(iteration_fn(path), s.device, **s.timing)
    return Row.timed("full", backend, s.batch_size, t, precision=path.precision.name,
                     config=dict(describe(path), backend=backend, images_resident=len(path.loader.data)),
                     step_ms=step_ms, aug_share=None if step_ms is None else 1.0 - step_ms / t.ms_median)


def baseline_row(s: Settings, pool: ResidentData, mean: float, std: float, flops: dict[int, float]) -> Row:
    """The baseline end to end over ``pool``'s images, training the ``step`` of a hot path built from
    ``s.cfg`` for fp32, NCHW, no compile and the baseline batch; ``flops`` receives its FLOPs per
    training image at the baseline's image side."""
    cfg = native_config(s.cfg, aug=dict(channels_last=False),
                        train=dict(precision="fp32", compile_mode="none", batch_size=s.baseline_batch))
    hot = build_single(cfg, s.device, pool, mean, std)
    if baseline.SIZE not in flops:
        flops[baseline.SIZE] = train_flops_per_image(hot.model, cfg.aug.channels, baseline.SIZE, s.device)
    t = baseline.time_training(hot.optimizer_step, pool.images.squeeze(1).cpu().numpy(),
                               pool.labels.cpu().numpy(), batch_size=s.baseline_batch, workers=s.workers,
                               device=s.device, channels=cfg.aug.channels, num_classes=cfg.aug.num_classes,
                               **s.timing)
    return Row.timed("baseline", "baseline", s.baseline_batch, t, precision=hot.precision.name,
                     flops_per_image=flops[baseline.SIZE],
                     config=dict(describe(hot), pipeline=baseline.DESCRIPTION, workers=s.workers))


def gtx1060_row(flops_per_image: float, batch: int) -> Row:
    ips = gtx1060_ceiling_images_per_sec(flops_per_image)
    return Row("reference", "GTX 1060 6GB ceiling (computed)", batch, ms_per_batch=batch * 1000.0 / ips,
               precision="fp32", computed=True, flops_per_image=flops_per_image,
               achieved_tflops=GTX1060_FP32_TFLOPS, peak_fraction=1.0,
               peak_source=f"GTX 1060 FP32 peak {GTX1060_FP32_TFLOPS} TFLOP/s",
               config=dict(note="computed ceiling, not a measurement: FLOPs per training image x "
                                f"{GTX1060_FP32_TFLOPS} TFLOP/s FP32 at 100% utilisation (no tensor "
                                "cores; fp16 runs at 1/64 rate on that chip)"))


def annotate(rows: list[Row], peaks: Peaks) -> None:
    """Achieved TFLOP/s, fraction of peak and the speed-ups, in place (see the module docstring)."""
    gtx = next((r.images_per_sec for r in rows if r.computed), None)
    for r in rows:
        if not r.ok:
            continue
        if r.mode in TRAINING_MODES and r.flops_per_image is not None:   # None: the FLOP count failed
            r.achieved_tflops = r.flops_per_image * r.images_per_sec / 1e12
            r.peak_tflops, r.peak_source = peaks(r.precision)
            r.peak_fraction = r.achieved_tflops / r.peak_tflops
            measured, r.measured_peak_source = peaks.measured(r.precision)
            r.measured_peak_fraction = r.achieved_tflops / measured
        if gtx and r.mode != "aug":
            r.vs_gtx1060 = r.images_per_sec / gtx
    compare_to_baseline(rows)


def training_rows(s: Settings, hot: HotPath, pool: ResidentData, mean: float, std: float,
                  flops: dict[int, float], log: RowLog) -> None:
    """The ``step``, ``full`` and ``baseline`` rows that ``s.modes`` asks for, and the GTX 1060 row
    beside them, each in its own guard, into ``log``.  ``pool``: every loaded image (the baseline's
    DataLoader draws from them); ``flops`` receives the FLOPs per training image by image side."""
    if not any(m in s.modes for m in TRAINING_MODES):
        return
    size = s.cfg.aug.out_size
    flops[size] = train_flops_per_image(hot.model, s.cfg.aug.channels, size, s.device)

    def add(rows: list[Row]) -> None:
        for r in rows:
            r.flops_per_image = flops[size]
        log.add(rows)

    step_ms = None
    if "step" in s.modes or "full" in s.modes:
        step = attempt(lambda: step_row(s, hot), mode="step", pipeline="synthetic input", batch=s.batch_size)
        step_ms = step[0].ms_per_batch
        if "step" in s.modes or not step[0].ok:       # a failed step is said even when not asked for
            add(step)
    if "full" in s.modes:
        for name in s.backends:
            add(attempt(functools.partial(full_row, s, hot, name, mean, std, step_ms), mode="full",
                        pipeline=name, batch=s.batch_size))
    if "baseline" in s.modes:
        log.attempt(lambda: baseline_row(s, pool, mean, std, flops), mode="baseline", pipeline="baseline",
                    batch=s.baseline_batch)
    log.add([gtx1060_row(flops[size], s.baseline_batch)])


def unbuilt_rows(s: Settings, error: str) -> list[Row]:
    """The failed rows of every training row asked for, when the hot path (or its FLOP count) could
    not be built: each row the run would have had keeps its place and says why."""
    keys = ([("step", "synthetic input", s.batch_size)] if "step" in s.modes else []) + \
        ([("full", name, s.batch_size) for name in s.backends] if "full" in s.modes else []) + \
        ([("baseline", "baseline", s.baseline_batch)] if "baseline" in s.modes else [])
    return [Row(mode, pipeline, batch, status="failed", error=error) for mode, pipeline, batch in keys]


def count_op_calls(fn: Callable[[], object], device: torch.device) -> dict:
    """ATen operator calls (``aten::*`` profiler events, nested calls included) in one call of
    ``fn``, after one untimed call (compilation, lazy init); on CUDA also the kernels launched."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize(device)
    events = prof.events()
    counts = dict(aten_ops=sum(1 for e in events if e.name.startswith("aten::")))
    if device.type == "cuda":
        counts["cuda_kernels"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return counts


def matrix_variant(compile_mode: str, batch: int, device: torch.device) -> str:
    """A matrix row's name; it never claims CUDA graphs where they cannot run."""
    name = MATRIX_MODES[compile_mode]
    if compile_mode == "reduce-overhead" and device.type != "cuda":
        name = "compiled, reduce-overhead without CUDA graphs (CPU)"
    return f"{name}, batch {batch}"


def matrix_cell(s: Settings, data: ResidentData, mean: float, std: float, batch: int, compile_mode: str,
                flops_per_image: float) -> list[Row]:
    """The step alone and the full iteration of one hot path built by the engine for ``batch`` and
    ``compile_mode`` (``train.compile_mode``: the engine compiles the model itself), with the
    augmenter's and the step's operator calls.  On the CPU ``reduce-overhead`` compiles without CUDA
    graphs (inductor skips them off CUDA): the row's config says what ran."""
    cfg = native_config(s.cfg, train=dict(batch_size=batch, compile_mode=compile_mode))
    hot = build_single(cfg, s.device, data, mean, std)
    variant = matrix_variant(compile_mode, batch, s.device)
    ran = dict(describe(hot), compile_mode=compile_mode,
               cuda_graphs=compile_mode == "reduce-overhead" and s.device.type == "cuda")
    if compile_mode == "reduce-overhead" and s.device.type != "cuda":
        ran["note"] = "reduce-overhead on the CPU: compiled without CUDA graphs (they need CUDA)"
    x, targets = synthetic_batch(hot.cfg, batch, s.device)
    images, labels = data.images[:batch], data.labels[:batch]
    ops = dict(step=count_op_calls(lambda: hot.optimizer_step(x, targets), s.device),
               augmenter=count_op_calls(lambda: hot.augment_batch(images, labels), s.device))
    step_t = time_fn(lambda: hot.optimizer_step(x, targets), s.device, **s.timing)
    full_t = time_fn(iteration_fn(hot), s.device, **s.timing)
    common = dict(precision=hot.precision.name, variant=variant, flops_per_image=flops_per_image, op_calls=ops)
    return [Row.timed("step", "synthetic input", batch, step_t, config=ran, **common),
            Row.timed("full", "native", batch, full_t, config=dict(ran, backend="native"),
                      step_ms=step_t.ms_median, aug_share=1.0 - step_t.ms_median / full_t.ms_median, **common)]


def matrix_rows(s: Settings, data: ResidentData, mean: float, std: float, flops: dict[int, float],
                log: RowLog, batches=MATRIX_BATCHES, compile_modes=("none", "default", "reduce-overhead"),
                deadline: float | None = None) -> None:
    """The throughput matrix: for each compile mode x batch, :func:`matrix_cell`'s two rows, each
    cell in its own guard (a mode that fails to compile costs only its cell).

    ``deadline`` (``time.monotonic()`` seconds): no cell is started after it; the cells left are
    ``skipped`` rows saying so.  A cell compiles WRN-40-4 (and the augmenter) for its mode and
    batch, tens of seconds on a GPU: under a caller's time cap (the GPU check) this keeps the time
    for the trace, which runs after the matrix, and records which cells were not measured instead
    of losing them to a kill."""
    size = s.cfg.aug.out_size
    for batch in batches:
        for mode in compile_modes:
            if deadline is not None and time.monotonic() > deadline:
                reason = "skipped: --matrix-budget-s spent before this cell started"
                log.add([Row(m, p, batch, variant=matrix_variant(mode, batch, s.device), status="skipped",
                             error=reason) for m, p in (("step", "synthetic input"), ("full", "native"))])
                continue
            rows = attempt(functools.partial(matrix_cell, s, data, mean, std, batch, mode, flops.get(size)),
                           mode="full", pipeline="native", batch=batch)
            for r in rows:
                r.variant = r.variant or matrix_variant(mode, batch, s.device)
            log.add(rows)


# ---------------------------------------------------------------------- the report


COLUMNS = [("mode", "mode", ""), ("pipeline", "pipeline", ""), ("variant", "variant", ""), ("batch", "batch", "d"),
           ("precision", "precision", ""), ("images_per_sec", "images/s", ",.0f"),
           ("ms_per_batch", "ms/batch", ".1f"), ("aug_share", "aug share", ".1%"),
           ("achieved_tflops", "TFLOP/s", ".3f"), ("peak_fraction", "% of peak", ".1%"),
           ("measured_peak_fraction", "% of measured", ".1%"),
           ("vs_baseline", "× baseline", ".1f"), ("vs_gtx1060", "× GTX 1060", ".2f")]


def throughput_report(s: Settings, trace_dir: str | Path | None = None, trace_steps: int = 3,
                      on_update: Callable[[dict], None] | None = None, matrix: dict | None = None,
                      matrix_budget_s: float | None = None) -> dict:
    """Time every requested mode; return environment, settings, rows, markdown.

    Every row is measured in its own guard (:class:`~fastfm.bench.report.RowLog`): one that raises
    is a ``failed`` row with its error, and the rest are still measured.  ``on_update(report)`` is
    called with the report so far after every row, and with the whole report at the end (the
    scripts rewrite their files each time).  With ``trace_dir``, a profiler trace of ``trace_steps``
    full iterations with the first available backend is written last, in a guard of its own
    (:func:`fastfm.bench.trace.write_trace`); ``report["trace"]`` is its summary, or
    ``{"status": "failed", "error": ...}``.  ``matrix``: :func:`matrix_rows`'s ``batches`` and
    ``compile_modes``, measured after the other rows and before the trace; ``matrix_budget_s``: no
    matrix cell starts later than that many seconds after this call began (see :func:`matrix_rows`).
    """
    load_before = os.getloadavg()
    deadline = None if matrix_budget_s is None else time.monotonic() + matrix_budget_s
    dev, cfg = s.device, s.cfg
    flops: dict[int, float] = {}
    peaks = Peaks(dev)
    state: dict = dict(trace=None, input=None)

    def build(rows: list[Row]) -> dict:
        rows = list(rows)
        annotate(rows, peaks)
        report = dict(environment=measured_environment(dev, load_before), settings=_settings_dict(s),
                      input=state["input"], flops_per_image=dict(flops),
                      peaks={p: dict(tflops=v, source=src) for p, (v, src) in peaks.found.items()},
                      measured_peaks={p: dict(tflops=v, source=src)
                                      for p, (v, src) in peaks.measured_found.items()},
                      rows=rows, missing=missing(rows), trace=state["trace"])
        report["markdown"] = _markdown(report, s)
        return report

    log = RowLog(None if on_update is None else (lambda rows: on_update(build(rows))))
    n = max(s.full_images(), s.baseline_batch * s.calls if "baseline" in s.modes else 0, s.batch_size,
            max(matrix.get("batches", MATRIX_BATCHES)) if matrix is not None else 0)
    hot, error = None, None
    pool, state["input"] = benchmark_images(dev, min(n, FULL_DATASET), s.data_root)
    if "aug" in s.modes:
        aug_rows(s, pool, log)
    if any(m in s.modes for m in TRAINING_MODES) or trace_dir is not None:
        data = ResidentData(pool.images[: s.full_images()], pool.labels[: s.full_images()])
        mean, std = data.pixel_stats()
        # A ValueError here is the configuration's (an unknown timm model, a bad depth): an option to
        # fix, reported as ``error: ...`` by the script, not a fault to isolate.
        hot, error = guarded("building the hot path", lambda: build_single(native_config(cfg), dev, data, mean, std),
                             reraise=(ValueError,))
        if error is None:
            _, error = guarded("the training rows", lambda: training_rows(s, hot, pool, mean, std, flops, log))
        if error is not None:
            done = {(r.mode, r.pipeline) for r in log}
            log.add([r for r in unbuilt_rows(s, error) if (r.mode, r.pipeline) not in done])
    if matrix is not None:
        # All loaded images: a matrix batch may be larger than the rows' batch.
        mdata = ResidentData(pool.images, pool.labels)
        mmean, mstd = mdata.pixel_stats()
        size = cfg.aug.out_size
        if size not in flops:
            _, error = guarded("counting FLOPs", lambda: flops.setdefault(size, train_flops_per_image(
                build_single(native_config(cfg), dev, mdata, mmean, mstd).model, cfg.aug.channels, size, dev)))
        matrix_rows(s, mdata, mmean, mstd, flops, log, **matrix, deadline=deadline)
    if trace_dir is not None:
        if hot is None:
            state["trace"] = dict(status="failed", error=f"no hot path to trace: {error}")
        else:
            trace, error = guarded("the trace", lambda: write_trace(hot, s.backends, mean, std, Path(trace_dir),
                                                                    trace_steps, s.warmup))
            state["trace"] = trace if error is None else dict(status="failed", error=error)
    report = build(log)
    if on_update is not None:
        on_update(report)
    return report


def _settings_dict(s: Settings) -> dict:
    return dict(device=str(s.device), model=model_label(s.cfg), modes=list(s.modes), backends=list(s.backends),
                warmup=s.warmup, iters=s.iters, repeats=s.repeats, baseline_batch=s.baseline_batch,
                workers=s.workers, data_root=s.data_root, scaled_down=s.scaled, config=s.cfg.to_dict())


def _markdown(report: dict, s: Settings) -> str:
    env, cfg = report["environment"], s.cfg
    load = env["load_avg_1_5_15"]
    lines = [
        f"Training throughput on {env['device']} (torch {env['torch']}, CUDA {env['cuda'] or '—'}, "
        f"git {env['git_revision']}); 1-min load average {load['before'][0]:.2f} before the run "
        f"({load['after'][0]:.2f} after, this run included).",
    ]
    size = cfg.aug.out_size
    gflop = (f"{report['flops_per_image'][size] / 1e9:.2f} GFLOP per training image (fwd + bwd, "
             f"{cfg.aug.channels}x{size}x{size}); " if size in report["flops_per_image"] else "")
    lines.append(f"Model {model_label(cfg)}, {gflop}input: {report['input']}; median of {s.repeats} timed "
                 f"runs of {s.iters} batch(es) after {s.warmup} warm-up, device-synchronised.")
    if s.scaled:
        lines.append("Scaled down for the CPU: " + "; ".join(s.scaled) + ".")
    lines += ["", markdown_table(report["rows"], COLUMNS), ""]
    notes = [
        "GTX 1060 row: a computed ceiling (FLOPs per image x 4.375 TFLOP/s FP32 peak at 100 % "
        "utilisation), not a measurement.",
        "aug share (full rows): 1 - step-only ms / full ms, measured full iteration vs step-only "
        "timing of the same configuration (noise can make it slightly negative).",
        "× baseline: training rows against the baseline row (the original PIL + DataLoader pipeline "
        "end to end); aug rows against the baseline's augmentation alone (one process).",
    ]
    notes += [f"peak for {p}: {v['tflops']:.2f} TFLOP/s, {v['source']}." for p, v in report["peaks"].items()]
    if any((r.peak_fraction or 0) > 1 and not r.computed for r in report["rows"]):
        notes.append("% of peak above 100 %: this device's convolutions run faster than the measured "
                     "matrix product, so that measured ceiling is no upper bound here (on a CPU, "
                     "oneDNN convolutions can outrun the BLAS matrix product).")
    notes += problem_notes(report["rows"])
    trace = report["trace"]
    if trace and trace.get("status") == "failed":
        notes.append(f"trace: failed — {trace['error']}")
    elif trace:
        notes.append(f"trace: {trace['path']} ({trace['backend']}, {trace['steps']} full iterations)")
    lines += ["- " + n for n in notes]
    return "\n".join(lines)
