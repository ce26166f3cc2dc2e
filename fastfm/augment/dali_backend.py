"""NVIDIA DALI backend: one DALI pipeline per run, fed batch by batch from the resident tensors.

Imported only when ``--aug.backend dali`` is chosen (``create_augmenter`` turns a missing
``nvidia-dali-cuda130`` into :class:`~fastfm.augment.BackendUnavailable`).  Written against DALI 2.4.

Data path
---------
* The uint8 batch (B, 1, 28, 28) is viewed as HWC samples (B, 28, 28, 1) -- free for one channel --
  and handed to ``fn.external_source`` with ``Pipeline.feed_input`` on the **same device**: on CUDA
  the torch tensor itself (``device="gpu"``, the pipeline's ``device_id`` = the augmenter's CUDA
  index, ordered on torch's current stream; no host round trip), otherwise a NumPy view of the CPU
  tensor (``device="cpu"``, ``device_id=None``).
* The pipeline output (float32 HWC, already normalised) is copied with ``feed_ndarray`` into a new
  torch tensor on the same device; on CUDA the outputs are collected with ``outputs(cuda_stream)``,
  bound to torch's current stream, and copied on it (no host sync).  (B, S, S, 1) permuted to
  (B, 1, S, S) is a channels_last view, so no transpose follows.
* Erasing runs in torch on that tensor (see :meth:`DaliAugmenter._augment` for why); CutMix/MixUp
  (DALI has none), channels and memory format follow in the base class, as for every backend.

Op order: :class:`fastfm.config.AugConfig`'s.  Erasing works on the normalised image, which is
what the pipeline returns, so running it in torch keeps the order.  An op that is off is not put
into the graph.

Random streams, seeding and resume
----------------------------------
* DALI's random operators (``fn.random.*``, and those inside ``auto_augment``) are seeded from the
  pipeline ``seed``, derived from (seed, :data:`~fastfm.augment.base.DALI_PIPELINE_STREAM`, batches
  done); the erasing boxes and CutMix/MixUp draw from
  :attr:`~fastfm.augment.base.Augmenter.generator`, re-seeded per batch
  (:class:`~fastfm.augment.base.CounterSeeded`).
* ``state_dict()`` holds the batch counter plus DALI's own checkpoint (``enable_checkpointing=True``,
  ``Pipeline.checkpoint()``: it restores the operators' RNG states; the external source is simply
  fed by us).  ``load_state_dict()`` rebuilds the pipeline from that checkpoint at the next call, so
  the next batch is bit-identical to the one an uninterrupted run would have produced.
* The pipeline is built lazily on the first call with ``max_batch_size`` = that batch size.  A
  smaller batch (the last, partial one) is fed as is (DALI takes a variable batch size up to the
  maximum), so nothing is rebuilt and no stream is reset.  A larger batch rebuilds the pipeline with
  a seed derived from (seed, batches done), which is deterministic as well.
* The same seed gives the same stream for this backend, not the same numbers as the native or
  Kornia backends (different generators).

Deviations from torchvision semantics (deliberate or forced by DALI)
--------------------------------------------------------------------
* resize: DALI's linear filter (``antialias=False``), the pixel-centre convention of
  ``F.interpolate(bilinear, align_corners=False)``; results agree to float rounding.  With
  AutoAugment on, the resize writes uint8 (rounded), because AutoAugment works on uint8 pixels (as
  torchvision's does); with AutoAugment off it writes float32 and nothing is quantised.
* crop: ``crop_pos_x/y`` drawn by ``fn.random.uniform(values=[k/d, k=0..d])`` (d = size - crop), so
  every integer offset is equally likely, as in torchvision (a continuous position would be rounded
  by ``fn.crop`` and give the two end offsets half the probability of the others).
* AutoAugment: ``apply_auto_augment`` (one sub-policy per *sample*, each op applied with its
  probability, magnitudes randomly negated per sample) with a policy built here from
  **torchvision's** tables and magnitudes (:func:`torchvision_policy`): 10 bins (DALI's stock
  policies use 11), translate up to ``150/331 * size`` px truncated to whole pixels, posterize 8..4
  bits kept, solarize threshold 255..0, fill 0 and nearest-neighbour warps (torchvision's defaults;
  DALI's are fill 128, bilinear).  The ops work on the grey channel directly instead of expanding to
  RGB and back: ``Color`` (saturation) is the identity on a grey image, as torchvision's
  ``adjust_saturation`` on 1 channel, and ``Contrast`` blends towards the image mean, as torchvision
  does for 1 channel.  ``Sharpness`` keeps the 1-pixel border, as torchvision/PIL do.  Remaining
  differences: DALI rounds where torchvision truncates when converting blended values back to uint8
  (brightness, contrast, sharpness, autocontrast: at most 1 grey level; every other op is bit-exact,
  ``tests/test_augment_dali.py::test_ops_match_torchvision``); DALI's shear matrix shears the other
  way for the same sign (the sign is random, so the distribution is the same); ``Equalize`` is
  DALI's ``fn.equalize``, OpenCV's formula (lut = round((cdf - cdf_min) * 255 / (N - cdf_min))),
  where torchvision follows PIL's (exclusive cumulative histogram over (N - count of the top level)
  / 255), which brightens the garment more.  A bit-exact PIL equalize from DALI ops (a one-hot
  histogram and lookup, 256 ops per pixel) is too slow on DALI's CPU backend, and one semantics on
  both devices is kept.

Where the time goes.  On a GPU the image work moves to the device, but the per-sample random draws
and the conditional split/merge of the AutoAugment graph still run on DALI's CPU threads, so the hot
path feeds each batch one iteration ahead (:meth:`DaliAugmenter.prefetch`) and that work overlaps
the training step (``prefetch_queue_depth=1``: one batch in flight).  Building the pipeline with
AutoAugment takes seconds: DALI's autograph rewrites the conditional graph of 25 sub-policies.
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

from .base import DALI_PIPELINE_STREAM, CounterSeeded
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


class DaliAugmenter(CounterSeeded):
    """AugConfig on an NVIDIA DALI pipeline; see the module docstring."""

    name = "dali"

    def __init__(self, cfg: AugConfig, device, seed: int, mean: float, std: float):
        super().__init__(cfg, device, seed, mean, std)
        self._device_id = self.device.index if self.device.type == "cuda" else None
        self._num_threads = max(1, min(4, os.cpu_count() or 1))
        self._pipe = None
        self._pipe_batch = 0         # max_batch_size of the pipeline
        self._pipe_seed = 0
        self._restore = None         # (pipe_batch, pipe_seed, checkpoint) waiting for the next call
        self._last_outputs = None    # keeps DALI's output buffers alive until the next call
        self._pending = None         # the images fed by prefetch(), not yet collected

    def _check_device(self) -> None:
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"the DALI backend runs on CPU or CUDA, not {self.device}")

    # -- pipeline management -----------------------------------------------------------------
    def _pipeline(self, batch: int):
        if self._restore is not None:
            pipe_batch, pipe_seed, checkpoint = self._restore
            self._restore = None
            if checkpoint is not None and batch <= pipe_batch:
                self._make_pipe(pipe_batch, pipe_seed, checkpoint)
        if self._pipe is None or batch > self._pipe_batch:
            self._make_pipe(batch, self.stream_seed(DALI_PIPELINE_STREAM, bits=31), None)
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
        # Erasing and CutMix/MixUp draw from the generator seeded per batch: DALI's checkpoint plus
        # the batch counter restore both streams.
        self._next_batch()
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
        return {**super()._state_dict(),
                "pipe_batch": pipe_batch, "pipe_seed": pipe_seed, "checkpoint": checkpoint}

    def _load_state_dict(self, state: dict) -> None:
        super()._load_state_dict(state)
        self._pending = None                              # a prefetched batch belongs to the old stream
        self._pipe = None
        self._last_outputs = None
        self._pipe_batch = 0
        self._restore = (int(state["pipe_batch"]), int(state["pipe_seed"]), state["checkpoint"])
