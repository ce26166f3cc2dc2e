"""Kornia backend: the recipe built from ``kornia.augmentation`` modules, on the batch's device.

Imported only when ``--aug.backend kornia`` is chosen.  Written against Kornia 0.9.

Ops and order (:class:`fastfm.config.AugConfig`): resize -> crop -> flip -> AutoAugment -> normalise -> erasing; an op that
is off in the config is not run (and draws nothing).  CutMix/MixUp, channels and memory format
follow in the base class, as for every backend.

* resize: :func:`fastfm.augment.base.resize_bilinear` (Kornia's ``Resize`` computes the same
  kernel; the shared function keeps training and the test transform equal).
* crop: ``K.RandomCrop`` draws the offsets (uniform over every integer offset, as torchvision); the
  window is cut with one vectorised gather, because Kornia's ``cropping_mode="slice"`` slices the
  batch sample by sample in Python and ``"resample"`` is a bilinear warp, slow and not bit-exact.
* flip: ``K.RandomHorizontalFlip(p=flip_p)``.
* AutoAugment: Kornia's ``AutoAugment(policy)`` draws *one* sub-policy per call for the whole
  batch; here a sub-policy is drawn per sample, the batch is grouped by sub-policy (the permutation
  is computed on the CPU and copied once: no host-device sync) and each of Kornia's 25 sub-policy
  modules runs once on its group (a loop over sub-policies, not samples).  Kornia's ops draw their
  gate and magnitude per row, so those are per sample too.  Pixels are scaled to [0, 1] floats for
  Kornia and back (not re-quantised between ops).  Sub-policies with ``color`` (Kornia's
  ``RandomSaturation`` needs 3 channels) run on the grey channel repeated to RGB and keep channel 0
  (saturation of a grey image is the identity).  The policy *tables* are torchvision's; the
  magnitudes stay Kornia's (this is the *Kornia* backend), which differ from torchvision's: a bin
  selects an interval of an 11-point scale and the value is uniform in it; geometric scales are
  *signed* with no random sign (``rotate`` bin 9: +24..+30 degrees, bin 2: -18..-12), ``translate``
  is a fraction of the size, ``shear`` fraction x 180 is used as degrees; ``posterize`` and
  ``solarize`` run the other way; ``brightness`` is additive; ``contrast``, ``sharpness`` and
  ``color`` factors come from 0.1..1.9 without a random sign; geometric ops are bilinear with zero
  fill (torchvision: nearest).
* normalise: :func:`fastfm.augment.base.normalise`.
* erasing: ``K.RandomErasing`` fills the boxes of the draw every backend shares,
  :func:`fastfm.augment.erasing.draw_erasing_boxes`, with ``erasing_value``.  Kornia's own box
  generator is not used: its ratio distribution is skewed, it clamps boxes instead of redrawing them
  and it fills within 0..1 only.

Random numbers.  Kornia draws all its parameters from torch's *global* CPU generator.  To keep this
backend reproducible, resumable and invisible to the caller's random stream, every call runs inside
:func:`torch.random.fork_rng` (CPU, plus the augmenter's CUDA device) with the global generators
seeded from (seed, :data:`~fastfm.augment.base.KORNIA_STREAM`, batch index); the per-sample
sub-policies and the erasing boxes come from that forked stream, CutMix/MixUp from
:attr:`~fastfm.augment.base.Augmenter.generator` (:class:`~fastfm.augment.base.CounterSeeded`).

With ``op_ranges`` on, every parameter draw (Kornia's ``forward_parameters``, the per-sample
sub-policy and erasing draws) also runs in the range ``aug.params``, nested in its op's range: they
run on the CPU whatever the device, so on a GPU they and Kornia's many small launches are most of
the host time.
"""

from __future__ import annotations

import contextlib

import kornia  # noqa: F401  (first Kornia import: a missing Kornia fails here)
import kornia.augmentation as K
import torch
from kornia.augmentation.auto import AutoAugment
from kornia.augmentation.auto.operations import Saturate

from .base import KORNIA_STREAM, CounterSeeded, normalise, resize_bilinear
from ..config import AugConfig
from .erasing import draw_erasing_boxes


class PerSampleAutoAugment(torch.nn.Module):
    """Kornia's AutoAugment with one sub-policy drawn per sample (see the module docstring).

    Works on float images in [0, 1], (B, C, H, W), C = 1 or 3.  Random numbers: torch's global CPU
    generator (as Kornia), so the caller controls them (``KorniaAugmenter`` forks and seeds it).
    ``op_range``: ``op_range("params")`` gives the context every parameter draw runs in (the
    augmenter's :meth:`~fastfm.augment.base.Augmenter.op_range`; by default none).
    """

    def __init__(self, policy: str, op_range=None):
        super().__init__()
        self.policy = policy
        self.sub_policies = torch.nn.ModuleList(AutoAugment(policy).children())
        self.needs_rgb = [any(isinstance(op, Saturate) for op in sub.children())
                          for sub in self.sub_policies]
        self.op_range = op_range or (lambda name: contextlib.nullcontext())

    def draw(self, module, shape):
        """``module.forward_parameters(shape)``: Kornia's parameter draw, in the "params" range."""
        with self.op_range("params"):
            return module.forward_parameters(shape)

    def forward(self, x: torch.Tensor, choice: torch.Tensor | None = None) -> torch.Tensor:
        b, c = x.shape[:2]
        n = len(self.sub_policies)
        if choice is None:
            with self.op_range("params"):
                choice = torch.randint(n, (b,))              # CPU, global generator
        choice = choice.cpu()
        order = torch.argsort(choice, stable=True)
        counts = torch.bincount(choice, minlength=n).tolist()   # CPU: no device sync
        order_dev = order.to(x.device, non_blocking=True)
        grouped = x.index_select(0, order_dev)
        outs, start = [], 0
        for k, count in enumerate(counts):
            if count == 0:
                continue
            seg = grouped[start:start + count]
            start += count
            sub = self.sub_policies[k]
            if self.needs_rgb[k] and c == 1:
                seg = seg.expand(-1, 3, -1, -1).contiguous()
                outs.append(sub(seg, params=self.draw(sub, seg.shape))[:, :1])
            else:
                outs.append(sub(seg, params=self.draw(sub, seg.shape)))
        out = torch.empty_like(x)
        out.index_copy_(0, order_dev, torch.cat(outs))
        return out


class KorniaAugmenter(CounterSeeded):
    """AugConfig on Kornia modules; see the module docstring."""

    name = "kornia"

    def __init__(self, cfg: AugConfig, device, seed: int, mean: float, std: float):
        super().__init__(cfg, device, seed, mean, std)
        size = cfg.resize or 28
        self._crop = (K.RandomCrop((cfg.crop, cfg.crop), p=1.0)
                      if cfg.crop and cfg.crop != size else None)
        self._flip = K.RandomHorizontalFlip(p=cfg.flip_p) if cfg.flip_p > 0 else None
        self._autoaugment = (PerSampleAutoAugment(cfg.autoaugment, self.op_range).to(self.device)
                             if cfg.autoaugment != "none" else None)
        # p=1: Kornia's own coin and box draw are never used; every sample gets the box of the
        # shared draw (0 x 0, i.e. nothing erased, where that draw says no).
        self._erase = K.RandomErasing(p=1.0) if cfg.erasing_p > 0 else None

    def _draw(self, module, shape):
        """Kornia's parameter draw of ``module`` for a batch of ``shape``, in the "params" range."""
        with self.op_range("params"):
            return module.forward_parameters(shape)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """resize -> crop -> flip -> AutoAugment -> normalise -> erasing, (B, 1, S, S) float32, with
        torch's global RNGs forked and seeded for this batch (see the module docstring)."""
        index = self._next_batch()
        cuda = [self.device.index] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            seed = self.stream_seed(KORNIA_STREAM, index)
            torch.default_generator.manual_seed(seed)
            for i in cuda:
                torch.cuda.default_generators[i].manual_seed(seed)
            return self._ops(images)

    def _ops(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        x = images.float()
        if cfg.resize and cfg.resize != x.shape[-1]:
            with self.op_range("resize"):
                x = resize_bilinear(x, cfg.resize)
        if self._crop is not None:
            with self.op_range("crop"):
                x = self._crop_batch(x)
        if self._flip is not None:
            with self.op_range("flip"):
                x = self._flip(x, params=self._draw(self._flip, x.shape))
        if self._autoaugment is not None:
            with self.op_range("autoaugment"):
                x = self._autoaugment(x * (1.0 / 255.0)) * 255.0
        with self.op_range("normalise"):
            x = normalise(x, self.mean, self.std)
        if self._erase is not None:
            with self.op_range("erasing"):
                x = self._erase(x, params=self._erase_params(x.shape))
        return x

    def _erase_params(self, shape) -> dict:
        """The shared erasing draw (:func:`fastfm.augment.erasing.draw_erasing_boxes`, torchvision's
        ``get_params``) as parameters for ``K.RandomErasing``: a sample that is not erased gets a
        0 x 0 box.  Drawn on the CPU from the (forked) global generator, as Kornia draws all its
        parameters; Kornia copies the boxes to the batch's device."""
        b, _, height, width = shape
        with self.op_range("params"):
            apply, top, left, eh, ew = draw_erasing_boxes(self.cfg, b, height, width,
                                                          torch.default_generator, "cpu")
            keep = apply.float()
            return {"batch_prob": torch.ones(b), "heights": eh * keep, "widths": ew * keep,
                    "ys": top.float(), "xs": left.float(),
                    "values": torch.full((b,), float(self.cfg.erasing_value)),
                    "forward_input_shape": torch.tensor(shape, dtype=torch.long)}

    def _crop_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Kornia's RandomCrop offsets, cut with one gather (no per-sample slicing)."""
        b, c, h, w = x.shape
        size = self.cfg.crop
        src = self._draw(self._crop, x.shape)["src"]              # (B, 4, 2) x, y corners, CPU
        x0 = src[:, 0, 0].long()
        y0 = src[:, 0, 1].long()
        steps = torch.arange(size)
        rows = (y0[:, None] + steps).to(x.device, non_blocking=True)   # (B, size)
        cols = (x0[:, None] + steps).to(x.device, non_blocking=True)
        x = torch.gather(x, 2, rows.view(b, 1, size, 1).expand(b, c, size, w))
        return torch.gather(x, 3, cols.view(b, 1, 1, size).expand(b, c, size, size))
