"""The one augmentation specification shared by every backend (native, kornia, dali).

Order in which the ops run (every backend follows it; each op can be switched off):

1. ``resize``   28 -> 36 (bilinear, antialias off: upsampling).  Done first so that the crop below
   samples sub-pixel shifts of the garment, as the original recipe's ``Resize(36)`` did.
2. ``crop``     random 32x32 window of the 36x36 image (every offset 0..4 equally likely).
3. ``flip``     horizontal flip with probability ``flip_p``.
4. ``autoaugment``  one sub-policy per *sample* (torchvision's policy tables), on uint8 pixels:
   torchvision's AutoAugment works on uint8/PIL images, and its colour ops (posterize, solarize,
   equalize, ...) are defined on 0..255 integers, so it runs before conversion to float.  It runs
   after the crop because that is cheaper (32x32 instead of 36x36) and the geometric ops then act on
   the frame the network sees.
5. ``normalise`` to float32 with the training-set mean/std: (x/255 - mean) / std.
6. ``erasing``  torchvision ``RandomErasing`` semantics on the normalised tensor: with probability
   ``erasing_p`` one rectangle with area fraction in ``erasing_scale`` and aspect ratio (log-uniform)
   in ``erasing_ratio`` is filled with ``erasing_value`` (0 = the dataset mean after normalisation).
   After normalisation, as in torchvision, where RandomErasing follows ToTensor/Normalize.
7. ``channels`` 1 -> 3 by repetition when ``channels == 3`` (for ImageNet-style backbones).
8. ``cutmix`` / ``mixup`` on the whole batch, with per-sample partners: produces soft targets.
   Last, because they mix finished samples and their labels.
"""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("native", "kornia", "dali")
AUTOAUGMENT_POLICIES = ("none", "cifar10", "imagenet", "svhn")


@dataclass
class AugConfig:
    backend: str = "native"                # native | kornia | dali
    resize: int = 36                       # pixels; 0 = keep 28
    crop: int = 32                         # random crop size in pixels; 0 = no crop
    flip_p: float = 0.5                    # horizontal flip probability
    autoaugment: str = "cifar10"           # none | cifar10 | imagenet | svhn (torchvision policies)
    erasing_p: float = 0.5                 # RandomErasing probability (torchvision default 0.5)
    erasing_scale: tuple[float, float] = (0.02, 0.33)   # area fraction of the image
    erasing_ratio: tuple[float, float] = (0.3, 3.3)     # aspect ratio h/w, sampled log-uniformly
    erasing_value: float = 0.0             # fill, in normalised units (0 = dataset mean)
    cutmix_p: float = 0.5                  # probability that a batch sample gets a pasted box
    cutmix_alpha: float = 1.0              # lam ~ Beta(alpha, alpha); box sides sqrt(1 - lam) x image
    mixup_p: float = 0.0                   # probability of MixUp for a sample (instead of CutMix)
    mixup_alpha: float = 0.2
    channels: int = 1                      # 1 or 3 output channels
    channels_last: bool = True             # output memory format
    num_classes: int = 10

    def validate(self) -> None:
        """Raise ValueError naming the offending option."""
        def bad(name, why):
            raise ValueError(f"aug.{name}: {why}")

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
