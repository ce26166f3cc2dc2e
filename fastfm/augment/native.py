"""The native backend: the whole :class:`~fastfm.augment.config.AugConfig` recipe in plain PyTorch
tensor ops on the batch's device (no extra dependency).

Every op is vectorised over the batch with per-sample random parameters and written so that nothing
reads a tensor value on the host: no ``.item()``, no ``bool(tensor)``, no boolean-mask indexing or
``nonzero`` (their output shapes depend on the data, which forces a device->host sync on CUDA), no
Python branch on tensor values, no per-sample Python loop.  Python branches only look at the config
and at shapes.  A step that is switched off draws no random numbers, so turning one op off does not
shift the random stream of the others.
"""

from __future__ import annotations

import math

import torch

from .autoaugment import BatchAutoAugment
from .base import Augmenter, check_batch, finish, normalise, one_hot, resize_bilinear
from .config import AugConfig
from .mix import mix_batch

ERASING_ATTEMPTS = 10  # torchvision RandomErasing.get_params tries 10 boxes before giving up


class NativeAugmenter(Augmenter):
    """Pure-PyTorch backend (name ``"native"``); see :mod:`fastfm.augment.base` for the contract.

    ``aug(images uint8 (B, 1, 28, 28), labels int64 (B,)) -> (x float32 (B, C, S, S), y float32 (B, K))``
    following the op order documented in :mod:`fastfm.augment.config`.  AutoAugment is
    :class:`~fastfm.augment.autoaugment.BatchAutoAugment` (one sub-policy per sample; its module
    docstring explains the vectorisation and its cost: about five full-batch passes per op slot).
    All randomness comes from one
    ``torch.Generator`` on ``device`` seeded with ``seed``; ``state_dict()`` holds its state, so a
    restored augmenter continues the stream bit for bit.
    """

    name = "native"

    def __init__(self, cfg: AugConfig, device: torch.device | str, seed: int,
                 mean: float, std: float):
        super().__init__(cfg, device, seed, mean, std)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(self.seed)
        self.autoaugment = (BatchAutoAugment(cfg.autoaugment, self.device)
                            if cfg.autoaugment != "none" else None)

    # ------------------------------------------------------------------ contract

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_batch(images, labels)
        self._check_device(images)
        cfg = self.cfg

        x = images                                         # uint8 (B, 1, H, W)
        if cfg.resize and cfg.resize != x.shape[-1]:
            with self.op_range("resize"):
                x = resize_bilinear(x.float(), cfg.resize)     # float, values in [0, 255]
                if self.autoaugment is not None:
                    # AutoAugment is defined on uint8 pixels (as torchvision on PIL/uint8 images):
                    # quantise once here; crop and flip below are pure index ops and commute with it.
                    x = x.round_().clamp_(0, 255).to(torch.uint8)
        with self.op_range("crop_flip"):
            x = self.crop_flip(x)
        if self.autoaugment is not None:
            with self.op_range("autoaugment"):
                x = self.autoaugment(x, self.gen)
        with self.op_range("normalise"):
            x = normalise(x, self.mean, self.std)
        if cfg.erasing_p > 0:
            with self.op_range("erasing"):
                x = self.random_erasing(x)
        y = one_hot(labels, cfg.num_classes)
        # CutMix/MixUp before channel repetition and memory format: they commute with both, and
        # mixing one channel is a third of the work of mixing three.
        with self.op_range("mix"):
            x, y = mix_batch(x, y, cfg, self.gen)
        with self.op_range("finish"):
            return finish(x, cfg), y

    def state_dict(self) -> dict:
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        # Generator states are CPU byte tensors even for CUDA generators; a checkpoint loaded with
        # map_location="cuda" may have moved it, so bring it back.
        self.gen.set_state(state["generator"].to("cpu", torch.uint8))

    # ------------------------------------------------------------------ steps

    def crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        """Random ``cfg.crop`` window (offsets uniform over 0..size-crop on both axes) and horizontal
        flip with probability ``cfg.flip_p``, per sample, as one gather.

        Per-sample row indices (B, crop) and column indices (B, crop), the latter reversed where the
        sample is flipped (``torch.where`` on the indices rather than on two image batches), index the
        batch in one advanced-indexing gather: no loop, no unfold, no data-dependent shape.
        """
        cfg = self.cfg
        b, _, h, w = x.shape
        crop = cfg.crop or h
        do_crop = crop < h
        do_flip = cfg.flip_p > 0
        if not (do_crop or do_flip):
            return x
        dev = x.device
        if do_crop:
            top = torch.randint(0, h - crop + 1, (b, 1), generator=self.gen, device=dev)
            left = torch.randint(0, w - crop + 1, (b, 1), generator=self.gen, device=dev)
        else:
            top = left = torch.zeros(b, 1, dtype=torch.long, device=dev)
        ar = torch.arange(crop, device=dev)
        cols = ar.expand(b, crop)
        if do_flip:
            flip = torch.rand(b, 1, generator=self.gen, device=dev) < cfg.flip_p
            cols = torch.where(flip, crop - 1 - ar, ar)
        rows = top + ar                                    # (B, crop)
        cols = left + cols                                 # (B, crop)
        bidx = torch.arange(b, device=dev).view(b, 1, 1)
        return x[bidx, 0, rows.unsqueeze(2), cols.unsqueeze(1)].unsqueeze(1)

    def random_erasing(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision ``RandomErasing`` per sample on the normalised float batch (B, C, H, W).

        ``get_params`` semantics: up to 10 attempts of area ``U(scale) * H * W`` and aspect ratio
        ``exp(U(log ratio))``, ``h = round(sqrt(area * r))``, ``w = round(sqrt(area / r))``; the first
        attempt with ``h < H and w < W`` wins and its top-left corner is uniform; if none fits the
        sample is left alone.  Vectorised: all 10 attempts are drawn for every sample at once, the
        first valid one is found with ``argmax`` over the attempt axis, and the box becomes a mask by
        comparing row/column indices with its bounds.  Applied with probability ``erasing_p``.
        """
        cfg = self.cfg
        b, _, h, w = x.shape
        dev = x.device
        g = self.gen
        lo, hi = cfg.erasing_scale
        log_r0, log_r1 = math.log(cfg.erasing_ratio[0]), math.log(cfg.erasing_ratio[1])

        apply = torch.rand(b, generator=g, device=dev) < cfg.erasing_p
        area = (h * w) * (lo + (hi - lo) * torch.rand(b, ERASING_ATTEMPTS, generator=g, device=dev))
        ratio = torch.exp(log_r0 + (log_r1 - log_r0)
                          * torch.rand(b, ERASING_ATTEMPTS, generator=g, device=dev))
        eh = torch.sqrt(area * ratio).round().long()
        ew = torch.sqrt(area / ratio).round().long()
        valid = (eh < h) & (ew < w)
        first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)   # first valid attempt (0 if none)
        apply = apply & valid.any(dim=1)
        eh = eh.gather(1, first).squeeze(1)
        ew = ew.gather(1, first).squeeze(1)
        # top-left uniform over 0..H-h and 0..W-w (torch.randint(0, H - h + 1) in torchvision)
        top = (torch.rand(b, generator=g, device=dev) * (h - eh + 1)).floor().long()
        left = (torch.rand(b, generator=g, device=dev) * (w - ew + 1)).floor().long()
        top = torch.minimum(top, h - eh)                    # guard float rounding up to the bound
        left = torch.minimum(left, w - ew)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        mask = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
                & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1))
                & apply.view(b, 1, 1))
        return x.masked_fill(mask.unsqueeze(1), cfg.erasing_value)

    # ------------------------------------------------------------------ helpers

    def _check_device(self, images: torch.Tensor) -> None:
        """The generator lives on ``self.device``; batches must be there too (metadata check only)."""
        dev = images.device
        if dev.type != self.device.type or (self.device.index is not None and dev.index != self.device.index):
            raise ValueError(f"native augmenter was built for {self.device} but the batch is on {dev}")
