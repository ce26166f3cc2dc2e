"""The contract every augmentation backend fulfils, and the pieces all of them share.

A backend is built once per run by :func:`fastfm.augment.create_augmenter` and then called per batch:

    x, y = aug(images, labels)

* ``images``: uint8 tensor (B, 1, 28, 28) on the run's device (the resident dataset's storage).
* ``labels``: int64 tensor (B,) on the same device.
* ``x``: float32 (B, C, S, S), C = ``cfg.channels``, S = ``cfg.out_size``, normalised with the
  training-set mean/std, in ``torch.channels_last`` memory format when ``cfg.channels_last``.
* ``y``: float32 (B, num_classes) soft targets; each row sums to 1.

Randomness comes only from the backend's own generator(s), seeded at construction, so two backends
built with the same seed produce the same stream, and ``state_dict()`` / ``load_state_dict()``
capture and restore it for bit-exact resume.  ``eval(images)`` is the deterministic test-time
transform (resize, centre crop, normalise) with the same output contract as ``x``.
"""

from __future__ import annotations

import abc
import contextlib

import torch

from .config import AugConfig


class Augmenter(abc.ABC):
    """Base class of all backends (see the module docstring for the contract)."""

    name: str = "?"
    # Named profiler ranges around each op ("aug.resize", ...), for ``throughput.py --trace``.
    # Off by default: a range costs a little host time per op, and the hot path owes nothing to it.
    op_ranges: bool = False

    def __init__(self, cfg: AugConfig, device: torch.device | str, seed: int,
                 mean: float, std: float):
        cfg.validate()
        self.cfg = cfg
        self.device = torch.device(device)
        self.seed = int(seed)
        self.mean = float(mean)
        self.std = float(std)

    @abc.abstractmethod
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one training batch; see the module docstring."""

    def eval(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic test-time transform: resize, centre crop, normalise, channels, format."""
        x = images.float()
        if self.cfg.resize and self.cfg.resize != x.shape[-1]:
            x = resize_bilinear(x, self.cfg.resize)
        if self.cfg.crop and self.cfg.crop != x.shape[-1]:
            off = (x.shape[-1] - self.cfg.crop) // 2
            x = x[..., off:off + self.cfg.crop, off:off + self.cfg.crop]
        return finish(normalise(x, self.mean, self.std), self.cfg)

    def op_range(self, op: str):
        """``with self.op_range("crop_flip"):`` -- a ``torch.profiler`` range ``aug.<op>`` when
        :attr:`op_ranges` is on, else nothing."""
        if self.op_ranges:
            return torch.profiler.record_function(f"aug.{op}")
        return contextlib.nullcontext()

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to continue the random stream exactly (generator states)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


_MASK64 = (1 << 64) - 1


def derive_seed(*parts: int, bits: int = 63) -> int:
    """A well-mixed non-negative seed from integers (splitmix64 over the parts).

    Backends whose libraries draw from their own RNGs (Kornia: torch's global RNG; DALI: the
    pipeline seed) re-seed them from (seed, purpose, batch index): counter-based seeding makes a
    restored augmenter continue the stream exactly.  ``bits`` caps the result (DALI takes 31 bits).
    """
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << bits) - 1)


def check_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    """Validate the input half of the contract with clear errors (cheap: metadata only, no sync)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"augmenter expects uint8 images, got {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"augmenter expects images of shape (B, 1, H, W), got {tuple(images.shape)}")
    if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
        raise ValueError(f"augmenter expects int64 labels of shape ({images.shape[0]},), "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if labels.device != images.device:
        raise ValueError(f"images on {images.device} but labels on {labels.device}")


def resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float batch (B, C, H, W) -> (B, C, size, size).

    ``antialias=False``: for the 28 -> 36 upsampling of the recipe antialiasing changes nothing, and
    the plain kernel is what every backend (Kornia, DALI's linear filter) computes.
    """
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                           align_corners=False, antialias=False)


def normalise(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """0..255 float/uint8 pixels -> (x/255 - mean) / std, float32."""
    return (x.float() * (1.0 / 255.0) - mean) / std


def finish(x: torch.Tensor, cfg: AugConfig) -> torch.Tensor:
    """Channel repetition and memory format: the last step of every backend's output."""
    if cfg.channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if cfg.channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, num_classes).float()
