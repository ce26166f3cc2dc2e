"""The native backend: the whole :class:`~fastfm.augment.config.AugConfig` recipe in plain PyTorch
tensor ops on the batch's device (no extra dependency).

Every op is vectorised over the batch with per-sample random parameters and written so that nothing
reads a tensor value on the host: no ``.item()``, no ``bool(tensor)``, no boolean-mask indexing or
``nonzero`` (their output shapes depend on the data, which forces a device->host sync on CUDA), no
Python branch on tensor values, no per-sample Python loop.  Python branches only look at the config
and at shapes.  A step that is switched off draws no random numbers, so turning one op off does not
shift the random stream of the others.  The shared steps -- the erasing boxes
(:mod:`fastfm.augment.erasing`) and CutMix/MixUp (:mod:`fastfm.augment.mix`, run by
:meth:`~fastfm.augment.base.Augmenter.__call__`) -- follow the same rules and draw from the same
generator.
"""

from __future__ import annotations

import torch

from .autoaugment import BatchAutoAugment
from .base import Augmenter, normalise, resize_bilinear
from .config import AugConfig
from .erasing import draw_erasing_boxes, erase


class NativeAugmenter(Augmenter):
    """Pure-PyTorch backend (name ``"native"``); see :mod:`fastfm.augment.base` for the contract.

    ``aug(images uint8 (B, 1, 28, 28), labels int64 (B,)) -> (x float32 (B, C, S, S), y float32 (B, K))``
    following the op order documented in :mod:`fastfm.augment.config`.  AutoAugment is
    :class:`~fastfm.augment.autoaugment.BatchAutoAugment` (one sub-policy per sample; its module
    docstring explains the vectorisation and its cost: about five full-batch passes per op slot).
    All randomness, CutMix/MixUp included, comes from one ``torch.Generator`` on ``device`` seeded
    with ``seed``; ``state_dict()`` holds its state, so a restored augmenter continues the stream
    bit for bit.
    """

    name = "native"

    def __init__(self, cfg: AugConfig, device: torch.device | str, seed: int,
                 mean: float, std: float):
        super().__init__(cfg, device, seed, mean, std)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self.autoaugment = (BatchAutoAugment(cfg.autoaugment, self.device)
                            if cfg.autoaugment != "none" else None)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
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
                x = self.autoaugment(x, self.generator)
        with self.op_range("normalise"):
            x = normalise(x, self.mean, self.std)
        if cfg.erasing_p > 0:
            with self.op_range("erasing"):
                b, _, h, w = x.shape
                boxes = draw_erasing_boxes(cfg, b, h, w, self.generator, x.device)
                x = erase(x, boxes, cfg.erasing_value)
        return x

    def _state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def _load_state_dict(self, state: dict) -> None:
        # Generator states are CPU byte tensors even for CUDA generators; a checkpoint loaded with
        # map_location="cuda" may have moved it, so bring it back.
        self.generator.set_state(state["generator"].to("cpu", torch.uint8))

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
            top = torch.randint(0, h - crop + 1, (b, 1), generator=self.generator, device=dev)
            left = torch.randint(0, w - crop + 1, (b, 1), generator=self.generator, device=dev)
        else:
            top = left = torch.zeros(b, 1, dtype=torch.long, device=dev)
        ar = torch.arange(crop, device=dev)
        cols = ar.expand(b, crop)
        if do_flip:
            flip = torch.rand(b, 1, generator=self.generator, device=dev) < cfg.flip_p
            cols = torch.where(flip, crop - 1 - ar, ar)
        rows = top + ar                                    # (B, crop)
        cols = left + cols                                 # (B, crop)
        bidx = torch.arange(b, device=dev).view(b, 1, 1)
        return x[bidx, 0, rows.unsqueeze(2), cols.unsqueeze(1)].unsqueeze(1)
