"""The one typed configuration of a training run: every key, its type, default, help and checks.

Precedence: the dataclass defaults, then the YAML preset (``--config``), then ``--section.key value``
overrides.  A bare ``--key`` names a top-level key (``--name``) or, when only one section has it,
that section's key (``--epochs`` is ``--train.epochs``, ``--lr`` is ``--optim.lr``).  Reading and
coercion live in :mod:`fastfm.configio`; this module holds what is fastfm's: the sections, the
registries, the presets and the range checks, each raising :class:`ConfigError` naming the key.
:meth:`Config.to_dict` is the resolved configuration every run folder and checkpoint keeps, and
:meth:`Config.from_dict` rebuilds it.
"""

from __future__ import annotations

import argparse
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import configio
from .configio import ConfigError, opt, section

# Augmentation backends: name -> ("module:Class", pip requirement of its optional dependency or
# None).  The modules are imported only when their backend is chosen (fastfm.augment.create_augmenter).
BACKENDS = {
    "native": ("fastfm.augment.native_backend:NativeAugmenter", None),
    "kornia": ("fastfm.augment.kornia_backend:KorniaAugmenter", "kornia"),
    "dali": ("fastfm.augment.dali_backend:DaliAugmenter", "fastfm[dali] (nvidia-dali-cuda130)"),
}
# Optimizers: name -> (timm optimizer name, has a fused CUDA kernel in torch).  timm's "sgd" is SGD
# with Nesterov momentum; "lookahead_radam" is Ranger (Lookahead(k=6, alpha=0.5) around RAdam).
OPTIMIZERS = {"adam": ("adam", True), "adamw": ("adamw", True), "sgd": ("sgd", True),
              "ranger": ("lookahead_radam", False)}
AUTOAUGMENT_POLICIES = ("none", "cifar10", "imagenet", "svhn")
# WRN activations: name -> torch.nn class name ("default" in the config means relu for WRN).
WRN_ACTIVATIONS = {"relu": "ReLU", "mish": "Mish"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RESUME = ("no", "yes", "auto")
ON_NONFINITE = ("stop", "skip")
# torch.compile modes (``none``: eager).  reduce-overhead adds CUDA graphs: the launch cost, not the
# FLOPs, bounds a small model's step at batch 128, so the GPU run picks the fastest of these.
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
# The presets ship inside the package (package data), so an installed fastfm finds them too; the
# checkout's top-level configs/ is a link to this folder.
PRESETS = Path(__file__).resolve().parent / "configs"

# A run name becomes one folder under out_dir: one plain path component, never "..", "/" or "".
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,100}")


def check_run_name(name: str) -> str | None:
    """Why ``name`` cannot be a run name, or None when it can."""
    if len(name) > 100:
        return f"{name[:40]!r}... has {len(name)} characters; at most 100"
    if name in (".", "..") or not NAME_PATTERN.fullmatch(name):
        return (f"{name!r} is not a plain folder name: use 1 to 100 letters, digits, '.', '_' or "
                f"'-' (not '.' or '..')")
    return None


@dataclass
class DataConfig:
    root: str = opt("data", "folder holding FashionMNIST/raw (python scripts/prepare_data.py)")
    train_limit: int = opt(0, "train on the first N training images only (0 = all 60000)")
    test_limit: int = opt(0, "evaluate on the first N test images only (0 = all 10000)")

    def validate(self) -> None:
        for name in ("train_limit", "test_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}: must be >= 0 (0 = all), got {getattr(self, name)}")


@dataclass
class ModelConfig:
    name: str = opt("wrn", "'wrn' (WideResNet, depth/width below) or a timm model name (resnet34, ...)")
    depth: int = opt(40, "WRN depth, 6n + 4 (10, 16, 22, 28, 40)")
    width: int = opt(4, "WRN widening factor k")
    act: str = opt("default", "activation: default (ReLU for WRN, the model's own for timm), relu, "
                              "mish; timm models take any timm activation name")
    dropout: float = opt(0.0, "WRN: dropout between the two convs of a block; timm: drop_rate")
    pretrained: str = opt("", "local weights file to start from ('' = random init; no hub access)")

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("model.name: must not be empty")
        if self.name == "wrn":
            if self.depth < 10 or (self.depth - 4) % 6:
                raise ConfigError(f"model.depth: WRN depth must be 6n + 4 with n >= 1 "
                                  f"(10, 16, 22, 28, 40, ...), got {self.depth}")
            if self.width < 1:
                raise ConfigError(f"model.width: must be >= 1, got {self.width}")
            if self.act not in ("default", *WRN_ACTIVATIONS):
                raise ConfigError(f"model.act: WRN supports {', '.join(('default', *WRN_ACTIVATIONS))}, "
                                  f"got {self.act!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: must be in [0, 1), got {self.dropout}")


@dataclass
class OptimConfig:
    name: str = opt("adam", "adam | adamw | sgd (Nesterov) | ranger (Lookahead + RAdam)")
    lr: float = opt(3e-4, "peak learning rate (after warm-up) for the global batch train.batch_size")
    weight_decay: float = opt(5e-4, "L2 penalty (decoupled for adamw); biases and norm weights get none")
    momentum: float = opt(0.9, "sgd momentum")
    betas: tuple[float, float] = opt((0.9, 0.999), "adam/adamw/ranger betas")
    eps: float = opt(1e-8, "adam/adamw/ranger epsilon")
    fused: bool = opt(True, "torch's fused CUDA kernels for adam/adamw/sgd (ignored on CPU and for ranger)")
    clip_grad: float = opt(0.0, "clip the global gradient L2 norm to this value (0 = off)")

    def validate(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name: {self.name!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.lr <= 0:
            raise ConfigError(f"optim.lr: must be > 0, got {self.lr}")
        for name in ("weight_decay", "clip_grad", "eps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"optim.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"optim.momentum: must be in [0, 1), got {self.momentum}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas: each must be in [0, 1), got {list(self.betas)}")


@dataclass
class SchedConfig:
    warmup_epochs: float = opt(10.0, "linear warm-up length in epochs, applied per step (0 = none; "
                                     "longer than the run = the whole run warms up)")
    start_factor: float = opt(0.01, "warm-up starts at optim.lr * start_factor (report: 3e-6 -> 3e-4)")
    end_factor: float = opt(0.0, "cosine decay ends at optim.lr * end_factor")

    def validate(self) -> None:
        if self.warmup_epochs < 0:
            raise ConfigError(f"sched.warmup_epochs: must be >= 0, got {self.warmup_epochs}")
        for name in ("start_factor", "end_factor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"sched.{name}: must be in [0, 1], got {getattr(self, name)}")


@dataclass
class TrainConfig:
    epochs: int = opt(400, "training epochs")
    batch_size: int = opt(128, "global batch (all ranks together); each rank takes batch_size / world_size")
    label_smoothing: float = opt(0.0, "label smoothing, applied to the (CutMix/MixUp) soft targets")
    precision: str = opt("auto", "auto (bf16 on CUDA where supported, else fp16 + grad scaler; fp32 "
                                 "on CPU) | fp32 | bf16 | fp16")
    compile_mode: str = opt("none", "torch.compile mode of the model: none | default | reduce-overhead "
                                    "(CUDA graphs) | max-autotune")
    sync_bn: bool = opt(True, "SyncBatchNorm across GPUs under DDP (CUDA only)")
    device: str = opt("auto", "auto (CUDA when present) | cpu | cuda | cuda:N")
    seed: int = opt(0, "seed of model init, data order, augmentation and dropout")
    deterministic: bool = opt(False, "deterministic kernels (slower on CUDA; needed for bit-exact resume there)")
    resume: str = opt("no", "no | yes (continue from the run folder's last.pt) | auto (resume when last.pt "
                            "exists, else start afresh: for relaunches by torchrun or a scheduler)")
    on_nonfinite: str = opt("stop", "a NaN/inf loss: stop (with the step named) | skip the step")
    log_every: int = opt(20, "steps between progress refreshes: the only host syncs inside an epoch")
    progress: bool = opt(True, "show a tqdm progress bar (rank 0)")
    checkpoint_every_min: float = opt(0.0, "also write last.pt mid-epoch, at the first refresh after "
                                           "this many minutes since the last write (0 = epoch ends only)")
    dist_timeout_s: float = opt(300.0, "multi-process runs: a collective that waits longer than this "
                                       "(a frozen or lost rank) fails the run instead of hanging it")
    max_skipped: float = opt(0.5, "train.on_nonfinite: skip: stop the run when more than this share of "
                                  "a window's steps were skipped (1 = never stop)")
    skip_window: int = opt(100, "steps per window for max_skipped (an epoch's end also closes one)")

    # Keys that were renamed: loading one names its replacement instead of "unknown key".
    replaced: typing.ClassVar[dict[str, str]] = {
        "compile": f"compile_mode ({' | '.join(COMPILE_MODES)})"}

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs: must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size: must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        for name, allowed in (("precision", PRECISIONS), ("compile_mode", COMPILE_MODES), ("resume", RESUME),
                              ("on_nonfinite", ON_NONFINITE)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"train.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ConfigError(f"train.device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        if self.log_every < 1:
            raise ConfigError(f"train.log_every: must be >= 1, got {self.log_every}")
        if self.checkpoint_every_min < 0:
            raise ConfigError(f"train.checkpoint_every_min: must be >= 0, got {self.checkpoint_every_min}")
        if self.dist_timeout_s <= 0:
            raise ConfigError(f"train.dist_timeout_s: must be > 0, got {self.dist_timeout_s}")
        if not 0.0 < self.max_skipped <= 1.0:
            raise ConfigError(f"train.max_skipped: must be in (0, 1], got {self.max_skipped}")
        if self.skip_window < 1:
            raise ConfigError(f"train.skip_window: must be >= 1, got {self.skip_window}")


@dataclass
class EmaConfig:
    enabled: bool = opt(False, "keep an exponential moving average of the weights (evaluated alongside)")
    decay: float = opt(0.9998, "EMA decay per step")
    warmup: bool = opt(True, "ramp the decay up from 0 over the first steps (timm ModelEmaV3 warm-up)")

    def validate(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ConfigError(f"ema.decay: must be in (0, 1), got {self.decay}")


@dataclass
class EvalConfig:
    every: int = opt(1, "evaluate on the test set every N epochs (0 = only after the last)")
    batch_size: int = opt(1000, "evaluation batch per rank")
    tta: bool = opt(True, "after training, also report test-time augmentation (flips and shifts)")
    tta_flip: bool = opt(True, "TTA: add horizontally flipped views")
    tta_shift: int = opt(2, "TTA: add views shifted by (+-s, +-s) input pixels (0 = none)")

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError(f"eval.every: must be >= 0, got {self.every}")
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size: must be >= 1, got {self.batch_size}")
        if not 0 <= self.tta_shift < 14:
            raise ConfigError(f"eval.tta_shift: must be in 0..13 pixels, got {self.tta_shift}")


@dataclass
class LogConfig:
    tensorboard: bool = opt(True, "rank 0 also writes TensorBoard event files to runs/<name>/tb/ (tensorboard "
                                  "--logdir runs); needs the tensorboard package (pip install 'fastfm[tb]')")

    def validate(self) -> None:
        pass


@dataclass
class AugConfig:
    """The one augmentation recipe every backend follows, in this order (each op can be switched off):

    1. ``resize``   28 -> 36 (bilinear, antialias off: upsampling).  Done first so that the crop below
       samples sub-pixel shifts of the garment, as the original recipe's ``Resize(36)`` did.
    2. ``crop``     random 32x32 window of the 36x36 image (every offset 0..4 equally likely).
    3. ``flip``     horizontal flip with probability ``flip_p``.
    4. ``autoaugment``  one sub-policy per *sample* (torchvision's policy tables), on uint8 pixels,
       before the conversion to float: its colour ops (posterize, solarize, equalize, ...) are defined
       on 0..255 integers.  After the crop: cheaper (32x32, not 36x36), and the geometric ops then act
       on the frame the network sees.
    5. ``normalise`` to float32 with the training-set mean/std: (x/255 - mean) / std.
    6. ``erasing``  torchvision ``RandomErasing`` semantics on the normalised tensor: with probability
       ``erasing_p`` one rectangle with area fraction in ``erasing_scale`` and aspect ratio (log-uniform)
       in ``erasing_ratio`` is filled with ``erasing_value`` (0 = the dataset mean after normalisation).
    7. ``channels`` 1 -> 3 by repetition when ``channels == 3`` (for ImageNet-style backbones).
    8. ``cutmix`` / ``mixup`` on the whole batch, with per-sample partners: produces soft targets.
       Last, because they mix finished samples and their labels.
    """

    backend: str = opt("native", f"augmentation backend: {' | '.join(BACKENDS)}")
    resize: int = opt(36, 'resize 28 -> N pixels first (bilinear; 0 = keep 28)')
    crop: int = opt(32, 'random crop size in pixels (0 = no crop)')
    flip_p: float = opt(0.5, 'horizontal flip probability')
    autoaugment: str = opt("cifar10", f"AutoAugment policy, one sub-policy per sample: "
                                        f"{' | '.join(AUTOAUGMENT_POLICIES)}")
    erasing_p: float = opt(0.5, 'random erasing probability (torchvision RandomErasing)')
    erasing_scale: tuple[float, float] = opt((0.02, 0.33), 'erased area as a fraction of the image: [lo, hi]')
    erasing_ratio: tuple[float, float] = opt((0.3, 3.3), 'erased box aspect ratio h/w, drawn log-uniformly: [lo, hi]')
    erasing_value: float = opt(0.0, 'erasing fill in normalised units (0 = the dataset mean)')
    cutmix_p: float = opt(0.5, 'probability that a sample gets a CutMix box from its partner')
    cutmix_alpha: float = opt(1.0, 'CutMix lam ~ Beta(alpha, alpha)')
    mixup_p: float = opt(0.0, 'probability of MixUp for a sample (instead of CutMix)')
    mixup_alpha: float = opt(0.2, 'MixUp lam ~ Beta(alpha, alpha)')
    channels: int = opt(1, 'output channels: 1, or 3 by repetition (ImageNet-style backbones)')
    channels_last: bool = opt(True, 'return channels_last tensors')
    num_classes: int = opt(10, 'number of classes of the soft targets')

    def validate(self) -> None:
        def bad(name, why):
            raise ConfigError(f"aug.{name}: {why}")

        if self.backend not in BACKENDS:
            bad("backend", f"{self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.autoaugment not in AUTOAUGMENT_POLICIES:
            bad("autoaugment", f"{self.autoaugment!r} is not one of {', '.join(AUTOAUGMENT_POLICIES)}")
        if self.resize < 0:
            bad("resize", "must be >= 0 (0 disables it)")
        size = self.resize or 28
        if self.crop < 0 or self.crop > size:
            bad("crop", f"must be in 0..{size} (the image is {size} px after resize)")
        for name in ("flip_p", "erasing_p", "cutmix_p", "mixup_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                bad(name, f"probability {p} is outside [0, 1]")
        if self.cutmix_p + self.mixup_p > 1.0:
            bad("mixup_p", "cutmix_p + mixup_p must not exceed 1 (a sample gets one or the other)")
        lo, hi = self.erasing_scale
        if not 0.0 < lo <= hi < 1.0:
            bad("erasing_scale", f"need 0 < lo <= hi < 1, got {self.erasing_scale}")
        lo, hi = self.erasing_ratio
        if not 0.0 < lo <= hi:
            bad("erasing_ratio", f"need 0 < lo <= hi, got {self.erasing_ratio}")
        for name in ("cutmix_alpha", "mixup_alpha"):
            if getattr(self, name) <= 0:
                bad(name, "must be > 0")
        if self.channels not in (1, 3):
            bad("channels", f"must be 1 or 3, got {self.channels}")

    @property
    def out_size(self) -> int:
        """Side of the images a backend returns."""
        return self.crop or self.resize or 28

    @classmethod
    def off(cls, **overrides) -> "AugConfig":
        """Everything switched off except the resize/crop geometry (handy for tests and eval)."""
        base = dict(flip_p=0.0, autoaugment="none", erasing_p=0.0, cutmix_p=0.0, mixup_p=0.0)
        base.update(overrides)
        return cls(**base)


@dataclass
class Config:
    name: str = opt("", "run name: the run folder is out_dir/name ('' = the preset file's name)")
    out_dir: str = opt("runs", "parent folder of run folders")
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    aug: AugConfig = section(AugConfig)
    optim: OptimConfig = section(OptimConfig)
    sched: SchedConfig = section(SchedConfig)
    train: TrainConfig = section(TrainConfig)
    ema: EmaConfig = section(EmaConfig)
    eval: EvalConfig = section(EvalConfig)
    log: LogConfig = section(LogConfig)

    def validate(self) -> "Config":
        """Check every section; returns ``self``.  Raises :class:`ConfigError` naming the key."""
        if self.name and (why := check_run_name(self.name)):
            raise ConfigError(f"name: {why}")
        if not self.out_dir:
            raise ConfigError("out_dir: must not be empty")
        self.data.validate()
        self.model.validate()
        self.aug.validate()
        self.optim.validate()
        self.sched.validate()
        self.train.validate()
        self.ema.validate()
        self.eval.validate()
        self.log.validate()
        return self

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists): what ``config.yaml`` and checkpoints hold."""
        return configio.plain(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Build from a nested dict, checking every key and value; raises :class:`ConfigError`."""
        return configio.build(cls, d).validate()

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] = ()) -> "Config":
        """Defaults <- YAML file or preset ``path`` <- ``overrides`` (``["--optim.lr", "1e-3", ...]``).

        ``name`` defaults to the YAML file's stem (``configs/cpu.yaml`` -> ``cpu``).
        """
        d = {}
        if path is not None:
            path = resolve_config_path(path)
            d = configio.read_yaml(path, f" (a preset name is one of {', '.join(preset_names())})")
            d.setdefault("name", path.stem)
        for key, value in configio.parse_overrides(cls, overrides):
            if key == "name" and value == "":
                raise ConfigError("name: must not be empty (leave --name out for the preset's name)")
            configio.set_dotted(d, key, value)
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dump())

    def dump(self) -> str:
        return configio.dump_yaml(self.to_dict())


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def resolve_config_path(name: str | Path) -> Path:
    """``--config`` as a file: an existing path, else a preset by name (``fast`` or ``fast.yaml``)."""
    path = Path(name)
    if path.exists() or path.parent != Path("."):
        return path
    preset = PRESETS / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return preset if preset.is_file() else path


def default_preset() -> Path:
    """The preset used without ``--config``: ``fast`` where CUDA is available, else ``cpu``."""
    import torch  # here, not at the top: reading a config must not need torch

    return PRESETS / ("fast.yaml" if torch.cuda.is_available() else "cpu.yaml")


def arg_parser(description: str) -> argparse.ArgumentParser:
    """The scripts' command line: ``--config FILE`` and, listed in ``--help``, every key of
    :class:`Config` as a ``--section.key VALUE`` override (what ``parse_known_args`` leaves over)."""
    return configio.arg_parser(Config, description,
                               f"YAML file, or a preset by name ({', '.join(preset_names())}; default: "
                               f"fast with CUDA, cpu without)")
