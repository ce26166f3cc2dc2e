"""Training throughput beside the original pipeline: the engine behind ``benchmarks/throughput.py``.

Every figure times the objects the trainer itself uses (:func:`~fastfm.engine.train.build_training` makes them with the
trainer's factories, in :class:`~fastfm.engine.train.Trainer`'s order), never a copy:

* ``aug``: each backend's whole augmentation stack on one resident batch
  (:func:`fastfm.augment.cost.time_augmenter`), and the ``seed`` row: the original per-sample PIL
  pipeline on one process (:func:`fastfm.augment.cost.seed_row`);
* ``step``: :class:`~fastfm.engine.train.TrainStep` (forward, backward, optimizer) on a synthetic
  float batch;
* ``full``: per backend, the calls :meth:`Trainer.train_one_epoch` makes per step -- the next batch
  of an :class:`~fastfm.data.resident.EpochLoader` over resident data, the schedule, the augmenter,
  the step, the device-side loss statistics and the EMA when configured -- without its periodic
  progress refresh (one host sync every ``train.log_every`` steps);
* ``baseline``: the original report's pipeline on this machine: torchvision transforms on PIL images
  in a ``DataLoader`` with worker processes, CutMix on the collated batch, then the same model in
  fp32, NCHW, batch 128;
* ``reference``: the GTX 1060 6GB ceiling, *computed* from the model's FLOPs per image and the card's
  FP32 peak (:mod:`fastfm.perf`), never measured.

Derived columns: achieved TFLOP/s = FLOPs per training image (fwd + bwd, ``FlopCounterMode``) x
images/sec; fraction of the device's peak (the table in :mod:`fastfm.perf` by device name, else a
measured matrix-product ceiling, labelled so); speed-up over ``baseline`` (``aug`` rows: over the
``seed`` row, the same pipeline's augmentation alone) and over the GTX 1060 ceiling.  The
augmentation share of a ``full`` row is ``1 - step_ms / full_ms``: the measured full iteration
against the step-only timing of the same configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from .augment import BackendUnavailable, create_augmenter
from .augment.config import BACKENDS
from .augment.cost import benchmark_batch, seed_row, time_augmenter
from .baseline import SeedDataset, cutmix_batch
from .bench import Timing, device_name, environment, markdown_table, synchronize, time_fn
from .config import Config
from .data.resident import EpochLoader, ResidentData
from .distributed import DistInfo, resolve_device
from .engine.amp import DTYPES
from .engine.train import StepStats, Training, build_training
from .perf import (GTX1060_FP32_TFLOPS, gtx1060_ceiling_images_per_sec, known_peak_tflops,
                   measured_matmul_tflops, train_flops_per_image)

MODES = ("aug", "step", "full", "baseline")
TRAINING_MODES = ("step", "full", "baseline")     # rows that train the model (FLOPs, × GTX 1060)
FULL_DATASET = 60_000
SEED_SIZE = 32          # side of the original pipeline's images (Resize 36, RandomCrop 32)

# What a CUDA run uses unless told otherwise, and the CPU's scaled-down stand-ins (a WRN-40-4 step
# at batch 512 takes minutes on 2 cores; WRN-16-4 is the smallest WRN whose convolutions still run
# near the CPU's matrix-product speed).
GPU_DEFAULTS = dict(model="wrn-40-4", batch_size=512, warmup=5, iters=20, repeats=5)
CPU_DEFAULTS = dict(model="wrn-16-4", batch_size=64, warmup=1, iters=2, repeats=5)

# Profiler ranges for the native backend's ops: its own op methods, called by its ``__call__``,
# wrapped on the instance while tracing.  Resize, normalise and CutMix/MixUp are module functions
# inside that ``__call__`` and cannot be wrapped from outside: they appear as their ATen ops (e.g.
# aten::upsample_bilinear2d) inside the enclosing "aug" range.
# The ranges the native augmenter records when its ``op_ranges`` is on (default recipe).
NATIVE_OP_RANGES = ("aug.resize", "aug.crop_flip", "aug.autoaugment", "aug.normalise", "aug.erasing",
                    "aug.mix", "aug.finish")
STEP_RANGES = {"model": "model.forward", "scaler": "model.backward+optimizer"}


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


# ---------------------------------------------------------------------- the trainer's objects


def describe(training: Training) -> dict:
    """The row configuration: what was trained and how."""
    c = training.cfg
    return dict(model=model_label(c), parameters=sum(p.numel() for p in training.model.parameters()),
                batch=c.train.batch_size, precision=training.precision.name,
                channels_last=c.aug.channels_last, compile=c.train.compile, optimizer=c.optim.name,
                ema=c.ema.enabled, input=(c.aug.channels, c.aug.out_size, c.aug.out_size))


def build_single(cfg: Config, device: torch.device, steps_per_epoch: int) -> Training:
    """The trainer's own objects (:func:`~fastfm.engine.train.build_training`) for one process."""
    return build_training(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=device), steps_per_epoch)


def synthetic_batch(cfg: Config, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A normalised-looking float batch (B, C, S, S) in the configured memory format, soft targets."""
    g = torch.Generator(device=device).manual_seed(0)
    a = cfg.aug
    x = torch.randn(batch, a.channels, a.out_size, a.out_size, generator=g, device=device)
    if a.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, a.num_classes, (batch,), generator=g, device=device)
    return x, F.one_hot(y, a.num_classes).float()


def endless(loader: EpochLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of epoch 0, 1, 2, ... (``set_epoch`` before each, as the trainer does)."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


class FullIteration:
    """``it()`` runs one iteration of the trainer's hot path (see the module docstring).

    Built once per backend over a :class:`Training`; ``augmenter`` is created by
    :func:`~fastfm.augment.create_augmenter` with the data's pixel statistics, as the trainer does.
    Raises :class:`~fastfm.augment.BackendUnavailable` when the backend's dependency is missing.
    """

    def __init__(self, training: Training, data: ResidentData, backend: str, mean: float, std: float):
        cfg = training.cfg
        self.training = training
        self.loader = EpochLoader(data, cfg.train.batch_size, seed=cfg.train.seed, shuffle=True,
                                  drop_last=True, even=True, output="uint8")
        self.augmenter = create_augmenter(dataclasses.replace(cfg.aug, backend=backend), training.device,
                                          seed=cfg.train.seed, mean=mean, std=std)
        self.stats = StepStats(training.device, 0)
        self.batches = endless(self.loader)
        self.count = itertools.count()

    def __call__(self) -> None:
        i = next(self.count)
        images, labels = next(self.batches)
        self.training.iteration(self.augmenter, self.stats, images, labels, i, i)


# ---------------------------------------------------------------------- rows


def _row(mode: str, pipeline: str, t: Timing, batch: int, config: dict, **extra) -> dict:
    return dict(mode=mode, pipeline=pipeline, batch=batch, precision=config.get("precision"),
                images_per_sec=t.per_second(batch),
                ms_per_batch=t.ms_median, ms_min=t.ms_min, ms_max=t.ms_max, iters=t.iters,
                repeats=t.repeats, config=config, **extra)


def _timing(s: Settings) -> dict:
    return dict(warmup=s.warmup, iters=s.iters, repeats=s.repeats)


def aug_rows(s: Settings, images: torch.Tensor, labels: torch.Tensor, missing: dict) -> list[dict]:
    """Each backend's whole stack on one batch, and the original pipeline's augmentation (seed)."""
    rows = []
    for name in s.backends:
        cfg = dataclasses.replace(s.cfg.aug, backend=name)
        try:
            t = time_augmenter(cfg, images, labels, seed=s.cfg.train.seed, **_timing(s))
        except BackendUnavailable as exc:
            missing[name] = str(exc)
            continue
        rows.append(_row("aug", name, t, images.shape[0], dict(aug=dataclasses.asdict(cfg))))
    seed = seed_row(images.squeeze(1).cpu().numpy(), labels.cpu().numpy(), batch_size=images.shape[0],
                    repeats=s.repeats)
    rows.append(dict(mode="aug", pipeline="seed", batch=images.shape[0], precision=None,
                     images_per_sec=seed["images_per_sec"], ms_per_batch=seed["rung_ms"],
                     iters=1, repeats=s.repeats, config=dict(pipeline=seed["config"])))
    return rows


def full_rows(s: Settings, training: Training, data: ResidentData, step_ms: float,
              missing: dict) -> list[dict]:
    """One ``full`` row per available backend; the aug share against the step-only ``step_ms``."""
    mean, std = data.pixel_stats()
    rows = []
    for name in s.backends:
        try:
            it = FullIteration(training, data, name, mean, std)
        except BackendUnavailable as exc:
            missing[name] = str(exc)
            continue
        t = time_fn(it, s.device, **_timing(s))
        rows.append(_row("full", name, t, s.batch_size,
                         dict(describe(training), backend=name, images_resident=len(data)),
                         aug_share=1.0 - step_ms / t.ms_median, step_ms=step_ms))
    return rows


def baseline_row(s: Settings, training: Training, images_u8, labels) -> dict:
    """The original pipeline end to end: ``DataLoader`` workers run the per-sample PIL transforms,
    the main process applies CutMix and trains ``training`` (fp32, NCHW)."""
    b, dev = s.baseline_batch, s.device
    channels = training.cfg.aug.channels
    loader = torch.utils.data.DataLoader(
        SeedDataset(images_u8, labels), batch_size=b, shuffle=True, drop_last=True,
        num_workers=s.workers, pin_memory=dev.type == "cuda")

    def batches():
        while True:
            yield from loader

    source = batches()

    def run():
        x, y = next(source)
        x, t = cutmix_batch(x, y, training.cfg.aug.num_classes)
        x = x.to(dev, non_blocking=True).expand(-1, channels, -1, -1)
        training.step(x, t.to(dev, non_blocking=True))

    t = time_fn(run, dev, **_timing(s))
    source.close()                  # drops the DataLoader's iterator, which stops its workers
    return _row("baseline", f"PIL + DataLoader, workers={s.workers}", t, b,
                dict(describe(training), pipeline="torchvision transforms on PIL images per sample "
                     "(Resize 36, RandomCrop 32, flip, AutoAugment CIFAR10, ToTensor, Normalize, "
                     "RandomErasing), CutMix per batch", workers=s.workers))


def gtx1060_row(flops_per_image: float, batch: int) -> dict:
    ips = gtx1060_ceiling_images_per_sec(flops_per_image)
    return dict(mode="reference", pipeline="GTX 1060 6GB ceiling (computed)", batch=batch,
                precision="fp32", images_per_sec=ips, ms_per_batch=batch * 1000.0 / ips, computed=True,
                flops_per_image=flops_per_image, achieved_tflops=GTX1060_FP32_TFLOPS, peak_fraction=1.0,
                peak_source=f"GTX 1060 FP32 peak {GTX1060_FP32_TFLOPS} TFLOP/s",
                config=dict(note="computed ceiling, not a measurement: FLOPs per training image x "
                                 f"{GTX1060_FP32_TFLOPS} TFLOP/s FP32 at 100% utilisation (no tensor "
                                 "cores; fp16 runs at 1/64 rate on that chip)"))


class Peaks:
    """The device's peak TFLOP/s per precision: the table by device name, else measured once."""

    def __init__(self, device: torch.device):
        self.device = device
        self.name = device_name(device)
        self.found: dict[str, tuple[float, str]] = {}

    def __call__(self, precision: str) -> tuple[float, str]:
        if precision not in self.found:
            known = known_peak_tflops(self.name, precision) if self.device.type == "cuda" else None
            if known is not None:
                self.found[precision] = (known, f"{self.name} dense {precision} peak (spec table)")
            else:
                measured = measured_matmul_tflops(self.device, DTYPES[precision])
                self.found[precision] = (measured, f"measured {precision} matrix-product ceiling "
                                                   f"on this device (not a spec peak)")
        return self.found[precision]


def annotate(rows: list[dict], peaks: Peaks) -> None:
    """Achieved TFLOP/s, fraction of peak and the speed-ups, in place (see the module docstring)."""
    base = next((r["images_per_sec"] for r in rows if r["mode"] == "baseline"), None)
    seed = next((r["images_per_sec"] for r in rows if r["pipeline"] == "seed"), None)
    gtx = next((r["images_per_sec"] for r in rows if r.get("computed")), None)
    for r in rows:
        ips = r["images_per_sec"]
        if r["mode"] in TRAINING_MODES:
            r["achieved_tflops"] = r["flops_per_image"] * ips / 1e12
            peak, source = peaks(r["precision"])
            r["peak_fraction"], r["peak_source"] = r["achieved_tflops"] / peak, source
        ref = seed if r["mode"] == "aug" else base
        r["vs_baseline"] = ips / ref if ref else None
        r["vs_gtx1060"] = ips / gtx if gtx and r["mode"] != "aug" else None


# ---------------------------------------------------------------------- the report


COLUMNS = [("mode", "mode", ""), ("pipeline", "pipeline", ""), ("batch", "batch", "d"),
           ("precision", "precision", ""), ("images_per_sec", "images/s", ",.0f"),
           ("ms_per_batch", "ms/batch", ".1f"), ("aug_share", "aug share", ".1%"),
           ("achieved_tflops", "TFLOP/s", ".3f"), ("peak_fraction", "% of peak", ".1%"),
           ("vs_baseline", "× baseline", ".1f"), ("vs_gtx1060", "× GTX 1060", ".2f")]


def throughput_report(s: Settings, trace_dir: str | Path | None = None, trace_steps: int = 3) -> dict:
    """Time every requested mode; return environment, settings, rows, missing backends, markdown.

    With ``trace_dir``, also writes a profiler trace of ``trace_steps`` full iterations
    (:func:`write_trace`) with the first available backend.
    """
    load_before = os.getloadavg()
    dev, cfg = s.device, s.cfg
    n = max(s.full_images(), s.baseline_batch * s.calls if "baseline" in s.modes else 0,
            s.batch_size)
    images, labels, source = benchmark_batch(dev, min(n, FULL_DATASET), s.data_root)
    data = ResidentData(images[: s.full_images()], labels[: s.full_images()])
    steps_per_epoch = len(data) // s.batch_size
    training = build_single(cfg, dev, steps_per_epoch)
    size = cfg.aug.out_size
    flops = {size: train_flops_per_image(training.model, cfg.aug.channels, size, dev)}
    rows, missing = [], {}
    if "aug" in s.modes:
        rows += aug_rows(s, images[: s.batch_size], labels[: s.batch_size], missing)
    step_ms = None
    if "step" in s.modes or "full" in s.modes:
        x, targets = synthetic_batch(cfg, s.batch_size, dev)
        t = time_fn(lambda: training.step(x, targets), dev, **_timing(s))
        step_ms = t.ms_median
        if "step" in s.modes:
            rows.append(_row("step", "synthetic input", t, s.batch_size, describe(training)))
    if "full" in s.modes:
        rows += full_rows(s, training, data, step_ms, missing)
    if "baseline" in s.modes:
        bcfg = Config.from_dict(cfg.to_dict())
        bcfg.train.precision, bcfg.train.compile, bcfg.train.batch_size = "fp32", False, s.baseline_batch
        bcfg.aug.channels_last = False
        base = build_single(bcfg, dev, steps_per_epoch)
        if SEED_SIZE not in flops:
            flops[SEED_SIZE] = train_flops_per_image(base.model, cfg.aug.channels, SEED_SIZE, dev)
        rows.append(baseline_row(s, base, images.squeeze(1).cpu().numpy(), labels.cpu().numpy()))
        rows[-1]["flops_per_image"] = flops[SEED_SIZE]
    for r in rows:
        if r["mode"] in ("step", "full"):
            r["flops_per_image"] = flops[size]
    if any(r["mode"] in TRAINING_MODES for r in rows):
        rows.append(gtx1060_row(flops[size], s.baseline_batch))
    peaks = Peaks(dev)
    annotate(rows, peaks)
    trace = None
    if trace_dir is not None:
        trace = write_trace(s, training, data, Path(trace_dir), trace_steps, missing)
    env = environment(dev)
    env["load_avg_1_5_15"] = dict(before=list(load_before), after=list(os.getloadavg()))
    report = dict(environment=env, settings=_settings_dict(s), input=source, flops_per_image=flops,
                  peaks={p: dict(tflops=v, source=src) for p, (v, src) in peaks.found.items()},
                  rows=rows, missing=missing, trace=trace)
    report["markdown"] = _markdown(report, s)
    return report


def _settings_dict(s: Settings) -> dict:
    return dict(device=str(s.device), model=model_label(s.cfg), modes=list(s.modes), backends=list(s.backends), warmup=s.warmup,
                iters=s.iters, repeats=s.repeats, baseline_batch=s.baseline_batch, workers=s.workers,
                data_root=s.data_root, scaled_down=s.scaled, config=s.cfg.to_dict())


def _markdown(report: dict, s: Settings) -> str:
    env, cfg = report["environment"], s.cfg
    load = env["load_avg_1_5_15"]
    size = cfg.aug.out_size
    lines = [
        f"Training throughput on {env['device']} (torch {env['torch']}, CUDA {env['cuda'] or '—'}, "
        f"git {env['git_revision']}); 1-min load average {load['before'][0]:.2f} before the run "
        f"({load['after'][0]:.2f} after, this run included).",
        f"Model {model_label(cfg)}, {report['flops_per_image'][size] / 1e9:.2f} GFLOP per training "
        f"image (fwd + bwd, {cfg.aug.channels}x{size}x{size}); input: {report['input']}; median of "
        f"{s.repeats} timed runs of {s.iters} batch(es) after {s.warmup} warm-up, device-synchronised.",
    ]
    if s.scaled:
        lines.append("Scaled down for the CPU: " + "; ".join(s.scaled) + ".")
    lines += ["", markdown_table(report["rows"], COLUMNS), ""]
    notes = [
        "GTX 1060 row: a computed ceiling (FLOPs per image x 4.375 TFLOP/s FP32 peak at 100 % "
        "utilisation), not a measurement.",
        "aug share (full rows): 1 - step-only ms / full ms, measured full iteration vs step-only "
        "timing of the same configuration (noise can make it slightly negative).",
        "× baseline: training rows against the baseline row; aug rows against the seed row (the "
        "same per-sample pipeline's augmentation alone, one process).",
    ]
    notes += [f"peak for {p}: {v['tflops']:.2f} TFLOP/s, {v['source']}." for p, v in report["peaks"].items()]
    if any((r.get("peak_fraction") or 0) > 1 and not r.get("computed") for r in report["rows"]):
        notes.append("% of peak above 100 %: this device's convolutions run faster than the measured "
                     "matrix product, so that measured ceiling is no upper bound here (on a CPU, "
                     "oneDNN convolutions can outrun the BLAS matrix product).")
    lines += ["- " + n for n in notes]
    for name, why in report["missing"].items():
        lines.append(f"- {name}: missing — {why}")
    if report["trace"]:
        lines.append(f"- trace: {report['trace']['path']} ({report['trace']['backend']}, "
                     f"{report['trace']['steps']} full iterations)")
    return "\n".join(lines)


# ---------------------------------------------------------------------- plot and trace


def write_plot(report: dict, path: str | Path) -> None:
    """Bar chart of images/sec per row of ``report`` (log scale), titled with the device and model;
    the computed GTX 1060 ceiling is hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"aug": "tab:green", "step": "tab:blue", "full": "tab:orange", "baseline": "tab:red",
               "reference": "lightgrey"}
    rows = report["rows"]
    labels = [f"{r['mode']}: {r['pipeline']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    bars = ax.barh(labels, [r["images_per_sec"] for r in rows],
                   color=[colours[r["mode"]] for r in rows], edgecolor="black")
    for bar, r in zip(bars, rows):
        if r.get("computed"):
            bar.set_hatch("//")
    ax.set_xscale("log")
    ax.invert_yaxis()
    env = report["environment"]
    ax.set_title(f"{env['device']}, {report['settings']['model']}, git {env['git_revision']}", fontsize=9)
    ax.set_xlabel("images / s (log scale); hatched: computed ceiling, not measured")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


class _Ranged:
    """Calls ``target`` inside a profiler range named ``name``; other attributes pass through (so a
    wrapped scaler still answers ``last_skipped``)."""

    def __init__(self, target, name: str):
        self._target, self._name = target, name

    def __call__(self, *args, **kwargs):
        with record_function(self._name):
            return self._target(*args, **kwargs)

    def __getattr__(self, attr):
        return getattr(self._target, attr)


def _ranged_batches(batches: Iterator, name: str) -> Iterator:
    while True:
        with record_function(name):
            item = next(batches)
        yield item


@contextlib.contextmanager
def profiler_ranges(it: FullIteration):
    """While inside: ``it`` runs with named profiler ranges around the next batch ("data.next"), the
    augmenter ("aug") and each of its ops (the augmenter's own ``op_ranges``, see
    :data:`NATIVE_OP_RANGES`), the model's forward and the backward + optimizer step
    (:data:`STEP_RANGES`).  The wrapped objects are the very ones ``it`` times; on exit every
    attribute is as it was."""
    patches = [(it, "augmenter", "aug")] + [(it.training.step, a, n) for a, n in STEP_RANGES.items()]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    batches = it.batches
    aug = it.augmenter
    try:
        aug.op_ranges = True
        for obj, attr, name in patches:
            setattr(obj, attr, _Ranged(getattr(obj, attr), name))
        it.batches = _ranged_batches(batches, "data.next")
        yield it
    finally:
        it.batches = batches
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)
        del aug.op_ranges               # back to the class default


def write_trace(s: Settings, training: Training, data: ResidentData, out_dir: Path, steps: int,
                missing: dict) -> dict | None:
    """Chrome trace (``torch.profiler``, ``export_chrome_trace``) of ``steps`` full iterations with
    the first available backend of ``s.backends``, each inside a "train_step" range; returns the
    path and the named ranges recorded, or None when no backend is available."""
    mean, std = data.pixel_stats()
    it = None
    for name in s.backends:
        try:
            it = FullIteration(training, data, name, mean, std)
            break
        except BackendUnavailable as exc:
            missing[name] = str(exc)
    if it is None:
        return None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    with profiler_ranges(it):
        for _ in range(max(1, s.warmup)):     # lazy tables and autotuning stay out of the trace
            it()
        synchronize(s.device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                with record_function("train_step"):
                    it()
            synchronize(s.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"trace-{it.augmenter.name}.json"
    prof.export_chrome_trace(str(path))
    ours = {"train_step", "data.next", "aug", *NATIVE_OP_RANGES, *STEP_RANGES.values()}
    ranges = sorted({e.key for e in prof.key_averages()} & ours)
    return dict(path=str(path), backend=it.augmenter.name, steps=steps, ranges=ranges)

