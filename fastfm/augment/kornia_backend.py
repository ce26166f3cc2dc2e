"""Kornia backend: the recipe built from ``kornia.augmentation`` modules, on the batch's device.

Imported only when ``--aug.backend kornia`` is chosen.  Written against Kornia 0.9.

Ops and order (config.py): resize -> crop -> flip -> AutoAugment -> normalise -> erasing ->
channels -> CutMix/MixUp.  An op that is off in the config is not run (and draws nothing).

* resize: :func:`fastfm.augment.base.resize_bilinear` (torch; Kornia's ``Resize`` computes the same
  bilinear, ``align_corners=False`` kernel -- using the shared function keeps training and the test
  transform equal).
* crop: ``K.RandomCrop`` draws the offsets (uniform over every integer offset, as torchvision); the
  window is cut with one vectorised gather here instead of Kornia's ``cropping_mode="slice"``, which
  slices the batch sample by sample in Python (``crop_by_indices``: 512 slices + ``cat``), and
  instead of ``"resample"``, a bilinear warp that is ~20x slower on this CPU and not bit-exact.
* flip: ``K.RandomHorizontalFlip(p=flip_p)`` (vectorised: flips all rows, blends by the gate).
* AutoAugment: Kornia's ``kornia.augmentation.auto.AutoAugment(policy)`` draws *one* sub-policy per
  call for the whole batch.  Here it is per sample: a sub-policy index is drawn per sample, the batch
  is permuted so that each sub-policy's samples are contiguous (the permutation is computed on the
  CPU and copied to the device once, so there is no host-device sync), and each of Kornia's 25
  sub-policy modules (``PolicySequential``, the children of ``AutoAugment``) runs once on its group;
  the group results are scattered back.  Kornia's op modules draw their gate (probability) and
  magnitude per row, so probabilities and magnitudes are per sample too.  Cost: a Python loop over
  the (at most 25) sub-policies, ~2 Kornia ops each, i.e. ~50 Kornia op calls (each a handful of
  kernels on its group) plus their parameter draws per batch -- not a loop over samples.  Pixels are scaled to
  [0, 1] floats for Kornia and back to 0..255 (not re-quantised to uint8 between ops).
  Sub-policies with ``color`` (Kornia's ``RandomSaturation`` needs 3 channels) run on the grey
  channel repeated to RGB and keep channel 0 (saturation of a grey image is the identity).
  Kornia's AutoAugment differs from torchvision's (``torchvision.transforms.AutoAugment``) in its
  magnitudes, which this backend keeps (it is the *Kornia* backend): a magnitude bin selects the
  interval [m_k, m_k+1] of an 11-point scale and the value is drawn uniformly in it.  For the
  geometric ops that scale is *signed* and there is no random sign: ``rotate`` bin 9 is +24..+30
  degrees and bin 2 is -18..-12 (torchvision: exactly 30 / 6.7 degrees with a random sign);
  ``translate`` is a fraction of the size (bin 9: +40..+50 %; torchvision: ±45 % at most, whole
  pixels); ``shear`` fraction x 180 is used as degrees (bin 9: 43..54 degrees; torchvision:
  atan(0.3) = 16.7 degrees at most).  ``posterize`` and ``solarize`` run the other way (Kornia bin 8
  keeps ~7 bits where torchvision keeps 4; solarize bin 2 thresholds at 0.2..0.3 where torchvision
  thresholds at 198/255); ``brightness`` is additive (torchvision: multiplicative); ``contrast``,
  ``sharpness`` and ``color`` factors come from 0.1..1.9 in bins without a random sign; geometric
  ops are bilinear with zero fill (torchvision: nearest).  The policy *tables* are torchvision's
  (checked identical for cifar10/imagenet/svhn).
* normalise: :func:`fastfm.augment.base.normalise`.
* erasing: ``K.RandomErasing`` applies the box on the normalised tensor (vectorised: a mask and a
  ``where``); the boxes come from the draw every backend shares,
  :func:`fastfm.augment.erasing.draw_erasing_boxes` (torchvision's ``RandomErasing.get_params``,
  vectorised), fill ``erasing_value``.  Kornia's own generator differs from torchvision (ratio
  uniform on [lo, 1] or [1, hi] with probability 1/2 each -- mean log-ratio +0.11 instead of 0 for
  (0.3, 3.3) --, boxes clamped to the image instead of redrawn, fill restricted to 0..1), so it is
  not used.
* CutMix/MixUp, channel repetition and memory format: the base class
  (:meth:`fastfm.augment.base.Augmenter.__call__`), as for every backend.

Random numbers.  Kornia draws all its parameters from torch's *global* CPU generator (on the CPU,
then copies them to the batch's device).  To make this backend reproducible, resumable and
invisible to the caller's random stream, every call runs inside :func:`torch.random.fork_rng`
(CPU, plus the augmenter's CUDA device if any) with the generator seeded from ``(seed, batch
index)``; the per-sample sub-policy indices and the erasing boxes come from the same forked stream,
CutMix/MixUp from :attr:`~fastfm.augment.base.Augmenter.generator` on the device, re-seeded from
``(seed, batch index)``.  The backend's state is just the seed and the batch counter, so a resumed
run continues bit-exactly, and the caller's global RNG state is the same after a call as before it.

Cost of Kornia's CPU-side parameter drawing.  With ``op_ranges`` on, every parameter draw (Kornia's
``forward_parameters`` of the crop, flip and 25 sub-policy modules, the per-sample sub-policy and
erasing draws) runs in the profiler range ``aug.params``, nested in the range of its op
(``throughput.py --trace``).  Host time of those draws, measured on the 2-core development CPU
(no GPU), batch 512, default recipe (cifar10 AutoAugment, erasing 0.5, CutMix 0.5): about 3 ms
of parameter drawing out of ~30 ms for the whole call (~10 %); the rest is Kornia's image work,
mostly the AutoAugment ops (~25 ms: ~50 op calls per batch, each on its sub-policy's group).  On a
GPU the draws stay on the CPU and cost the same host time while the image work shrinks, so there
the ~3 ms of draws plus the ~50 op launches per batch become the bulk of the host time.
"""

from __future__ import annotations

import contextlib

import kornia  # noqa: F401  (first Kornia import: a missing Kornia fails here)
import kornia.augmentation as K
import torch
from kornia.augmentation.auto import AutoAugment
from kornia.augmentation.auto.operations import Saturate

from .base import Augmenter, derive_seed, normalise, resize_bilinear
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


class KorniaAugmenter(Augmenter):
    """AugConfig on Kornia modules; see the module docstring."""

    name = "kornia"

    def __init__(self, cfg: AugConfig, device, seed: int, mean: float, std: float):
        super().__init__(cfg, device, seed, mean, std)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        size = cfg.resize or 28
        self._crop = (K.RandomCrop((cfg.crop, cfg.crop), p=1.0)
                      if cfg.crop and cfg.crop != size else None)
        self._flip = K.RandomHorizontalFlip(p=cfg.flip_p) if cfg.flip_p > 0 else None
        self._autoaugment = (PerSampleAutoAugment(cfg.autoaugment, self.op_range).to(self.device)
                             if cfg.autoaugment != "none" else None)
        # p=1: Kornia's own coin and box draw are never used; every sample gets the box of the
        # shared draw (0 x 0, i.e. nothing erased, where that draw says no).
        self._erase = K.RandomErasing(p=1.0) if cfg.erasing_p > 0 else None
        self.generator = torch.Generator(device=self.device)
        self._batches = 0

    def _draw(self, module, shape):
        """Kornia's parameter draw of ``module`` for a batch of ``shape``, in the "params" range."""
        with self.op_range("params"):
            return module.forward_parameters(shape)

    def _fork_devices(self) -> list[int]:
        return [self.device.index] if self.device.type == "cuda" else []

    def _seed_globals(self, seed: int) -> None:
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.default_generators[self.device.index].manual_seed(seed)

    def _augment(self, images: torch.Tensor) -> torch.Tensor:
        """resize -> crop -> flip -> AutoAugment -> normalise -> erasing, (B, 1, S, S) float32, with
        torch's global RNGs forked and seeded for this batch (see the module docstring)."""
        index = self._batches
        self.generator.manual_seed(derive_seed(self.seed, 0x313C, index))     # CutMix/MixUp
        self._batches += 1
        with torch.random.fork_rng(devices=self._fork_devices()):
            self._seed_globals(derive_seed(self.seed, 0xC0A1, index))
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

    def _state_dict(self) -> dict:
        return {"seed": self.seed, "batches": self._batches}

    def _load_state_dict(self, state: dict) -> None:
        self.seed = int(state.get("seed", self.seed))     # the saved stream, whatever was configured
        self._batches = int(state["batches"])
