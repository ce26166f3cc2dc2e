"""The contract every augmentation backend fulfils, and the pieces all of them share.

A backend is built once per run by :func:`fastfm.augment.create_augmenter` and then called per batch:

    x, y = aug(images, labels)

* ``images``: uint8 tensor (B, 1, 28, 28) on the augmenter's device (the resident dataset's storage).
* ``labels``: int64 tensor (B,) on the same device.
* ``x``: float32 (B, C, S, S), C = ``cfg.channels``, S = ``cfg.out_size``, normalised with the
  training-set mean/std, in ``torch.channels_last`` memory format when ``cfg.channels_last``.
* ``y``: float32 (B, num_classes) soft targets; each row sums to 1.

:class:`Augmenter` is a template: ``__call__`` is written once here (input checks, the backend's own
ops, then :meth:`Augmenter._mix_and_finish`: one-hot targets, CutMix/MixUp, channels and memory
format); a backend implements only :meth:`Augmenter._augment` (its ops from resize up to and
including erasing) and its own state.  A backend with a two-phase call (the native one: draws, then a
pure function that ``torch.compile`` can trace) ends its pure phase with the same tail.

Randomness comes only from the backend's own generator(s), seeded at construction, so two
augmenters of one backend built with the same seed produce the same stream, and ``state_dict()`` /
``load_state_dict()`` capture and restore it for bit-exact resume.  A state is a dict tagged with
its backend (``{"backend": name, ...}``); loading another backend's state is a ``ValueError``.
``test_transform(images)`` is the deterministic test-time transform (resize, centre crop,
normalise) with the same output contract as ``x``.  With :attr:`Augmenter.op_ranges` on, every op
runs in a ``torch.profiler`` range ``aug.<op>``.
"""

from __future__ import annotations

import abc
import contextlib

import torch

from ..config import AugConfig
from .mix import apply_mix, draw_mix


class Augmenter(abc.ABC):
    """Base class of all backends (see the module docstring for the contract).

    A backend sets :attr:`name`, creates :attr:`generator` in its ``__init__`` (or derives from
    :class:`CounterSeeded`, which does) and implements :meth:`_augment`, :meth:`_state_dict` and
    :meth:`_load_state_dict`.
    """

    name: str = "?"
    # Named profiler ranges around each op ("aug.resize", ...), for ``throughput.py --trace``.
    # Off by default: a range costs a little host time per op, and the hot path owes nothing to it.
    op_ranges: bool = False
    #: torch.Generator on :attr:`device` that CutMix/MixUp draw from after :meth:`_augment` (and
    #: the erasing boxes, where the backend erases in torch).  Native: its one generator for every
    #: op.  Kornia and DALI: re-seeded for every batch (:class:`CounterSeeded`).
    generator: torch.Generator

    def __init__(self, cfg: AugConfig, device: torch.device | str, seed: int,
                 mean: float, std: float):
        cfg.validate()
        self.cfg = cfg
        self.device = torch.device(device)
        self.seed = int(seed)
        self.mean = float(mean)
        self.std = float(std)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment one training batch; see the module docstring for shapes and dtypes."""
        self.check_input(images, labels)
        return self._mix_and_finish(self._augment(images), labels)

    def _mix_and_finish(self, x: torch.Tensor, labels: torch.Tensor,
                        mix_draws: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tail of every call, eager or two-phase: one-hot targets, CutMix/MixUp, channels and
        memory format of the backend's output ``x`` (B, 1, S, S).  ``mix_draws``: the batch's
        :func:`~fastfm.augment.mix.draw_mix`, made beforehand by a two-phase call (then nothing is
        drawn here and nothing is read on the host); None draws them now from :attr:`generator`."""
        y = one_hot(labels, self.cfg.num_classes)
        # CutMix/MixUp before channel repetition and memory format: they commute with both, and
        # mixing one channel is a third of the work of mixing three.
        with self.op_range("mix"):
            if mix_draws is None:
                b, _, h, w = x.shape
                mix_draws = draw_mix(self.cfg, b, h, w, self.generator, x.device)
            x, y = apply_mix(x, y, self.cfg, mix_draws)
        with self.op_range("finish"):
            return finish(x, self.cfg), y

    def prefetch(self, images: torch.Tensor) -> None:
        """A promise: the next call will augment ``images`` (the same tensor object).  A backend
        whose work runs beside the training stream -- DALI, whose per-sample draws and control flow
        run on its own CPU threads -- starts on them now, so that work overlaps the current training
        step; the next call then only collects the result.  Changes no output and no random stream.
        Default: nothing (the native and Kornia backends queue all their work on the device stream
        at call time anyway)."""

    @abc.abstractmethod
    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """The backend's own ops, in the order of :class:`fastfm.config.AugConfig` from resize up to and
        including erasing: checked uint8 (B, 1, H, W) -> normalised float32 (B, 1, S, S) on
        :attr:`device` (any memory format).  Ops switched off in the config are skipped."""

    def check_input(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Validate the input half of the contract with clear errors, including the device (the
        generators live on :attr:`device`).  Metadata only: no sync."""
        self.check_images(images)
        if labels.dtype != torch.int64 or labels.shape != images.shape[:1]:
            raise ValueError(f"augmenter expects int64 labels of shape ({images.shape[0]},), "
                             f"got {labels.dtype} {tuple(labels.shape)}")
        if labels.device != images.device:
            raise ValueError(f"images on {images.device} but labels on {labels.device}")

    def check_images(self, images: torch.Tensor) -> None:
        """The images' part of :meth:`check_input` (also what :meth:`prefetch` is given)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"augmenter expects uint8 images, got {images.dtype}")
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"augmenter expects images of shape (B, 1, H, W), got {tuple(images.shape)}")
        dev = images.device
        if dev.type != self.device.type or (self.device.index is not None and dev.index != self.device.index):
            raise ValueError(f"the {self.name} augmenter was built for {self.device} but the batch "
                             f"is on {dev}")

    def test_transform(self, images: torch.Tensor) -> torch.Tensor:
        """Deterministic test-time transform of uint8 (B, 1, H, W): resize, centre crop, normalise,
        channels, memory format -> float32 (B, C, S, S), as ``x`` of :meth:`__call__`."""
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

    def state_dict(self) -> dict:
        """``{"backend": name, ...}``: the tag plus everything the backend needs to continue its
        random stream exactly (:meth:`_state_dict`)."""
        return {"backend": self.name, **self._state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned; ``ValueError`` for another backend's state."""
        tag = state.get("backend")
        if tag is None:
            raise ValueError(f"augmenter state without a 'backend' tag cannot be loaded into the "
                             f"{self.name!r} augmenter (keys: {', '.join(map(str, state))})")
        if tag != self.name:
            raise ValueError(f"augmenter state of the {tag!r} backend cannot be loaded into the "
                             f"{self.name!r} augmenter: resume with --aug.backend {tag}")
        self._load_state_dict(state)

    @abc.abstractmethod
    def _state_dict(self) -> dict:
        """The backend's own state (generator states, counters); plain values and tensors."""

    @abc.abstractmethod
    def _load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`_state_dict` returned (``state`` also holds the ``"backend"`` tag)."""


_MASK64 = (1 << 64) - 1


def derive_seed(*parts: int, bits: int = 63) -> int:
    """A well-mixed non-negative seed from integers (splitmix64 over the parts), for
    :class:`CounterSeeded`.  ``bits`` caps the result (DALI takes 31 bits)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        h = z ^ (z >> 31)
    return h & ((1 << bits) - 1)


# Stream ids of the counter-seeded backends: the seed of stream s for batch i is
# derive_seed(seed, s, i).  Distinct, so that no two streams of one augmenter coincide; fixed,
# because checkpoints hold only (seed, batch counter) and resume by re-deriving them.
MIX_STREAM = 0x313C             # Augmenter.generator: CutMix/MixUp (and DALI's erasing boxes)
KORNIA_STREAM = 0xC0A1          # torch's global generators while Kornia runs
DALI_PIPELINE_STREAM = 0xDA11   # the DALI pipeline's seed (31 bits)


class CounterSeeded(Augmenter):
    """Base of the backends whose library draws from random generators it owns (Kornia: torch's
    global generators, which are the caller's; DALI: the pipeline seed, reset when the pipeline is
    rebuilt).  So every stream is re-seeded per batch from (seed, stream id, batch index) and the
    state is ``{"seed", "batches"}``: a restored augmenter re-derives the same seeds and continues
    exactly.

    A subclass calls :meth:`_next_batch` once per batch and seeds its library's generators with
    :meth:`stream_seed`.  A CUDA device without an index is pinned to the current one, the device
    the library's generators and the pipeline are bound to.
    """

    def __init__(self, cfg: AugConfig, device: torch.device | str, seed: int,
                 mean: float, std: float):
        super().__init__(cfg, device, seed, mean, std)
        self._check_device()
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.generator = torch.Generator(device=self.device)
        self.batches = 0            # batches augmented so far

    def _check_device(self) -> None:
        """Raise ``ValueError`` for a device the backend cannot run on (default: none)."""

    def stream_seed(self, stream: int, index: int | None = None, bits: int = 63) -> int:
        """The seed of ``stream`` for batch ``index`` (default: the next batch, :attr:`batches`)."""
        return derive_seed(self.seed, stream, self.batches if index is None else index, bits=bits)

    def _next_batch(self) -> int:
        """Count the batch being augmented and seed :attr:`generator` for it; returns its index."""
        index = self.batches
        self.generator.manual_seed(self.stream_seed(MIX_STREAM, index))
        self.batches += 1
        return index

    def _state_dict(self) -> dict:
        return {"seed": self.seed, "batches": self.batches}

    def _load_state_dict(self, state: dict) -> None:
        self.seed = int(state.get("seed", self.seed))     # the saved stream, whatever was configured
        self.batches = int(state["batches"])


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
    """Channel repetition and memory format: the last step of every output (training and test)."""
    if cfg.channels == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if cfg.channels_last:
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


_CLASSES: dict = {}     # (num_classes, device) -> arange(num_classes), for one_hot


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (B,) -> float32 (B, num_classes) one-hot targets.

    A comparison with ``arange`` rather than ``F.one_hot``: on CPU tensors that checks the labels'
    range with two host reads (``aminmax`` + ``.item()``), which also break a ``torch.compile`` graph.
    """
    key = (num_classes, labels.device)
    classes = _CLASSES.get(key)
    if classes is None:                 # built once per (num_classes, device), not per batch
        classes = _CLASSES[key] = torch.arange(num_classes, device=labels.device)
    return (labels.unsqueeze(1) == classes).float()
