"""NVIDIA DALI backend: one DALI pipeline per run, fed batch by batch from the resident tensors.

Imported only when ``--aug.backend dali`` is chosen (``create_augmenter`` turns a missing
``nvidia-dali-cuda130`` into :class:`~fastfm.augment.BackendUnavailable`).  Written against DALI 2.4.

Data path
---------
* The uint8 batch (B, 1, 28, 28) is viewed as HWC samples (B, 28, 28, 1) -- for one channel the
  NCHW -> NHWC permute is already contiguous, so this is free -- and handed to
  ``fn.external_source`` with ``Pipeline.feed_input`` on the **same device**: ``device="gpu"`` and
  the pipeline's ``device_id`` = the augmenter's CUDA index when the augmenter lives on CUDA (the
  torch CUDA tensor is passed directly, ordered on torch's current stream; no host round trip), a
  NumPy view of the CPU tensor with ``device="cpu"`` and ``device_id=None`` otherwise.
* The pipeline output (float32 HWC, already normalised) is copied with
  ``nvidia.dali.plugin.pytorch.feed_ndarray`` into a freshly allocated torch tensor on the same
  device; on CUDA the outputs are collected with ``outputs(cuda_stream)`` so they are bound to torch's
  current stream (no host sync, DALI's default "dynamic" executor) and the copy is issued on that
  stream.  (B, S, S, 1) permuted to (B, 1, S, S) is a channels_last view, so no transpose follows.
* Erasing (:mod:`fastfm.augment.erasing`, the box draw every backend shares) runs in torch on that
  tensor; CutMix/MixUp (DALI has no CutMix), channel repetition and memory format follow in the base
  class (:meth:`fastfm.augment.base.Augmenter.__call__`).

Op order (config.py): resize -> crop -> flip -> AutoAugment -> normalise (in DALI) -> erasing ->
CutMix/MixUp -> channels (torch).  Erasing is the last op before mixing and works on the normalised
image, which is exactly what the pipeline returns, so running it after the pipeline keeps the
documented order.  An op that is off in the config is not put into the graph at all.

Random streams, seeding and resume
----------------------------------
* DALI's random operators (``fn.random.*``, and those inside ``auto_augment``) are seeded from the
  pipeline ``seed``, derived from ``(seed, batches done)``; the erasing boxes and CutMix/MixUp draw
  from :attr:`~fastfm.augment.base.Augmenter.generator`, a torch generator on the augmenter's
  device re-seeded for every batch from ``(seed, batch index)``.
* ``state_dict()`` holds the batch counter (which also restores the torch generator's stream)
  plus DALI's own checkpoint (``enable_checkpointing=True``,
  ``Pipeline.checkpoint()``; verified with ``external_source``/``feed_input`` on DALI 2.4: the
  operators' RNG states are restored, the external source is simply fed by us).
  ``load_state_dict()`` rebuilds the pipeline from that checkpoint at the next call, so the next
  batch is bit-identical to the one an uninterrupted run would have produced.
* The pipeline is built lazily on the first call with ``max_batch_size`` = that batch size.  A
  smaller batch (the last, partial one) is fed as is: DALI supports a variable batch size up to
  the maximum, so nothing is rebuilt and no stream is reset.  A larger batch rebuilds the pipeline
  with a seed derived from ``(seed, batches done)``, which is deterministic as well.

Deviations from torchvision semantics (documented, deliberate or forced by DALI)
-------------------------------------------------------------------------------
* resize: DALI's linear filter (``antialias=False``) -- the same pixel-centre convention as
  ``F.interpolate(bilinear, align_corners=False)``; results agree to float rounding.  With
  AutoAugment on, the resize writes uint8 (rounded), because AutoAugment works on uint8 pixels (as
  torchvision's does); with AutoAugment off it writes float32 and nothing is quantised.
* crop: ``fn.crop`` with ``crop_pos_x/y`` drawn by ``fn.random.uniform(values=[k/d, k=0..d])``
  (d = size - crop): every integer offset is equally likely, as in torchvision.  (A continuous
  ``uniform(range=[0, 1])`` position would be rounded by ``fn.crop`` and give the two end offsets
  half the probability of the others.)
* AutoAugment: ``nvidia.dali.auto_aug.auto_augment.apply_auto_augment`` (one sub-policy drawn per
  *sample*, each op applied with its probability, magnitudes randomly negated per sample) with a
  policy built here from **torchvision's** tables (``torchvision.transforms.AutoAugment(...).policies``;
  cifar10 = DALI's ``reduced_cifar10``, imagenet = DALI's ``reduced_image_net``, svhn = ``svhn``) and
  torchvision's magnitudes: 10 bins (DALI's stock policies use 11, so its bin 9 is 90% of the
  maximum), translate up to ``150/331 * size`` px truncated to whole pixels, posterize 8..4 bits kept,
  solarize threshold 255..0 (DALI's stock reduced_cifar10/svhn solarize runs 0..256 and posterize
  0..4 bits), fill 0 and nearest-neighbour warps (torchvision's AutoAugment defaults; DALI's default
  is fill 128, bilinear).  The ops work on the single grey channel directly instead of expanding to
  RGB and back (3x less work): ``Color`` (saturation) is the identity on a grey image, exactly as
  torchvision's ``adjust_saturation`` on a 1-channel image, and ``Contrast`` blends towards the
  image mean, as torchvision does for 1 channel.  Remaining differences: DALI rounds where
  torchvision truncates when converting blended values back to uint8 (brightness, contrast,
  sharpness, autocontrast: at most 1 grey level; every other op is bit-exact against torchvision,
  see ``tests/test_augment_dali.py::test_ops_match_torchvision``); DALI's shear matrix shears the
  other way for the same sign (the sign is random with probability 1/2, so the distribution is
  the same).  ``Sharpness`` keeps the 1-pixel border unchanged, as torchvision/PIL do.
  ``Equalize`` is DALI's ``fn.equalize``, which follows OpenCV's formula (lut = round((cdf - cdf_min)
  * 255 / (N - cdf_min))), while torchvision follows PIL's (exclusive cumulative histogram divided
  by (N - count of the top level) / 255): on 32 px Fashion-MNIST images the equalised pixels differ
  by ~27 grey levels on average, PIL's version brightening the garment more.  A bit-exact PIL
  equalize from DALI ops was prototyped (one-hot histogram and lookup, 256 ops per pixel): exact,
  but ~0.8 ms per sample on the 2-core CPU (trivial on a GPU), so it is not used, to keep one
  semantics on both devices.  Unknown policy names raise ``ValueError``.
* erasing: not a DALI op here (see ``DaliAugmenter._augment`` for why): the boxes of the shared
  :func:`fastfm.augment.erasing.draw_erasing_boxes` are applied in torch
  (:func:`fastfm.augment.erasing.erase`, one mask and ``masked_fill`` on the device).
* Seeds: the same seed gives the same stream for this backend, but not the same numbers as the
  native or Kornia backends (different generators).
* Cost on the CPU (DALI's CPU backend, ``min(4, cpu_count)`` threads; 2-core development machine,
  batch 512, best of 15, the machine shared), measured while erasing was still ``fn.erase`` in the
  pipeline: ~60 ms per batch for the full default recipe (cifar10 AutoAugment, erasing, CutMix),
  ~27 ms without AutoAugment, ~20 ms for resize + crop + flip + erasing, ~11 ms for resize + crop +
  flip.  Erasing in torch, timed side by side with that former pipeline on a busier machine: resize
  + crop + flip + erasing ~16-20 ms where the in-pipeline version took ~28 ms.  Building the
  pipeline (first call, and a batch larger than any before) takes ~4 s with AutoAugment -- DALI's
  autograph rewrites the conditional graph of 25 sub-policies -- and ~0.2 s without.  On a GPU the
  image work moves to the device but the per-sample random draws and the conditional split/merge
  of the AutoAugment graph still run on DALI's CPU threads.  The hot path therefore feeds each
  batch one iteration ahead (:meth:`DaliAugmenter.prefetch`, called by
  :meth:`fastfm.engine.step.HotPath.iteration` right after the current batch's augmentation), so
  that CPU work overlaps the current training step; ``prefetch_queue_depth=1`` suffices for one
  batch in flight.

Not verified here (no GPU on the development machine): the CUDA path (``device="gpu"`` external
source, ``outputs(cuda_stream)``, ``feed_ndarray`` on the stream, prefetching).  It follows DALI's documented API;
run ``tests/test_augment_dali.py`` (the ``gpu``-marked test) on a CUDA machine.
"""

from __future__ import annotations

import os

import numpy as np
import nvidia.dali as dali  # noqa: F401  (first DALI import: a missing DALI fails here)
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.auto_aug import augmentations as _aa
from nvidia.dali.auto_aug.auto_augment import apply_auto_augment
from nvidia.dali.auto_aug.core import Policy, augmentation
from nvidia.dali.plugin.pytorch import feed_ndarray

from .base import Augmenter, derive_seed
from ..config import AugConfig
from .erasing import draw_erasing_boxes, erase

# fn.filter / fn.equalize left fn.experimental in recent DALI; keep older releases working
_filter = getattr(fn, "filter", None) or fn.experimental.filter
_equalize_op = getattr(fn, "equalize", None) or fn.experimental.equalize

_NUM_BINS = 10             # torchvision AutoAugment magnitude bins


# ----------------------------------------------------------------------------------------------
# AutoAugment with torchvision's tables and magnitudes, on single-channel HWC uint8 images.
# ----------------------------------------------------------------------------------------------

def _shift_x(m):
    return np.array([float(int(m)), 0.0], dtype=np.float32)     # torchvision: int(magnitude)


def _shift_y(m):
    return np.array([0.0, float(int(m))], dtype=np.float32)


@augmentation(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=_aa.shift_enhance_range,
              name="color")
def _color_gray(data, _factor):
    """Saturation of a grey image is the identity (torchvision: adjust_saturation on 1 channel)."""
    return data


@augmentation(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=_aa.shift_enhance_range,
              name="contrast")
def _contrast_gray(data, factor):
    """torchvision adjust_contrast for one channel: blend with the image mean."""
    mean = fn.reductions.mean(data, axis_names="HWC", keep_dims=True)
    return fn.cast_like(mean + (data - mean) * factor, data)


@augmentation(name="equalize")
def _equalize(data, _):
    return _equalize_op(data)


def _sharpness_aug(side: int):
    border = np.ones((side, side, 1), dtype=np.uint8)
    border[1:-1, 1:-1] = 0

    @augmentation(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=_aa.sharpness_kernel,
                  param_device="auto", name="sharpness")
    def _sharpness(data, kernel):
        """PIL/torchvision sharpness: blend with the 3x3 smoothed image, border pixels kept."""
        mask = types.Constant(border, device=data.device or "cpu")
        keep = types.Constant(1 - border, device=data.device or "cpu")
        return _filter(data, kernel) * keep + data * mask

    return _sharpness


def _torchvision_augmentations(side: int) -> dict:
    max_shift = 150.0 / 331.0 * side
    return {
        "ShearX": _aa.shear_x,
        "ShearY": _aa.shear_y,
        "TranslateX": _aa.translate_x_no_shape.augmentation(mag_range=(0, max_shift),
                                                            mag_to_param=_shift_x),
        "TranslateY": _aa.translate_y_no_shape.augmentation(mag_range=(0, max_shift),
                                                            mag_to_param=_shift_y),
        "Rotate": _aa.rotate,
        "Brightness": _aa.brightness,
        "Color": _color_gray,
        "Contrast": _contrast_gray,
        "Sharpness": _sharpness_aug(side),
        "Posterize": _aa.posterize.augmentation(mag_range=(8, 4)),   # bits kept: 8,8,7,7,...,4,4
        "Solarize": _aa.solarize.augmentation(mag_range=(255, 0)),   # threshold 255 .. 0
        "AutoContrast": _aa.auto_contrast,
        "Equalize": _equalize,
        "Invert": _aa.invert,
    }


_POLICY_NAMES = {"cifar10": "CIFAR10", "imagenet": "IMAGENET", "svhn": "SVHN"}


def torchvision_policy(name: str, side: int) -> Policy:
    """torchvision's AutoAugment policy ``name`` as a DALI :class:`Policy` for ``side`` px images."""
    if name not in _POLICY_NAMES:
        raise ValueError(f"aug.autoaugment: the DALI backend has no AutoAugment policy {name!r} "
                         f"(available: {', '.join(_POLICY_NAMES)})")
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    table = AutoAugment(getattr(AutoAugmentPolicy, _POLICY_NAMES[name])).policies
    augs = _torchvision_augmentations(side)
    sub_policies = []
    for sub in table:
        ops = []
        for op_name, p, mag in sub:
            if p <= 0:          # never applied (e.g. ("Invert", 0.0, None)); DALI warns on p == 0
                continue
            aug = augs[op_name]
            ops.append((aug, float(p), None if aug.mag_range is None else int(mag)))
        sub_policies.append(ops)
    return Policy(name=f"torchvision_{name}", num_magnitude_bins=_NUM_BINS,
                  sub_policies=sub_policies)


# ----------------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------------

def build_pipeline(cfg: AugConfig, batch_size: int, device_id: int | None, seed: int,
                   mean: float, std: float, num_threads: int, checkpoint=None):
    """The augmentation pipeline, resize to normalise (input "images": HWC uint8; output:
    normalised float32 HWC).  Erasing follows in torch (see :meth:`DaliAugmenter._augment`)."""
    size = cfg.resize or 28
    side = cfg.out_size
    use_aa = cfg.autoaugment != "none"
    policy = torchvision_policy(cfg.autoaugment, side) if use_aa else None
    src_device = "cpu" if device_id is None else "gpu"

    @pipeline_def(enable_conditionals=True)
    def augment():
        x = fn.external_source(name="images", device=src_device, dtype=types.UINT8, ndim=3,
                               layout="HWC")
        is_float = False
        if size != 28:
            # uint8 (rounded) when AutoAugment follows: it works on uint8 pixels
            x = fn.resize(x, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=False,
                          dtype=None if use_aa else types.FLOAT)
            is_float = not use_aa
        if cfg.crop and cfg.crop != size:
            d = size - cfg.crop
            offsets = [k / d for k in range(d + 1)]       # every integer offset equally likely
            x = fn.crop(x, crop=[cfg.crop, cfg.crop],
                        crop_pos_x=fn.random.uniform(values=offsets),
                        crop_pos_y=fn.random.uniform(values=offsets))
        if cfg.flip_p > 0:
            x = fn.flip(x, horizontal=fn.random.coin_flip(probability=cfg.flip_p))
        if use_aa:
            x = apply_auto_augment(policy, x, fill_value=0, interp_type=types.INTERP_NN)
        if not is_float:
            x = fn.cast(x, dtype=types.FLOAT)
        return (x * (1.0 / 255.0) - mean) / std

    return augment(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                   seed=seed, prefetch_queue_depth=1, enable_checkpointing=True,
                   checkpoint=checkpoint)


class DaliAugmenter(Augmenter):
    """AugConfig on an NVIDIA DALI pipeline; see the module docstring."""

    name = "dali"

    def __init__(self, cfg: AugConfig, device, seed: int, mean: float, std: float):
        super().__init__(cfg, device, seed, mean, std)
        if cfg.autoaugment != "none" and cfg.autoaugment not in _POLICY_NAMES:
            raise ValueError(f"aug.autoaugment: the DALI backend has no policy {cfg.autoaugment!r}")
        if self.device.type == "cuda":
            self._device_id = (self.device.index if self.device.index is not None
                               else torch.cuda.current_device())
            self.device = torch.device("cuda", self._device_id)
        elif self.device.type == "cpu":
            self._device_id = None
        else:
            raise ValueError(f"the DALI backend runs on CPU or CUDA, not {self.device}")
        self._num_threads = max(1, min(4, os.cpu_count() or 1))
        self.generator = torch.Generator(device=self.device)
        self._batches = 0            # batches augmented so far
        self._pipe = None
        self._pipe_batch = 0         # max_batch_size of the pipeline
        self._pipe_seed = 0
        self._restore = None         # (pipe_batch, pipe_seed, checkpoint) waiting for the next call
        self._last_outputs = None    # keeps DALI's output buffers alive until the next call
        self._pending = None         # the images fed by prefetch(), not yet collected

    # -- pipeline management -----------------------------------------------------------------
    def _pipeline(self, batch: int):
        if self._restore is not None:
            pipe_batch, pipe_seed, checkpoint = self._restore
            self._restore = None
            if checkpoint is not None and batch <= pipe_batch:
                self._make_pipe(pipe_batch, pipe_seed, checkpoint)
        if self._pipe is None or batch > self._pipe_batch:
            self._make_pipe(batch, derive_seed(self.seed, 0xDA11, self._batches, bits=31), None)
        return self._pipe

    def _make_pipe(self, batch: int, seed: int, checkpoint) -> None:
        self._pipe = None
        self._last_outputs = None
        pipe = build_pipeline(self.cfg, batch, self._device_id, seed, self.mean, self.std,
                              self._num_threads, checkpoint)
        pipe.build()
        self._pipe, self._pipe_batch, self._pipe_seed = pipe, batch, seed

    # -- feeding and collecting ------------------------------------------------------------------
    def _feed(self, images: torch.Tensor) -> None:
        """Hand ``images`` to the pipeline (built or rebuilt for their batch size) and schedule its
        run; :meth:`_collect` returns the result.  DALI copies the input at feed time."""
        b, _, h, w = images.shape
        if (h, w) != (28, 28):
            raise ValueError(f"the DALI pipeline is built for 28x28 inputs, got {h}x{w}")
        pipe = self._pipeline(b)
        hwc = images.permute(0, 2, 3, 1).contiguous()            # (B, 28, 28, 1): free for 1 channel
        if self._device_id is None:
            pipe.feed_input("images", hwc.numpy(), layout="HWC")
        else:
            pipe.feed_input("images", hwc, layout="HWC", cuda_stream=torch.cuda.current_stream(self.device))
        pipe.schedule_run()

    def _collect(self, b: int) -> torch.Tensor:
        """The oldest scheduled batch's output, copied into a new (B, S, S, 1) float32 tensor (on
        CUDA: bound to and copied on torch's current stream, no host sync)."""
        side = self.cfg.out_size
        out = torch.empty((b, side, side, 1), dtype=torch.float32, device=self.device)
        if self._device_id is None:
            (res,) = self._pipe.outputs()
            feed_ndarray(res.as_tensor(), out)
        else:
            stream = torch.cuda.current_stream(self.device)
            (res,) = self._pipe.outputs(stream)
            feed_ndarray(res.as_tensor(), out, cuda_stream=stream)
        self._last_outputs = res
        return out

    def prefetch(self, images: torch.Tensor) -> None:
        """Feed the next call's batch now (see :meth:`Augmenter.prefetch`): the pipeline's CPU
        threads draw and run its per-sample control flow while the caller's current training step
        runs; the next call collects the result.  The pipeline's random stream and checkpoint count
        collected batches only (``Pipeline.checkpoint()`` with a batch in flight restores to the
        first uncollected one; tests/test_augment_dali.py), so prefetching changes no output and a
        checkpoint taken meanwhile resumes exactly."""
        self.check_images(images)
        if self._pending is not None:
            raise RuntimeError("prefetch: the previously prefetched batch has not been augmented yet")
        with self.op_range("dali_feed"):
            self._feed(images)
        self._pending = images

    # -- the contract --------------------------------------------------------------------------
    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """The DALI pipeline (resize -> crop -> flip -> AutoAugment -> normalise), then erasing in
        torch; (B, 1, S, S) float32, a channels_last view."""
        b = images.shape[0]
        side = self.cfg.out_size
        with self.op_range("dali"):
            if self._pending is None:
                self._feed(images)
            elif self._pending is not images:         # nothing consumed: the promise still holds
                raise ValueError("the DALI augmenter was promised (prefetch) another batch than the one "
                                 "it was called with; call it on the prefetched tensor")
            self._pending = None
            out = self._collect(b)
        x = out.permute(0, 3, 1, 2)                               # (B, 1, S, S), channels_last view
        # Erasing and CutMix/MixUp draw from a torch generator re-seeded per batch: counter-based
        # like the pipeline seed, so DALI's checkpoint plus the batch counter restore both streams.
        self.generator.manual_seed(derive_seed(self.seed, 0x313C, self._batches, bits=63))
        self._batches += 1
        if self.cfg.erasing_p > 0:
            # In torch, not fn.erase in the pipeline, so that the boxes come from the draw every
            # backend shares (fastfm.augment.erasing).  The documented order holds: erasing is the
            # last op before mixing and acts on the normalised image, which is what the pipeline
            # returns.  Feeding the boxes to fn.erase would need them on the host (DALI argument
            # inputs are CPU-only): a device->host copy, i.e. a sync, per batch on CUDA.
            with self.op_range("erasing"):
                boxes = draw_erasing_boxes(self.cfg, b, side, side, self.generator, self.device)
                x = erase(x, boxes, self.cfg.erasing_value)
        return x

    def _state_dict(self) -> dict:
        if self._restore is not None:                  # restored but not run since: pass it on
            pipe_batch, pipe_seed, checkpoint = self._restore
        elif self._pipe is not None:
            pipe_batch, pipe_seed, checkpoint = self._pipe_batch, self._pipe_seed, self._pipe.checkpoint()
        else:
            pipe_batch, pipe_seed, checkpoint = 0, 0, None
        return {"seed": self.seed, "batches": self._batches,
                "pipe_batch": pipe_batch, "pipe_seed": pipe_seed, "checkpoint": checkpoint}

    def _load_state_dict(self, state: dict) -> None:
        self.seed = int(state.get("seed", self.seed))     # the saved stream, whatever was configured
        self._batches = int(state["batches"])
        self._pending = None                              # a prefetched batch belongs to the old stream
        self._pipe = None
        self._last_outputs = None
        self._pipe_batch = 0
        self._restore = (int(state["pipe_batch"]), int(state["pipe_seed"]), state["checkpoint"])
