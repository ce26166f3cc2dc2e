"""The native backend: the whole :class:`~fastfm.config.AugConfig` recipe in plain PyTorch
tensor ops on the batch's device (no extra dependency).

Every op is vectorised over the batch with per-sample random parameters and written so that nothing
reads a tensor value on the host: no ``.item()``, no ``bool(tensor)``, no boolean-mask indexing or
``nonzero`` (their output shapes depend on the data, which forces a device->host sync on CUDA), no
Python branch on tensor values, no per-sample Python loop.  Python branches only look at the config
and at shapes.  A step that is switched off draws no random numbers, so turning one op off does not
shift the random stream of the others.  The shared steps -- the erasing boxes
(:mod:`fastfm.augment.erasing`) and CutMix/MixUp (:mod:`fastfm.augment.mix`, run by the base
class's tail) -- follow the same rules and draw from the same generator.

Draws and application are split: every draw depends on shapes and the config only, never on pixel
values, so all of them can be made first (:meth:`NativeAugmenter.draw`, in the stream's order:
crop/flip, AutoAugment, erasing, CutMix/MixUp) and the pixels then go through a pure function
(:meth:`NativeAugmenter.apply`), which ``torch.compile`` can trace (:mod:`fastfm.augment.compiled`).
An eager call and the two phases give the same bits from the same generator state.
"""

from __future__ import annotations

import torch

from .autoaugment import BatchAutoAugment
from .base import Augmenter, normalise, resize_bilinear
from ..config import AugConfig
from .erasing import draw_erasing_boxes, erase
from .mix import draw_mix


class NativeAugmenter(Augmenter):
    """Pure-PyTorch backend (name ``"native"``); see :mod:`fastfm.augment.base` for the contract.

    ``aug(images uint8 (B, 1, 28, 28), labels int64 (B,)) -> (x float32 (B, C, S, S), y float32 (B, K))``
    following the op order documented in :class:`fastfm.config.AugConfig`.  AutoAugment is
    :class:`~fastfm.augment.autoaugment.BatchAutoAugment` (one sub-policy per sample).  All randomness, CutMix/MixUp included,
    comes from one ``torch.Generator`` on ``device`` seeded with ``seed``; ``state_dict()`` holds its
    state, so a restored augmenter continues the stream bit for bit.
    """

    name = "native"

    def __init__(self, cfg: AugConfig, device: torch.device | str, seed: int,
                 mean: float, std: float):
        super().__init__(cfg, device, seed, mean, std)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self.autoaugment = (BatchAutoAugment(cfg.autoaugment, self.device)
                            if cfg.autoaugment != "none" else None)
        self._crop_tables: dict[tuple[int, int, int], torch.Tensor] = {}
        self._norm_table: torch.Tensor | None = None

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return self._apply_own(images, self._draw_own(b, h, w))

    def _sizes(self, h: int, w: int) -> tuple[int, int, int]:
        """(height, width) after resize, and the side after the crop, of (h, w) inputs."""
        rh, rw = (self.cfg.resize, self.cfg.resize) if self.cfg.resize else (h, w)
        return rh, rw, self.cfg.crop or rh

    def _draw_own(self, b: int, h: int, w: int) -> dict:
        """All draws of this backend's own ops for ``b`` images of h x w pixels, in stream order."""
        cfg, dev = self.cfg, self.device
        rh, rw, out = self._sizes(h, w)
        d = {"crop_flip": self._draw_crop_flip(b, rh, rw)}
        if self.autoaugment is not None:
            d["autoaugment"] = self.autoaugment.draw(b, self.generator)
        if cfg.erasing_p > 0:
            d["erasing"] = draw_erasing_boxes(cfg, b, out, out, self.generator, dev)
        return d

    def _apply_own(self, images: torch.Tensor, d: dict, dispatch: str | None = None) -> torch.Tensor:
        cfg = self.cfg
        x = images                                         # uint8 (B, 1, H, W)
        if cfg.resize and cfg.resize != x.shape[-1]:
            with self.op_range("resize"):
                x = resize_bilinear(x.float(), cfg.resize)     # float, values in [0, 255]
                if self.autoaugment is not None:
                    # AutoAugment is defined on uint8 pixels (as torchvision on PIL/uint8 images):
                    # quantise once here; crop and flip below are pure index ops and commute with it.
                    # No clamp needed: bilinear weights are non-negative and sum to 1 (to a few
                    # ulps), so the values stay within [0, 255] up to rounding and round into it.
                    x = x.round_().to(torch.uint8)
        with self.op_range("crop_flip"):
            x = self._crop_flip(x, *d["crop_flip"])
        if self.autoaugment is not None:
            with self.op_range("autoaugment"):
                x = self.autoaugment.apply(x, d["autoaugment"], dispatch)
        with self.op_range("normalise"):
            if x.dtype == torch.uint8:
                # 256 possible inputs: one lookup in the table of :func:`normalise` (same values)
                x = self._normalise_table()[x.long()]
            else:
                x = normalise(x, self.mean, self.std)
        if cfg.erasing_p > 0:
            with self.op_range("erasing"):
                x = erase(x, d["erasing"], cfg.erasing_value)
        return x

    def _normalise_table(self) -> torch.Tensor:
        """:func:`normalise` of the 256 uint8 values, on :attr:`device` (built once)."""
        if self._norm_table is None:
            values = torch.arange(256, dtype=torch.uint8, device=self.device)
            self._norm_table = normalise(values, self.mean, self.std)
        return self._norm_table

    def draw(self, b: int, h: int, w: int) -> dict:
        """Every random draw of one call on ``b`` images of h x w pixels (mixing included), in the
        order an eager call makes them; for :meth:`apply`."""
        d = self._draw_own(b, h, w)
        out = self._sizes(h, w)[2]
        d["mix"] = draw_mix(self.cfg, b, out, out, self.generator, self.device)
        return d

    def apply(self, images: torch.Tensor, labels: torch.Tensor, draws: dict,
              dispatch: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole recipe given :meth:`draw`'s draws: a pure function, no random draws and (with
        the masked AutoAugment dispatch) no host reads, so ``torch.compile(..., fullgraph=True)``
        traces it as one graph (tests/test_graph.py).  ``dispatch``: AutoAugment's, e.g. ``"masked"``
        to trace the CUDA path on CPU tensors."""
        return self._mix_and_finish(self._apply_own(images, draws, dispatch), labels, draws["mix"])

    def graph_call(self, images: torch.Tensor, labels: torch.Tensor,
                   apply=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``aug(images, labels)`` in two phases: the draws eagerly (explicit ``torch.Generator``
        objects cannot live inside a compiled graph), then ``apply`` (default :meth:`apply`; pass a
        ``torch.compile``-d one) on the pixels.  Same output bits and the same generator stream as
        ``aug(images, labels)`` for the same state, so seeding and resume are unchanged."""
        self.check_input(images, labels)
        draws = self.draw(images.shape[0], *images.shape[-2:])
        return (apply or self.apply)(images, labels, draws)

    def _state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def _load_state_dict(self, state: dict) -> None:
        # Generator states are CPU byte tensors even for CUDA generators; a checkpoint loaded with
        # map_location="cuda" may have moved it, so bring it back.
        self.generator.set_state(state["generator"].to("cpu", torch.uint8))

    def crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        """Random ``cfg.crop`` window (offsets uniform over 0..size-crop on both axes) and horizontal
        flip with probability ``cfg.flip_p``, per sample, as one gather (see :meth:`_crop_flip`)."""
        return self._crop_flip(x, *self._draw_crop_flip(x.shape[0], *x.shape[-2:]))

    def _draw_crop_flip(self, b: int, h: int, w: int):
        """(top, left) offsets (B, 1) long and the flip flags (B, 1) bool, or None for ops that are
        off (they draw nothing)."""
        cfg, dev = self.cfg, self.device
        crop = cfg.crop or h
        top = left = flip = None
        if crop < h:
            top = torch.randint(0, h - crop + 1, (b, 1), generator=self.generator, device=dev)
            left = torch.randint(0, w - crop + 1, (b, 1), generator=self.generator, device=dev)
        if cfg.flip_p > 0:
            flip = torch.rand(b, 1, generator=self.generator, device=dev) < cfg.flip_p
        return top, left, flip

    def _crop_flip(self, x: torch.Tensor, top, left, flip) -> torch.Tensor:
        """One ``gather`` of the flattened batch with each sample's flat source indices (B, crop*crop),
        looked up in a table built once per size (:meth:`_crop_flip_table`) by (top, left, flip):
        no loop, no unfold, no data-dependent shape.
        """
        b, c, h, w = x.shape
        if top is None and flip is None:
            return x
        crop = self.cfg.crop or h
        table = self._crop_flip_table(h, w, crop)        # (tops, lefts, flips, crop*crop)
        if top is None:
            top = left = 0
        idx = table[top, left, flip.long() if flip is not None else 0]   # (B, 1, crop*crop)
        if c != 1:
            idx = idx.expand(b, c, crop * crop)
        return x.reshape(b, c, h * w).gather(2, idx).view(b, c, crop, crop)

    def _crop_flip_table(self, h: int, w: int, crop: int) -> torch.Tensor:
        """(h - crop + 1, w - crop + 1, 2, crop * crop) int64, built once per (h, w, crop): the flat
        source pixel of every output pixel for each top, left and flip (1: columns reversed)."""
        key = (h, w, crop)
        table = self._crop_tables.get(key)
        if table is None:
            dev = self.device
            ar = torch.arange(crop, device=dev)
            rows = torch.arange(h - crop + 1, device=dev).view(-1, 1, 1, 1, 1) + ar.view(1, 1, 1, crop, 1)
            cols = torch.stack((ar, crop - 1 - ar))                                   # (2, crop)
            cols = torch.arange(w - crop + 1, device=dev).view(1, -1, 1, 1, 1) + cols.view(1, 1, 2, 1, crop)
            table = (rows * w + cols).view(h - crop + 1, w - crop + 1, 2, crop * crop)
            self._crop_tables[key] = table
        return table
