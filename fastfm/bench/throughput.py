"""Training throughput beside the baseline: the engine behind ``benchmarks/throughput.py``.

Every training figure times the engine's own hot path, :class:`~fastfm.engine.step.HotPath`, made by
:func:`~fastfm.engine.step.build_hot_path` exactly as the trainer makes it, never a copy:

* ``aug``: each backend's whole augmentation stack on one resident batch
  (:func:`fastfm.bench.aug_cost.aug_row`), and the ``baseline`` row: the original per-sample PIL
  pipeline's augmentation in one process (:func:`fastfm.bench.baseline.aug_row`);
* ``step``: ``hot.step`` (forward, backward, optimizer) on a synthetic float batch;
* ``full``: per backend, what the trainer does per step: the next batch of ``hot.loader`` (epochs
  advanced with ``set_epoch``), then ``hot.iteration`` (schedule, augmentation, step, device-side
  loss statistics, EMA when configured), without the trainer's periodic progress refresh (one host
  sync every ``train.log_every`` steps).  One hot path serves every backend: a backend's row runs
  ``dataclasses.replace(hot, augmenter=<that backend's>)``, so the model is built (and compiled) once;
* ``baseline``: the original report's pipeline on this machine: torchvision transforms on PIL images
  in a ``DataLoader`` with worker processes, CutMix on the collated batch, then ``hot.step`` of a hot
  path built for fp32, NCHW, batch 128 (:func:`fastfm.bench.baseline.time_training`);
* ``reference``: the GTX 1060 6GB ceiling, *computed* from the model's FLOPs per image and the card's
  FP32 peak (:mod:`fastfm.bench.flops`), never measured.

Derived columns: achieved TFLOP/s = FLOPs per training image (fwd + bwd, ``FlopCounterMode``) x
images/sec; fraction of the device's peak (:class:`~fastfm.bench.flops.Peaks`); speed-up over the
baseline (:func:`~fastfm.bench.report.compare_to_baseline`) and over the GTX 1060 ceiling.  The
augmentation share of a ``full`` row is ``1 - step_ms / full_ms``: the measured full iteration
against the step-only timing of the same configuration.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..augment.config import BACKENDS
from ..config import Config
from ..data.resident import ResidentData
from ..distributed import resolve_device
from ..engine.step import HotPath
from . import baseline
from .aug_cost import aug_row
from .flops import GTX1060_FP32_TFLOPS, Peaks, gtx1060_ceiling_images_per_sec, train_flops_per_image
from .hot_path import build_single, iteration_fn, native_config, with_backend
from .inputs import benchmark_images, synthetic_batch
from .report import (TRAINING_MODES, Row, attempt, compare_to_baseline, markdown_table, measured_environment,
                     missing, problem_notes)
from .timing import time_fn
from .trace import write_trace

MODES = ("aug", "step", "full", "baseline")
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
                     modes=MODES, backends=BACKENDS, workers: int | None = None,
                     warmup: int | None = None, iters: int | None = None, repeats: int | None = None,
                     baseline_batch: int = 128, data_root: str = "data") -> Settings:
    """Defaults <- ``config`` (a YAML preset) <- the explicit arguments, with CPU stand-ins for the
    model, batch and timing counts that neither names.  Raises ``ValueError`` (``ConfigError`` is
    one) naming the bad option: unknown mode or backend, batch < 2, CUDA asked for but absent."""
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
    for key, value in (("train.precision", precision), ("aug.channels_last", channels_last),
                       ("train.compile", compile)):
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
                channels_last=c.aug.channels_last, compile=c.train.compile, optimizer=c.optim.name,
                ema=c.ema.enabled, input=(c.aug.channels, c.aug.out_size, c.aug.out_size))


def aug_rows(s: Settings, pool: ResidentData) -> list[Row]:
    """Each backend's whole stack on ``pool``'s first batch, and the baseline's augmentation."""
    images, labels, b = pool.images[: s.batch_size], pool.labels[: s.batch_size], s.batch_size
    rows = []
    for name in s.backends:
        cfg = dataclasses.replace(s.cfg.aug, backend=name)
        rows += attempt(functools.partial(aug_row, cfg, images, labels, seed=s.cfg.train.seed, **s.timing),
                        mode="aug", pipeline=name, batch=b)
    rows += attempt(lambda: baseline.aug_row(images.squeeze(1).cpu().numpy(), labels.cpu().numpy(), b,
                                             s.repeats),
                    mode="aug", pipeline="baseline", batch=b)
    return rows


def step_row(s: Settings, hot: HotPath) -> Row:
    x, targets = synthetic_batch(hot.cfg, s.batch_size, s.device)
    t = time_fn(lambda: hot.step(x, targets), s.device, **s.timing)
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
                        train=dict(precision="fp32", compile=False, batch_size=s.baseline_batch))
    hot = build_single(cfg, s.device, pool, mean, std)
    if baseline.SIZE not in flops:
        flops[baseline.SIZE] = train_flops_per_image(hot.model, cfg.aug.channels, baseline.SIZE, s.device)
    t = baseline.time_training(hot.step, pool.images.squeeze(1).cpu().numpy(), pool.labels.cpu().numpy(),
                               batch_size=s.baseline_batch, workers=s.workers, device=s.device,
                               channels=cfg.aug.channels, num_classes=cfg.aug.num_classes, **s.timing)
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
        if r.mode in TRAINING_MODES:
            r.achieved_tflops = r.flops_per_image * r.images_per_sec / 1e12
            peak, r.peak_source = peaks(r.precision)
            r.peak_fraction = r.achieved_tflops / peak
        if gtx and r.mode != "aug":
            r.vs_gtx1060 = r.images_per_sec / gtx
    compare_to_baseline(rows)


def training_rows(s: Settings, hot: HotPath, pool: ResidentData, mean: float, std: float,
                  flops: dict[int, float]) -> list[Row]:
    """The ``step``, ``full`` and ``baseline`` rows that ``s.modes`` asks for, and the GTX 1060 row
    beside them.  ``pool``: every loaded image (the baseline's DataLoader draws from them); ``flops``
    receives the FLOPs per training image by image side."""
    if not any(m in s.modes for m in TRAINING_MODES):
        return []
    size = s.cfg.aug.out_size
    flops[size] = train_flops_per_image(hot.model, s.cfg.aug.channels, size, s.device)
    rows, step_ms = [], None
    if "step" in s.modes or "full" in s.modes:
        step = attempt(lambda: step_row(s, hot), mode="step", pipeline="synthetic input", batch=s.batch_size)
        step_ms = step[0].ms_per_batch
        if "step" in s.modes or not step[0].ok:       # a failed step is said even when not asked for
            rows += step
    if "full" in s.modes:
        for name in s.backends:
            rows += attempt(functools.partial(full_row, s, hot, name, mean, std, step_ms), mode="full",
                            pipeline=name, batch=s.batch_size)
    for r in rows:
        r.flops_per_image = flops[size]
    if "baseline" in s.modes:
        rows += attempt(lambda: baseline_row(s, pool, mean, std, flops), mode="baseline", pipeline="baseline",
                        batch=s.baseline_batch)
    rows.append(gtx1060_row(flops[size], s.baseline_batch))
    return rows


# ---------------------------------------------------------------------- the report


COLUMNS = [("mode", "mode", ""), ("pipeline", "pipeline", ""), ("batch", "batch", "d"),
           ("precision", "precision", ""), ("images_per_sec", "images/s", ",.0f"),
           ("ms_per_batch", "ms/batch", ".1f"), ("aug_share", "aug share", ".1%"),
           ("achieved_tflops", "TFLOP/s", ".3f"), ("peak_fraction", "% of peak", ".1%"),
           ("vs_baseline", "× baseline", ".1f"), ("vs_gtx1060", "× GTX 1060", ".2f")]


def throughput_report(s: Settings, trace_dir: str | Path | None = None, trace_steps: int = 3) -> dict:
    """Time every requested mode; return environment, settings, rows, markdown.

    With ``trace_dir``, also writes a profiler trace of ``trace_steps`` full iterations with the
    first available backend (:func:`fastfm.bench.trace.write_trace`).
    """
    load_before = os.getloadavg()
    dev, cfg = s.device, s.cfg
    n = max(s.full_images(), s.baseline_batch * s.calls if "baseline" in s.modes else 0, s.batch_size)
    pool, source = benchmark_images(dev, min(n, FULL_DATASET), s.data_root)
    rows: list[Row] = []
    if "aug" in s.modes:
        rows += aug_rows(s, pool)
    flops: dict[int, float] = {}
    trace = None
    if any(m in s.modes for m in TRAINING_MODES) or trace_dir is not None:
        data = ResidentData(pool.images[: s.full_images()], pool.labels[: s.full_images()])
        mean, std = data.pixel_stats()
        hot = build_single(native_config(cfg), dev, data, mean, std)
        rows += training_rows(s, hot, pool, mean, std, flops)
        if trace_dir is not None:
            trace = write_trace(hot, s.backends, mean, std, Path(trace_dir), trace_steps, s.warmup)
    peaks = Peaks(dev)
    annotate(rows, peaks)
    report = dict(environment=measured_environment(dev, load_before), settings=_settings_dict(s),
                  input=source, flops_per_image=flops,
                  peaks={p: dict(tflops=v, source=src) for p, (v, src) in peaks.found.items()},
                  rows=rows, missing=missing(rows), trace=trace)
    report["markdown"] = _markdown(report, s)
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
    if trace:
        notes.append(f"trace: {trace['path']} ({trace['backend']}, {trace['steps']} full iterations)")
    lines += ["- " + n for n in notes]
    return "\n".join(lines)
