"""AutoAugment's ops as batched kernels on uint8 (B, C, H, W) images, and torchvision's policy tables.

Each op (``shear_x`` ... ``invert``) applies to a whole batch with a per-sample magnitude (a number
or a (B,) tensor) and reproduces ``torchvision.transforms.v2.functional`` on uint8 input, called with
the arguments torchvision's ``AutoAugment`` passes.  They are the reference the dispatches of
:mod:`fastfm.augment.autoaugment` are tested against, and those dispatches are built from the same
kernels:

* geometric ops: per-sample inverse affine matrices as torchvision's ``_get_inverse_affine_matrix``
  (float64, cast to float32 as torchvision's Python floats are), one nearest, zero-fill
  ``grid_sample`` on a pixel-centred grid built like its ``_affine_grid``;
* pointwise ops: functions of the pixel value (``*_px``) plus per-image statistics, so the same code
  maps a whole image or builds its 256-entry lookup table, with the same bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- policy tables

OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
       "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
OP = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
POINTWISE = ("Brightness", "Contrast", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert")
SIGNED = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
          "Brightness", "Color", "Contrast", "Sharpness")
NUM_BINS = 10

# torchvision.transforms.AutoAugment._get_policies, verbatim: ((op, p, magnitude bin), (op, p, bin))
POLICIES: dict[str, tuple] = {
    "imagenet": (
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
        (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
        (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
        (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
        (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
        (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
        (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
        (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ),
    "cifar10": (
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)),
        (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
        (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
        (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
        (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)),
        (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
        (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
        (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)),
        (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)),
        (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
        (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
        (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
        (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ),
    "svhn": (
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)),
        (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)),
        (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)),
        (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)),
        (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)),
        (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)),
        (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)),
        (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)),
        (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ),
}


def magnitude_bins(height: int, width: int, num_bins: int = NUM_BINS) -> dict[str, torch.Tensor | None]:
    """torchvision's ``AutoAugment._augmentation_space``: op -> float32 magnitudes (num_bins,) or None.

    Translate bounds scale with the image (150/331 of its side); ``Posterize`` holds bit counts and
    ``Solarize`` thresholds in 0..255 (torchvision v1 convention).  Which ops are signed: ``SIGNED``.
    """
    return {
        "ShearX": torch.linspace(0.0, 0.3, num_bins),
        "ShearY": torch.linspace(0.0, 0.3, num_bins),
        "TranslateX": torch.linspace(0.0, 150.0 / 331.0 * width, num_bins),
        "TranslateY": torch.linspace(0.0, 150.0 / 331.0 * height, num_bins),
        "Rotate": torch.linspace(0.0, 30.0, num_bins),
        "Brightness": torch.linspace(0.0, 0.9, num_bins),
        "Color": torch.linspace(0.0, 0.9, num_bins),
        "Contrast": torch.linspace(0.0, 0.9, num_bins),
        "Sharpness": torch.linspace(0.0, 0.9, num_bins),
        "Posterize": (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4)).round().int()).float(),
        "Solarize": torch.linspace(255.0, 0.0, num_bins),
        "AutoContrast": None,
        "Equalize": None,
        "Invert": None,
    }


# ----------------------------------------------------------------------------- helpers

def _check_uint8(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 images (B, 1|3, H, W), got {images.dtype} {tuple(images.shape)}")


def f64(device) -> torch.dtype:
    """The dtype of the per-sample scalars torchvision computes as Python floats: float64, except
    on MPS, which has none."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _per_sample(value, n: int, device, dtype=torch.float32) -> torch.Tensor:
    """A Python number or a (B,) tensor -> (B,) tensor of ``dtype`` on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype).reshape(-1).expand(n)
    return torch.full((n,), float(value), device=device, dtype=dtype)


def _flat(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H*W) view."""
    return images.reshape(images.shape[0], images.shape[1], -1)


# ----------------------------------------------------------------------------- geometric ops

def inverse_affine_matrix(angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor,
                          shear_x: torch.Tensor, shear_y: torch.Tensor,
                          cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Batched torchvision ``_get_inverse_affine_matrix`` (scale 1, inverted) -> (B, 2, 3) float64.

    ``angle`` in degrees (torchvision's affine convention), shears in radians, ``center`` (cx, cy)
    in pixels relative to the image centre.  Computed in float64 like torchvision's Python floats.
    """
    rot = torch.deg2rad(angle)
    cos_sy = torch.cos(shear_y)
    tan_sx = torch.tan(shear_x)
    a = torch.cos(rot - shear_y) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - shear_y) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    cxt, cyt = cx + tx, cy + ty
    m2 = cx - m0 * cxt - m1 * cyt
    m5 = cy - m3 * cxt - m4 * cyt
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3)


def geometric_matrix(op: torch.Tensor, magnitude: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-sample inverse affine matrices (B, 2, 3) float64 for op ids ``op`` (B,) (see ``OP``).

    Arguments exactly as torchvision's AutoAugment passes them to ``F.affine`` / ``F.rotate``:
    shear = degrees(atan(m)) about the top-left corner (``center=[0, 0]``); translate = int(m) pixels
    (truncated) about the centre; rotate by m degrees about the centre (``F.rotate`` negates the angle
    it hands to the affine matrix).  Samples whose op is not geometric get the identity.
    """
    m = magnitude.to(f64(magnitude.device))
    zero = torch.zeros_like(m)
    is_sx, is_sy = op == OP["ShearX"], op == OP["ShearY"]
    is_tx, is_ty = op == OP["TranslateX"], op == OP["TranslateY"]
    is_rot = op == OP["Rotate"]
    shear_x = torch.where(is_sx, torch.atan(m), zero)
    shear_y = torch.where(is_sy, torch.atan(m), zero)
    tx = torch.where(is_tx, torch.trunc(m), zero)
    ty = torch.where(is_ty, torch.trunc(m), zero)
    angle = torch.where(is_rot, -torch.remainder(m, 360.0), zero)
    sheared = is_sx | is_sy
    cx = torch.where(sheared, torch.full_like(m, -0.5 * width), zero)
    cy = torch.where(sheared, torch.full_like(m, -0.5 * height), zero)
    return inverse_affine_matrix(angle, tx, ty, shear_x, shear_y, cx, cy)


def pixel_grid(height: int, width: int, device=None) -> torch.Tensor:
    """(H*W, 3) pixel-centred coordinates (x, y, 1), as torchvision's ``_affine_grid`` base grid."""
    base = torch.empty(height, width, 3, device=device)
    base[..., 0] = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device)
    base[..., 1] = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height,
                                  device=device).unsqueeze(-1)
    base[..., 2] = 1.0
    return base.view(height * width, 3)


def sampling_grid(theta: torch.Tensor, height: int, width: int, base: torch.Tensor) -> torch.Tensor:
    """Normalised ``grid_sample`` grids (B, H, W, 2) float32 of inverse matrices (B, 2, 3) float32
    on :func:`pixel_grid` ``base``, computed as torchvision's ``_affine_grid`` (see
    :func:`warp_nearest`)."""
    b, h, w = theta.shape[0], height, width
    # Normalised sampling coordinate = (pixel-centred x, y, 1) . (theta row / half size).  The base
    # grid is separable, so each coordinate is a (B, 1, W) term plus a (B, H, 1) term plus a
    # constant: broadcast adds instead of a (B, H*W, 3) x (B, 3, 2) batched matmul, summed in the
    # order torchvision's bmm does ((x*a + y*b) + c), which reproduces its float32 grid bit for bit.
    tx = (theta[:, 0] / (0.5 * w)).view(b, 3, 1, 1)
    ty = (theta[:, 1] / (0.5 * h)).view(b, 3, 1, 1)
    xs = base[:w, 0].view(1, 1, w)
    ys = base[::w, 1].view(1, h, 1)
    # One stack (not add(out=grid[..., k])): torch.compile cannot trace ops writing into
    # non-contiguous out= views, and the stacked grid holds the very same float32 values.
    return torch.stack((xs * tx[:, 0] + ys * tx[:, 1] + tx[:, 2],
                        xs * ty[:, 0] + ys * ty[:, 1] + ty[:, 2]), dim=-1)


def warp_nearest(images: torch.Tensor, theta: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """Warp uint8 (B, C, H, W) with per-sample inverse matrices (B, 2, 3): nearest, fill 0.

    The sampling grid is built like torchvision's ``_affine_grid`` (pixel-centred coordinates times
    theta, then normalised by half the size) so that nearest-neighbour rounding agrees with
    torchvision's ``affine``/``rotate`` except for coordinates that land within float rounding of a
    pixel boundary.  A few broadcast ops build all grids (:func:`sampling_grid`), one
    ``grid_sample`` warps the batch.  ``base``: :func:`pixel_grid` of the image size, if the caller
    keeps one.
    """
    _, _, h, w = images.shape
    dev = images.device
    theta = theta.to(device=dev, dtype=torch.float32)
    if base is None:
        base = pixel_grid(h, w, dev)
    grid = sampling_grid(theta, h, w, base)
    out = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_().to(torch.uint8)


def warp_index(theta: torch.Tensor, height: int, width: int, base: torch.Tensor) -> torch.Tensor:
    """The source pixel of every output pixel of :func:`warp_nearest` for inverse matrices
    (N, 2, 3): (N, H*W) int64 flat indices, ``H*W`` where the sample falls outside (fill 0).

    Found by warping an image whose pixels hold their own (index + 1) with the very same grid and
    ``grid_sample`` call, so ``x_flat_padded.gather(1, warp_index(...))`` (``x_flat_padded``: the
    flattened image plus one zero pixel) equals :func:`warp_nearest` bit for bit on the device the
    index was built on: nearest-neighbour selection does not depend on the pixel values."""
    n, hw = theta.shape[0], height * width
    dev = base.device
    ids = torch.arange(1, hw + 1, device=dev, dtype=torch.float32).view(1, 1, height, width)
    grid = sampling_grid(theta.to(device=dev, dtype=torch.float32), height, width, base)
    src = F.grid_sample(ids.expand(n, 1, height, width).contiguous(), grid, mode="nearest",
                        padding_mode="zeros", align_corners=False)
    src = src.round_().long().view(n, hw) - 1
    return torch.where(src < 0, torch.full_like(src, hw), src)


def _geometric(name: str, images: torch.Tensor, magnitude) -> torch.Tensor:
    _check_uint8(images)
    b, _, h, w = images.shape
    m = _per_sample(magnitude, b, images.device, f64(images.device))
    op = torch.full((b,), OP[name], device=images.device, dtype=torch.long)
    return warp_nearest(images, geometric_matrix(op, m, h, w))


def shear_x(images: torch.Tensor, magnitude) -> torch.Tensor:
    """torchvision AutoAugment ShearX: ``F.affine(shear=[degrees(atan(m)), 0], center=[0, 0])``."""
    return _geometric("ShearX", images, magnitude)


def shear_y(images: torch.Tensor, magnitude) -> torch.Tensor:
    """torchvision AutoAugment ShearY: ``F.affine(shear=[0, degrees(atan(m))], center=[0, 0])``."""
    return _geometric("ShearY", images, magnitude)


def translate_x(images: torch.Tensor, magnitude) -> torch.Tensor:
    """torchvision AutoAugment TranslateX: ``F.affine(translate=[int(m), 0])``."""
    return _geometric("TranslateX", images, magnitude)


def translate_y(images: torch.Tensor, magnitude) -> torch.Tensor:
    """torchvision AutoAugment TranslateY: ``F.affine(translate=[0, int(m)])``."""
    return _geometric("TranslateY", images, magnitude)


def rotate(images: torch.Tensor, magnitude) -> torch.Tensor:
    """torchvision AutoAugment Rotate: ``F.rotate(angle=m)`` (degrees, counter-clockwise)."""
    return _geometric("Rotate", images, magnitude)


# ----------------------------------------------------------------------------- pointwise ops
# Each ``*_px`` maps uint8 values (B, C, N) plus per-sample parameters to uint8 values of the same
# shape with torchvision's arithmetic: N is H*W to map an image, 256 (the values 0..255) to build its
# lookup table, with the same bits since the arithmetic per value is the same.

def brightness_px(v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # torchvision: image.mul(factor).clamp_(0, 255).to(uint8)  (float -> uint8 truncates)
    return v.float().mul(factor.view(-1, 1, 1)).clamp_(0, 255).to(torch.uint8)


# torchvision's alphas 0.587 / 0.114 as the float32 values its float32 kernel uses (Python floats
# holding them exactly, so no host->device tensor is made per call)
_GRAY_G = torch.tensor(0.587, dtype=torch.float32).item()
_GRAY_B = torch.tensor(0.114, dtype=torch.float32).item()


def _fma(a: torch.Tensor, b: torch.Tensor | float, c: torch.Tensor) -> torch.Tensor:
    """float32 ``a * b + c`` with one rounding, like torchvision's ``add_(x, alpha=...)`` CPU kernel
    (a fused multiply-add): the float64 product of two float32 values is exact, so evaluating in
    float64 and casting once reproduces it (on small per-image tensors or lookup tables only)."""
    hp = f64(a.device)
    b = b.to(hp) if isinstance(b, torch.Tensor) else b
    return (a.to(hp) * b + c.to(hp)).float()


def contrast_px(v: torch.Tensor, magnitude: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    # torchvision _blend(image, mean, 1 + m): image.mul(1 + m).add_(mean, alpha=1 - (1 + m) = -m)
    ratio = (1.0 + magnitude.to(f64(magnitude.device))).float().view(-1, 1, 1)
    return _fma(mean.view(-1, 1, 1), (-magnitude).view(-1, 1, 1), v.float().mul(ratio)) \
        .clamp_(0, 255).to(torch.uint8)


def posterize_px(v: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    # keep the top ``bits`` bits: mask = ((1 << bits) - 1) << (8 - bits) == (0xFF << (8 - bits)) & 0xFF
    keep = 8 - bits.to(torch.int32).clamp(0, 8)
    mask = torch.bitwise_left_shift(torch.full_like(keep, 0xFF), keep).bitwise_and_(0xFF).to(torch.uint8)
    return v.bitwise_and(mask.view(-1, 1, 1))


def solarize_px(v: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= threshold.view(-1, 1, 1), v.bitwise_not(), v)


def invert_px(v: torch.Tensor) -> torch.Tensor:
    return v.bitwise_not()


def autocontrast_px(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    # torchvision autocontrast_image; ``lo``/``hi`` are per (sample, channel) float (B, C, 1)
    eq = hi == lo
    inv_scale = (hi - lo).mul_(1.0 / 255)
    lo = torch.where(eq, torch.zeros_like(lo), lo)
    inv_scale = torch.where(eq, torch.ones_like(inv_scale), inv_scale)
    return v.float().sub(lo).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def _histogram(images: torch.Tensor) -> torch.Tensor:
    """Per (sample, channel) histogram of a uint8 batch: (B, C, 256) int32."""
    idx = _flat(images).long()
    hist = torch.zeros(idx.shape[:2] + (256,), dtype=torch.int32, device=idx.device)
    return hist.scatter_add_(-1, idx, torch.ones(1, 1, 1, dtype=torch.int32, device=idx.device)
                             .expand_as(idx))


def equalize_lut(hist: torch.Tensor, n_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision ``equalize_image`` (PIL's scheme) from a histogram: LUT (B, C, 256) and validity.

    Images whose non-maximal pixels are fewer than 255 (``step == 0``) are returned unchanged by
    torchvision; ``valid`` (B, C, 1) marks the others.
    """
    cum = hist.cumsum(-1)
    last = cum.argmax(-1, keepdim=True)                         # last non-empty bin
    step = torch.div(n_pixels - hist.gather(-1, last), 255, rounding_mode="floor")
    valid = step != 0
    lut = torch.empty(hist.shape, dtype=torch.uint8, device=hist.device)    # no cat: fill in place
    lut[..., 0] = 0
    lut[..., 1:] = torch.div(cum[..., :-1] + step // 2, step.clamp(min=1), rounding_mode="floor").clamp_(0, 255)
    return lut, valid


def minmax_from_hist(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest value present, per (sample, channel), as float (B, C, 1)."""
    present = (hist > 0).to(torch.uint8)
    lo = present.argmax(-1, keepdim=True)                        # first present value
    hi = 255 - present.flip(-1).argmax(-1, keepdim=True)        # last present value
    return lo.float(), hi.float()


def grayscale_mean(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean of the grayscale image (torchvision ``adjust_contrast``): (B,) float32."""
    if images.shape[1] == 3:
        gray = _rgb_to_gray_floor(images)
    else:
        gray = images.float()
    return gray.mean(dim=(-3, -2, -1))


def _rgb_to_gray_floor(images: torch.Tensor) -> torch.Tensor:
    # torchvision: r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114), then floor
    r, g, b = images.float().unbind(dim=1)
    gray = r * 0.2989
    gray = _fma(g, _GRAY_G, gray)
    gray = _fma(b, _GRAY_B, gray)
    return gray.floor_().unsqueeze(1)


def _apply_lut(images: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Per (sample, channel) lookup: images uint8 (B, C, H, W), lut uint8 (B, C or 1, 256)."""
    b, c = images.shape[:2]
    return lut.expand(b, c, 256).gather(-1, _flat(images).long()).view_as(images)


def brightness(images: torch.Tensor, factor) -> torch.Tensor:
    """``F.adjust_brightness(img, factor)`` per sample (AutoAugment passes 1 + m)."""
    _check_uint8(images)
    f = _per_sample(factor, images.shape[0], images.device, f64(images.device)).float()
    return brightness_px(_flat(images), f).view_as(images)


def contrast(images: torch.Tensor, factor) -> torch.Tensor:
    """``F.adjust_contrast(img, factor)`` per sample: blend with the image's grayscale mean."""
    _check_uint8(images)
    m = _magnitude_of(factor, images)
    return contrast_px(_flat(images), m, grayscale_mean(images)).view_as(images)


def posterize(images: torch.Tensor, bits) -> torch.Tensor:
    """``F.posterize(img, bits)`` per sample (bits in 0..8)."""
    _check_uint8(images)
    return posterize_px(_flat(images), _per_sample(bits, images.shape[0], images.device)).view_as(images)


def solarize(images: torch.Tensor, threshold) -> torch.Tensor:
    """``F.solarize(img, threshold)`` per sample: invert pixels >= threshold (0..255)."""
    _check_uint8(images)
    t = _per_sample(threshold, images.shape[0], images.device)
    return solarize_px(_flat(images), t).view_as(images)


def invert(images: torch.Tensor) -> torch.Tensor:
    """``F.invert(img)``: 255 - x."""
    _check_uint8(images)
    return images.bitwise_not()


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """``F.autocontrast(img)``: per image and channel, stretch [min, max] to [0, 255]."""
    _check_uint8(images)
    v = _flat(images)
    lo = v.amin(-1, keepdim=True).float()
    hi = v.amax(-1, keepdim=True).float()
    return autocontrast_px(v, lo, hi).view_as(images)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """``F.equalize(img)``: per image and channel histogram equalisation (PIL's LUT scheme)."""
    _check_uint8(images)
    lut, valid = equalize_lut(_histogram(images), images.shape[-1] * images.shape[-2])
    return torch.where(valid.unsqueeze(-1), _apply_lut(images, lut), images)


def _magnitude_of(factor, images: torch.Tensor) -> torch.Tensor:
    """Blend factor (1 + m) -> m as float32 (B,), subtracting in float64 as torchvision's Python does,
    so that ``1 - factor`` is exactly ``-m`` and ``factor`` rounds to float32 as torchvision's does."""
    return (_per_sample(factor, images.shape[0], images.device, f64(images.device)) - 1.0).float()


def _color(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # torchvision _blend(image, floor(gray), 1 + m) on 3 channels
    ratio = (1.0 + m.to(f64(m.device))).float().view(-1, 1, 1, 1)
    gray = _rgb_to_gray_floor(images)
    return _fma(gray, (-m).view(-1, 1, 1, 1), images.float().mul(ratio)).clamp_(0, 255).to(torch.uint8)


def color(images: torch.Tensor, factor) -> torch.Tensor:
    """``F.adjust_saturation(img, factor)`` per sample; on 1-channel images it is the identity (as PIL)."""
    _check_uint8(images)
    if images.shape[1] == 1:
        return images.clone()
    return _color(images, _magnitude_of(factor, images))


def sharpen(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Sharpness with per-sample magnitudes ``m`` (B,) float32 (factor 1 + m)."""
    h, w = images.shape[-2:]
    if h <= 2 or w <= 2:
        return images.clone()
    # torchvision: conv2d with [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 in float32, then round().
    # The exact value is S / 13 with S an integer (the 3x3 sum plus 4x the centre), whose fraction
    # k/13 is never 1/2 and stays >= 1/26 away from it, far above float32 error at <= 255: so the
    # rounded float convolution always equals round(S / 13) = floor((2S + 13) / 26), computed here
    # exactly in integers with shifted slices (a separable box sum: cheaper than a depthwise conv).
    xi = images.to(torch.int16)                          # 13 * 255 = 3315 fits comfortably
    rows = xi[..., :, :-2] + xi[..., :, 1:-1] + xi[..., :, 2:]
    s = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :] + 4 * xi[..., 1:-1, 1:-1]
    blurred = torch.div(2 * s + 13, 26, rounding_mode="floor").float()
    out = images.float()
    inner = out[..., 1:-1, 1:-1]
    # torchvision: view.add_(blurred - view, alpha=1 - factor), 1 - (1 + m) == -m, which its CPU
    # kernel evaluates as one fused multiply-add (a single rounding to float32).  In float64 the
    # product (integer <= 255 times a float32) and the sum are exact, so one cast reproduces it.
    hp = f64(images.device)
    inner.copy_(inner.to(hp) + (blurred - inner).to(hp) * (-m).to(hp).view(-1, 1, 1, 1))
    return out.clamp_(0, 255).to(torch.uint8)


def sharpness(images: torch.Tensor, factor) -> torch.Tensor:
    """``F.adjust_sharpness(img, factor)`` per sample: blend with torchvision's 3x3 smoothing
    (1s around, 5 in the middle, /13; rounded), border pixels untouched."""
    _check_uint8(images)
    return sharpen(images, _magnitude_of(factor, images))


