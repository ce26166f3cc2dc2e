"""torchvision's AutoAugment, batched: one sub-policy per *sample*, on uint8 (B, C, H, W) tensors.

Two layers:

* **Per-op kernels** (``shear_x`` ... ``invert``): each applies one op to a whole batch with a
  per-sample magnitude tensor (B,) and reproduces ``torchvision.transforms.v2.functional`` on uint8
  input (the kernels torchvision's ``AutoAugment`` calls, with the arguments it passes them).
  Geometric ops build per-sample inverse affine matrices exactly as torchvision's
  ``_get_inverse_affine_matrix`` (in float64, cast to float32 as torchvision's Python floats are)
  and sample with one ``grid_sample`` (nearest, zero fill) on a pixel-centred grid built like
  torchvision's ``_affine_grid``.  Pointwise colour ops are written as functions of the pixel value
  plus per-image statistics, so the very same code serves a full image or a 256-entry lookup table.
* **:class:`BatchAutoAugment`**: draws (sub-policy, apply-coins, signs) per sample and applies them.

How the per-sample policy is vectorised (and what it costs)
-----------------------------------------------------------
A sample runs exactly one op (or none) per slot, so for each of the two slots the batch is
partitioned by op, and every op group can be computed from the slot's input for the *whole* batch
and then selected per sample with ``torch.where`` (no boolean-mask indexing, whose output shape would
depend on the data and force a host sync).  Computing 14 ops on the whole batch per slot would be
wasteful, so ops are grouped by kind and each group costs one pass over the batch:

* geometric (ShearX/Y, TranslateX/Y, Rotate): one per-sample affine matrix (identity for samples of
  the slot that do something else) -> sampling grids from broadcast ops and **one**
  ``grid_sample`` per slot;
* pointwise (Brightness, Contrast, Posterize, Solarize, AutoContrast, Equalize, Invert, and Color on
  1-channel images, where it is the identity): on uint8 every one of them is a per-image map
  0..255 -> 0..255 (given per-image statistics: histogram, min/max, mean), so every sample gets a
  256-entry table and **one** ``gather`` applies it to every pixel.  Tables (and affine matrices)
  that depend only on (op, magnitude bin, sign) are precomputed once per image size and just
  indexed per sample; Contrast, AutoContrast and Equalize build (B, C, 256) tables from the
  statistics and are swapped in with ``torch.where`` (cheap: 256 entries vs. H*W pixels).
  Statistics come from one ``scatter_add`` histogram per slot (only when Equalize/AutoContrast are
  in the slot) and one mean (only for Contrast);
* Sharpness: one exact integer 3x3 box sum (shifted slices) and blend per slot (when the policy has
  it in that slot);
* Color on 3-channel images: one blend with the grayscale image (never happens in this project: the
  pipeline runs AutoAugment on 1-channel images and repeats channels afterwards).

So per slot about five full-batch passes (warp, histogram, lookup, blur, two selects) plus
(B, 256)-sized table work, instead of ~14 full-batch op evaluations; groups absent from a slot of
the chosen policy table are skipped statically (Python knowledge of the table, not of the data).

On 1-channel images (the pipeline's case) the masked dispatch goes further
(:meth:`BatchAutoAugment._slot_pixels`): both slots run on int64 pixel values (B, H*W); the warp is
one ``gather`` through a per-(op, bin, sign) source-index table (built once per size with the very
``grid_sample`` call of :func:`warp_nearest`, the identity for other ops); the candidate lookup
tables are stacked and each sample's is picked with one indexing op; Sharpness is one ``conv2d``
and a blend whose per-sample factor is 0 for other samples.  Every stage is the identity
for the samples of the others, so the stages simply chain: no full-batch ``torch.where``.  In
launches: about 107 small ATen ops per batch for cifar10 (both slots; it was ~320 with per-call
grids, masks and selects), whatever the batch size.  On a GPU at 32x32 that is launch-bound, but
asynchronous, since nothing reads a tensor value on the host, so it overlaps the training step.

That "masked" dispatch is what CUDA (and any accelerator) uses.  On the CPU a host sync is free (the
device *is* the host) while every full-batch pass costs real compute, so there the "grouped"
dispatch (:meth:`BatchAutoAugment.apply_slot_grouped`) is used instead: per slot the samples are
sorted by op group (geometric / pointwise / Sharpness / Color; one read of the group sizes), each
group is gathered, transformed by the same per-sample kernels and written back, so a sample pays for
at most one op per slot.  Same random draws, bit-identical output (tests/test_autoaugment_dispatch.py);
about 8x faster on a 2-core CPU at batch 512.
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


def _f64(device) -> torch.dtype:
    """float64 for the few per-sample scalars that torchvision computes as Python floats (cheap: B
    elements); MPS has no float64, so there it falls back to float32."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _per_sample(value, n: int, device, dtype=torch.float32) -> torch.Tensor:
    """A Python number or a (B,) tensor -> (B,) tensor of ``dtype`` on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype).reshape(-1).expand(n)
    return torch.full((n,), float(value), device=device, dtype=dtype)


def _flat(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H*W) view."""
    return images.reshape(images.shape[0], images.shape[1], -1)


def _values(images: torch.Tensor) -> torch.Tensor:
    """The 256 uint8 values as a (1, 1, 256) tensor: pointwise ops applied to it give lookup tables."""
    return torch.arange(256, device=images.device, dtype=torch.uint8).view(1, 1, 256)


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
    m = magnitude.to(_f64(magnitude.device))
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
    m = _per_sample(magnitude, b, images.device, _f64(images.device))
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
# Each ``_*_px`` maps uint8 values (B, C, N) plus per-sample parameters to uint8 values of the same
# shape, with torchvision's arithmetic.  N is H*W for a direct application, or 256 (``_values``) to
# build a lookup table, which gives bit-identical results because the arithmetic per value is the same.

def _brightness_px(v: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
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
    hp = _f64(a.device)
    b = b.to(hp) if isinstance(b, torch.Tensor) else b
    return (a.to(hp) * b + c.to(hp)).float()


def _contrast_px(v: torch.Tensor, magnitude: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    # torchvision _blend(image, mean, 1 + m): image.mul(1 + m).add_(mean, alpha=1 - (1 + m) = -m)
    ratio = (1.0 + magnitude.to(_f64(magnitude.device))).float().view(-1, 1, 1)
    return _fma(mean.view(-1, 1, 1), (-magnitude).view(-1, 1, 1), v.float().mul(ratio)) \
        .clamp_(0, 255).to(torch.uint8)


def _posterize_px(v: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    # keep the top ``bits`` bits: mask = ((1 << bits) - 1) << (8 - bits) == (0xFF << (8 - bits)) & 0xFF
    keep = 8 - bits.to(torch.int32).clamp(0, 8)
    mask = torch.bitwise_left_shift(torch.full_like(keep, 0xFF), keep).bitwise_and_(0xFF).to(torch.uint8)
    return v.bitwise_and(mask.view(-1, 1, 1))


def _solarize_px(v: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= threshold.view(-1, 1, 1), v.bitwise_not(), v)


def _invert_px(v: torch.Tensor) -> torch.Tensor:
    return v.bitwise_not()


def _autocontrast_px(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    # torchvision autocontrast_image; ``lo``/``hi`` are per (sample, channel) float (B, C, 1)
    eq = hi == lo
    inv_scale = (hi - lo).mul_(1.0 / 255)
    lo = torch.where(eq, torch.zeros_like(lo), lo)
    inv_scale = torch.where(eq, torch.ones_like(inv_scale), inv_scale)
    return v.float().sub(lo).div_(inv_scale).clamp_(0, 255).to(torch.uint8)


def _histogram(images: torch.Tensor) -> torch.Tensor:
    """Per (sample, channel) histogram of a uint8 batch: (B, C, 256) int32, one scatter_add."""
    return _histogram_of(_flat(images).long())


def _histogram_of(idx: torch.Tensor) -> torch.Tensor:
    """Histogram (B, C, 256) int32 of pixel values given as a long index tensor (B, C, N)."""
    hist = torch.zeros(idx.shape[:2] + (256,), dtype=torch.int32, device=idx.device)
    return hist.scatter_add_(-1, idx, torch.ones(1, 1, 1, dtype=torch.int32, device=idx.device)
                             .expand_as(idx))


def _equalize_lut(hist: torch.Tensor, n_pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def _minmax_from_hist(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest value present, per (sample, channel), as float (B, C, 1)."""
    present = (hist > 0).to(torch.uint8)
    lo = present.argmax(-1, keepdim=True)                        # first present value
    hi = 255 - present.flip(-1).argmax(-1, keepdim=True)        # last present value
    return lo.float(), hi.float()


def _grayscale_mean(images: torch.Tensor) -> torch.Tensor:
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
    f = _per_sample(factor, images.shape[0], images.device, _f64(images.device)).float()
    return _brightness_px(_flat(images), f).view_as(images)


def contrast(images: torch.Tensor, factor) -> torch.Tensor:
    """``F.adjust_contrast(img, factor)`` per sample: blend with the image's grayscale mean."""
    _check_uint8(images)
    m = _magnitude_of(factor, images)
    return _contrast_px(_flat(images), m, _grayscale_mean(images)).view_as(images)


def posterize(images: torch.Tensor, bits) -> torch.Tensor:
    """``F.posterize(img, bits)`` per sample (bits in 0..8)."""
    _check_uint8(images)
    return _posterize_px(_flat(images), _per_sample(bits, images.shape[0], images.device)).view_as(images)


def solarize(images: torch.Tensor, threshold) -> torch.Tensor:
    """``F.solarize(img, threshold)`` per sample: invert pixels >= threshold (0..255)."""
    _check_uint8(images)
    t = _per_sample(threshold, images.shape[0], images.device)
    return _solarize_px(_flat(images), t).view_as(images)


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
    return _autocontrast_px(v, lo, hi).view_as(images)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """``F.equalize(img)``: per image and channel histogram equalisation (PIL's LUT scheme)."""
    _check_uint8(images)
    lut, valid = _equalize_lut(_histogram(images), images.shape[-1] * images.shape[-2])
    return torch.where(valid.unsqueeze(-1), _apply_lut(images, lut), images)


def _magnitude_of(factor, images: torch.Tensor) -> torch.Tensor:
    """Blend factor (1 + m) -> m as float32 (B,), subtracting in float64 as torchvision's Python does,
    so that ``1 - factor`` is exactly ``-m`` and ``factor`` rounds to float32 as torchvision's does."""
    return (_per_sample(factor, images.shape[0], images.device, _f64(images.device)) - 1.0).float()


def _color(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # torchvision _blend(image, floor(gray), 1 + m) on 3 channels
    ratio = (1.0 + m.to(_f64(m.device))).float().view(-1, 1, 1, 1)
    gray = _rgb_to_gray_floor(images)
    return _fma(gray, (-m).view(-1, 1, 1, 1), images.float().mul(ratio)).clamp_(0, 255).to(torch.uint8)


def color(images: torch.Tensor, factor) -> torch.Tensor:
    """``F.adjust_saturation(img, factor)`` per sample; on 1-channel images it is the identity (as PIL)."""
    _check_uint8(images)
    if images.shape[1] == 1:
        return images.clone()
    return _color(images, _magnitude_of(factor, images))


def _sharpness(images: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
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
    hp = _f64(images.device)
    inner.copy_(inner.to(hp) + (blurred - inner).to(hp) * (-m).to(hp).view(-1, 1, 1, 1))
    return out.clamp_(0, 255).to(torch.uint8)


def sharpness(images: torch.Tensor, factor) -> torch.Tensor:
    """``F.adjust_sharpness(img, factor)`` per sample: blend with torchvision's 3x3 smoothing
    (1s around, 5 in the middle, /13; rounded), border pixels untouched."""
    _check_uint8(images)
    return _sharpness(images, _magnitude_of(factor, images))


# ----------------------------------------------------------------------------- the policy


class BatchAutoAugment:
    """torchvision AutoAugment with an independent sub-policy per sample of a uint8 batch.

    ``aa(images, generator) -> images``: images uint8 (B, C, H, W) (C = 1 or 3) on the generator's
    device; per sample it draws a sub-policy uniformly, for each of its two ops a coin that applies
    the op with the op's probability (``u <= p``, as torchvision), and a sign (negative with
    probability 1/2) for signed ops, then applies the ops in order.  See the module docstring for how
    this is vectorised; no per-sample Python.

    ``dispatch``: ``"masked"`` (every op group on the whole batch, per-sample ``torch.where``; no host
    synchronisation), ``"grouped"`` (each op only on the samples that drew it; reads group sizes on
    the host) or ``"auto"`` (default: grouped on CPU tensors, masked elsewhere).  Both consume the
    generator identically and give bit-identical results.

    Everything that depends only on (op, magnitude bin, sign) -- the inverse affine matrix of a
    geometric op, the lookup table of Brightness/Posterize/Solarize/Invert -- is computed once per
    image size on the host (float64, as torchvision's Python floats) and kept on the device as
    tables, so a batch only *gathers* its per-sample matrices and tables: one indexing op instead of
    a few dozen tiny per-sample kernels.
    """

    DISPATCHES = ("auto", "masked", "grouped")

    def __init__(self, policy: str, device: torch.device | str, dispatch: str = "auto"):
        if policy not in POLICIES:
            raise ValueError(f"unknown AutoAugment policy {policy!r}; one of {', '.join(POLICIES)}")
        if dispatch not in self.DISPATCHES:
            raise ValueError(f"unknown dispatch {dispatch!r}; one of {', '.join(self.DISPATCHES)}")
        self.policy = policy
        self.dispatch = dispatch
        self.device = torch.device(device)
        table = POLICIES[policy]
        self.num_policies = len(table)
        self.op = torch.tensor([[OP[o[0]] for o in sub] for sub in table], device=self.device)
        self.prob = torch.tensor([[o[1] for o in sub] for sub in table], device=self.device)
        self.bins = torch.tensor([[o[2] if o[2] is not None else 0 for o in sub] for sub in table],
                                 device=self.device)
        self.signed = torch.tensor([name in SIGNED for name in OPS], device=self.device)
        self.is_geometric = torch.tensor([name in GEOMETRIC for name in OPS], device=self.device)
        self._signed_long = self.signed.long()
        self._fast: dict = {}          # masked dispatch, 1 channel: per-size device tables (``fast_tables``)
        self._aranges: dict = {}       # per batch size: arange(B), the sharpness kernel
        # Ops that can occur in each slot: static knowledge used to skip whole groups.
        self.slot_ops = [frozenset(sub[s][0] for sub in table) for s in range(2)]
        self._tables: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        # Grouped dispatch: op id -> group key (see ``_GROUPS``), for 1- and 3-channel images (Color
        # is the identity on 1 channel).  Keys are ordered so that the pointwise groups are adjacent.
        key = [_GROUP_OF[name] for name in OPS]
        self._group_key = {3: torch.tensor(key, device=self.device)}
        key[OP["Color"]] = _GROUPS.index("identity")
        self._group_key[1] = torch.tensor(key, device=self.device)

    # ------------------------------------------------------------------ static tables

    def tables(self, height: int, width: int) -> dict[str, torch.Tensor]:
        """Device tables for one image size, built once (one host->device copy each):

        * ``mag``   (ops, bins) float32: torchvision's magnitudes (0 for magnitude-free ops);
        * ``theta`` (ops, bins, 2 signs, 2, 3) float32: inverse affine matrices (identity unless
          geometric);
        * ``lut``   (ops, bins, 2 signs, 256) uint8: lookup tables of the ops that need no image
          statistics (identity for all other ops);
        * ``grid``  (H*W, 3) float32: the pixel-centred base grid of the warps.
        """
        key = (height, width)
        if key not in self._tables:
            self._tables[key] = {k: v.to(self.device) for k, v in _static_tables(height, width).items()}
        return self._tables[key]

    def magnitude(self, op: torch.Tensor, bins: torch.Tensor, negative: torch.Tensor,
                  height: int, width: int) -> torch.Tensor:
        """Signed float32 magnitudes of (op, bin, negative) index tensors (any common shape)."""
        mag = self.tables(height, width)["mag"][op, bins]
        return torch.where(negative.bool(), -mag, mag)

    # ------------------------------------------------------------------ draws and application

    def draw(self, n: int, generator: torch.Generator):
        """Per sample and slot: op ids (n, 2) long (0 = Identity where the coin said no), magnitude
        bins (n, 2) long, and negative (n, 2) long (1 = negated; only ever for signed ops)."""
        dev = self.device
        pid = torch.randint(0, self.num_policies, (n,), generator=generator, device=dev)
        coin = torch.rand(n, 2, generator=generator, device=dev)
        negative = torch.randint(0, 2, (n, 2), generator=generator, device=dev) == 0
        op = self.op[pid] * (coin <= self.prob[pid])        # (n, 2); 0 (Identity) where the coin said no
        negative = negative * self._signed_long[op]         # bool * 0/1 long: only signed ops negate
        return op, self.bins[pid], negative

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        _check_uint8(images)
        return self.apply(images, self.draw(images.shape[0], generator))

    def apply(self, images: torch.Tensor, draws: tuple[torch.Tensor, ...],
              dispatch: str | None = None) -> torch.Tensor:
        """Apply :meth:`draw`'s ``(op, bins, negative)`` to uint8 ``images``: no random draws, so the
        masked dispatch is a pure function of its inputs that ``torch.compile`` traces as one graph
        (explicit generators are not traceable: they stay in :meth:`draw`, run eagerly).
        ``dispatch``: overrides the augmenter's (``"masked"`` to trace it on CPU tensors)."""
        op, bins, negative = draws
        dispatch = dispatch or self.dispatch
        # Both strategies consume the generator identically (everything is drawn above) and give
        # bit-identical results; they differ only in cost.  The masked one computes every op group
        # on the whole batch and selects with ``torch.where``: no tensor value is read on the host,
        # so on CUDA the launches stay asynchronous (a host sync per slot would stall the queue).
        # On the CPU the "device" is the host, so reading group sizes costs nothing, and the grouped
        # one runs each op only on the samples that drew it (~1 op per sample per slot instead of
        # ~5 full-batch passes).
        grouped = dispatch == "grouped" or (dispatch == "auto" and images.device.type == "cpu")
        if not grouped and images.shape[1] == 1:
            # Masked, 1 channel (the pipeline's case): both slots on int64 pixel values (B, H*W),
            # converted once on the way in and once on the way out.
            b, _, h, w = images.shape
            pix = images.reshape(b, h * w).long()
            for s, (o, m, n) in enumerate(zip(op.unbind(1), bins.unbind(1), negative.unbind(1))):
                pix = self._slot_pixels(pix, o, m, n, self.slot_ops[s], h, w)
            return pix.to(torch.uint8).view(b, 1, h, w)
        apply = self.apply_slot_grouped if grouped else self.apply_slot
        x = images
        for s in range(2):
            x = apply(x, op[:, s], bins[:, s], negative[:, s], self.slot_ops[s])
        return x

    def apply_slot(self, x: torch.Tensor, op: torch.Tensor, bins: torch.Tensor, negative: torch.Tensor,
                   present: frozenset = frozenset(OPS)) -> torch.Tensor:
        """Apply one op per sample (``op``/``bins``/``negative``: (B,) indices) to uint8 ``x``.

        A sample runs one op, so: warp the geometric samples (identity matrix for the others), then
        apply every sample's lookup table to that result (identity table for non-pointwise samples,
        so warped samples pass through unchanged, and pointwise samples were not warped, so their
        statistics can be taken there), then swap in the sharpened samples.  The result equals
        applying each sample's op on its own.  ``present``: op names that may occur (groups with
        none of them are skipped).  1-channel images take the table-driven path
        (:meth:`_slot_pixels`, same bits); the code below serves 3-channel images.
        """
        b, c, h, w = x.shape
        if c == 1:
            pix = self._slot_pixels(x.reshape(b, h * w).long(), op, bins, negative, present, h, w)
            return pix.to(torch.uint8).view(b, c, h, w)
        t = self.tables(h, w)
        sel = lambda name: (op == OP[name]).view(b, 1, 1)
        needs_mag = present & {"Contrast", "Sharpness", "Color"}
        mag = self.magnitude(op, bins, negative, h, w) if needs_mag else None
        out = x

        if present & set(GEOMETRIC):
            warped = warp_nearest(x, t["theta"][op, bins, negative], t["grid"])
            out = torch.where(self.is_geometric[op].view(b, 1, 1, 1), warped, x)

        lut_ops = present & set(POINTWISE)
        if lut_ops:
            idx = _flat(out).long()
            lut = t["lut"][op, bins, negative].unsqueeze(1)     # (B, 1, 256)
            v = _values(x)
            if "Contrast" in lut_ops:
                lut = torch.where(sel("Contrast"), _contrast_px(v, mag, _grayscale_mean(out)), lut)
            if lut_ops & {"Equalize", "AutoContrast"}:
                hist = _histogram_of(idx)
                if "AutoContrast" in lut_ops:
                    lo, hi = _minmax_from_hist(hist)
                    lut = torch.where(sel("AutoContrast"), _autocontrast_px(v, lo, hi), lut)
                if "Equalize" in lut_ops:
                    eq_lut, valid = _equalize_lut(hist, h * w)
                    lut = torch.where(sel("Equalize") & valid, eq_lut, lut)
            out = lut.expand(b, c, 256).gather(-1, idx).view_as(x)

        if "Sharpness" in present:
            out = torch.where(sel("Sharpness").unsqueeze(-1), _sharpness(x, mag), out)

        if "Color" in present and c == 3:                  # identity on 1-channel images
            out = torch.where(sel("Color").unsqueeze(-1), _color(x, mag), out)
        return out


    # ------------------------------------------------------------------ masked dispatch, 1 channel

    def fast_tables(self, height: int, width: int) -> dict[str, torch.Tensor]:
        """Device tables of the 1-channel masked path (:meth:`_slot_pixels`), built once per image
        size from :meth:`tables` with the very kernels the per-op functions use, so every lookup
        holds exactly what those kernels compute.  Per (op, bin, sign), N = H*W:

        * ``warp``  (N,) int64: source pixel of each output pixel (:func:`warp_index`; ``N`` = fill
          0; the identity for non-geometric ops);
        * ``lutf``  (256,) float32: the static lookup table (``tables()["lut"]``) as floats;
        * ``vr``    (256,) float64, ``negm`` (1,) float64: Contrast's ``v * (1 + m)`` (float32 product)
          and ``-m``, so its table is one ``addcmul`` with the image mean;
        * ``sharp`` (H, W) float64: Sharpness's ``-m`` inside the image, 0 on the border and for
          every other op (the blend is then the identity for them).

        Plus per-size constants: ``inv`` (256,) AutoContrast's ``(hi - lo) / 255`` by ``hi - lo``
        (1 for 0), ``eq`` (N + 1, 2) Equalize's ``(step // 2, max(step, 1))`` by the count of
        non-maximal pixels, ``vf`` (1, 256) the values as float32, ``ones`` (1, 1) int64.
        """
        key = (height, width)
        if key in self._fast:
            return self._fast[key]
        t = self.tables(height, width)
        dev, hp, n = self.device, _f64(self.device), height * width
        n_ops = len(OPS)
        op_ids = torch.arange(n_ops, device=dev).view(n_ops, 1, 1).expand(n_ops, NUM_BINS, 2)
        bin_ids = torch.arange(NUM_BINS, device=dev).view(1, NUM_BINS, 1).expand_as(op_ids)
        neg_ids = torch.arange(2, device=dev).view(1, 1, 2).expand_as(op_ids)
        smag = self.magnitude(op_ids, bin_ids, neg_ids, height, width)       # (ops, bins, 2) float32
        is_op = lambda name: (op_ids == OP[name]).unsqueeze(-1)
        # warp: source indices of the geometric ops, identity elsewhere
        src = warp_index(t["theta"].reshape(-1, 2, 3), height, width, t["grid"].to(dev))
        src = src.view(n_ops, NUM_BINS, 2, n)
        ident = torch.arange(n, device=dev).expand_as(src)
        warp = torch.where(self.is_geometric[op_ids].unsqueeze(-1), src, ident).contiguous()
        v = torch.arange(256, device=dev, dtype=torch.uint8).view(1, 1, 256)
        # Contrast (as _contrast_px): ratio = float32(1 + m), v * ratio in float32, and -m
        ratio = (1.0 + smag.to(hp)).float()
        vr = v.float().mul(ratio.view(-1, 1, 1)).view(n_ops, NUM_BINS, 2, 256).to(hp)
        negm = (-smag).to(hp).unsqueeze(-1)
        # Sharpness (as _sharpness): -m on the interior pixels, 0 elsewhere and for other ops
        inner = torch.zeros(height, width, dtype=hp, device=dev)
        inner[1:-1, 1:-1] = 1.0
        sharp = torch.where(is_op("Sharpness"), (-smag).to(hp).unsqueeze(-1), torch.zeros((), dtype=hp, device=dev))
        sharp = (sharp.view(n_ops, NUM_BINS, 2, 1, 1) * inner.view(1, 1, 1, height, width)).contiguous()
        inv = torch.arange(256, device=dev, dtype=torch.float32).mul_(1.0 / 255)   # as _autocontrast_px
        inv[0] = 1.0
        step = torch.div(torch.arange(n + 1, device=dev), 255, rounding_mode="floor")
        eq = torch.stack((step // 2, step.clamp(min=1)), dim=-1)
        self._fast[key] = {
            "warp": warp, "lutf": t["lut"].float(), "vr": vr, "negm": negm, "sharp": sharp,
            "inv": inv, "eq": eq, "vf": v.float().view(1, 256),
            "ones": torch.ones(1, 1, dtype=torch.long, device=dev),
        }
        return self._fast[key]

    def _kind_table(self, lut_ops: frozenset) -> torch.Tensor:
        """(ops, bins, 2) int64: which candidate table of :meth:`_slot_pixels` an op uses (0: the
        static one; then Contrast, AutoContrast, Equalize in that order, those of ``lut_ops``)."""
        key = ("kind", lut_ops)
        if key not in self._fast:
            kind = torch.zeros(len(OPS), dtype=torch.long)
            k = 1
            for name in _STAT_LUT_OPS:
                if name in lut_ops:
                    kind[OP[name]] = k
                    k += 1
            self._fast[key] = kind.view(-1, 1, 1).expand(len(OPS), NUM_BINS, 2).contiguous().to(self.device)
        return self._fast[key]

    def _arange(self, n: int) -> torch.Tensor:
        if n not in self._aranges:
            self._aranges[n] = torch.arange(n, device=self.device)
        return self._aranges[n]

    def _sharp_kernel(self, n: int) -> torch.Tensor:
        """torchvision's sharpness kernel times 13 ((1, 1, 1), (1, 5, 1), (1, 1, 1)) for ``n``
        channels (n, 1, 3, 3) float32, built once per batch size."""
        key = ("sharp", n)
        if key not in self._aranges:
            k = torch.ones(3, 3, device=self.device)
            k[1, 1] = 5.0
            self._aranges[key] = k.expand(n, 1, 3, 3).contiguous()
        return self._aranges[key]

    def _slot_pixels(self, pix: torch.Tensor, op: torch.Tensor, bins: torch.Tensor,
                     negative: torch.Tensor, present: frozenset, height: int, width: int) -> torch.Tensor:
        """One slot of the masked dispatch on 1-channel images given as int64 pixel values
        (B, H*W) in 0..255 -> the same after each sample's op.  Bit-identical to :meth:`apply_slot`'s
        general path (and to the grouped dispatch), with a few dozen ATen calls per slot:

        * warp: one ``gather`` of the zero-padded pixels through the per-(op, bin, sign) source index
          (:func:`warp_index`; the identity for samples of other ops);
        * pointwise: each sample's 256-entry table is chosen among the static table (Brightness,
          Posterize, Solarize, Invert; identity for the other ops) and the statistics-based ones
          (Contrast from the mean; AutoContrast and Equalize from one ``scatter_add`` histogram
          and its cumulative sum), all computed on (B, 256) and picked with one indexing op; then
          one ``gather`` maps every pixel;
        * Sharpness: torchvision's 3x3 smoothing as one ``conv2d`` of integer weights (exact: see
          :func:`_sharpness`) and the blend ``x + (blur - x) * (-m)`` with a per-sample factor
          that is 0 on the border and for samples of other ops, so it leaves them unchanged.

        Each stage is the identity for samples of the other stages, so chaining them applies every
        sample's one op, with no ``torch.where`` between full batches.
        """
        b, n = pix.shape
        idx = (op, bins, negative)
        t = self.fast_tables(height, width)
        if present & _GEOMETRIC_SET:
            pix = F.pad(pix, (0, 1)).gather(1, t["warp"][idx])           # pad: the fill pixel
        lut_ops = present & _POINTWISE_SET
        if lut_ops:
            cands = [t["lutf"][idx]]                                       # (B, 256) float32
            vf = t["vf"]
            if "Contrast" in lut_ops:                                      # as _contrast_px
                # float32 mean times float64 -m, plus v * ratio: in float64 (addcmul promotes), the
                # product is exact: _fma's single rounding
                mean = pix.mean(1, keepdim=True, dtype=torch.float32)
                cands.append(torch.addcmul(t["vr"][idx], mean, t["negm"][idx]).float())
            if lut_ops & {"AutoContrast", "Equalize"}:
                hist = torch.zeros(b, 256, dtype=torch.long, device=pix.device)
                hist = hist.scatter_add_(1, pix, t["ones"].expand(b, n))
                cum = hist.cumsum(1)
                below = cum < n                                            # values below the max
                if "AutoContrast" in lut_ops:                              # as _autocontrast_px
                    lo = (cum == 0).sum(1, keepdim=True)                   # smallest value present
                    d = below.sum(1, keepdim=True) - lo                    # largest - smallest
                    cands.append((vf - lo * (d != 0)) / t["inv"][d])
                if "Equalize" in lut_ops:                                  # as _equalize_lut
                    rest = (cum * below).amax(1, keepdim=True)             # pixels below the max
                    half, step = t["eq"][rest].unbind(-1)
                    eq = torch.div(cum - hist + half, step, rounding_mode="floor")
                    cands.append(torch.where(rest < 255, vf, eq))          # step 0: unchanged
            if len(cands) == 1:
                lut = cands[0]
            else:
                kind = self._kind_table(lut_ops)[idx]
                lut = torch.stack(cands, dim=1)[self._arange(b), kind]
            pix = lut.clamp_(0, 255).long().gather(1, pix)
        if "Sharpness" in present:                                        # as _sharpness
            # torchvision's 3x3 kernel on integer pixels: the sums are integers < 2^24, exact in
            # float32 in any order (and under TF32, which holds these inputs exactly), and S / 13
            # is never within 1/26 of a half-integer, so the rounded blur is exact; border
            # pixels and other samples get a 0 factor (``sharp``) and stay as they are.
            # The batch as the channels of one image: a depthwise conv (fast on every backend).
            x = pix.view(1, b, height, width).float()
            blur = F.conv2d(x, self._sharp_kernel(b), padding=1, groups=b).div_(13).round_()
            # float32 operands, float64 factor: addcmul computes in float64, where the product
            # and the sum are exact, so the one cast below is _sharpness's single rounding.
            x = torch.addcmul(x, blur - x, t["sharp"][idx])                     # factor (B, H, W)
            pix = x.float().clamp_(0, 255).long().view(b, n)
        return pix

    def apply_slot_grouped(self, x: torch.Tensor, op: torch.Tensor, bins: torch.Tensor,
                           negative: torch.Tensor, present: frozenset = frozenset(OPS)) -> torch.Tensor:
        """Same result as :meth:`apply_slot`, but each op runs only on the samples that drew it.

        Samples are sorted by group (``_GROUPS``; one host read of the group sizes), each group is
        gathered (``index_select``), transformed with the same per-sample kernels as the masked path
        (every kernel is independent per sample, so results are bit-identical), and written back
        with ``index_copy_``.  The pointwise groups are adjacent in the sort, so all of them share one
        gathered batch, one int32 index of its pixels into their flattened tables (also read by the
        Equalize/AutoContrast ``bincount`` histogram) and one table lookup (``index_select``).
        Meant for CPU tensors (it reads group sizes on the host, a device sync elsewhere).
        ``present`` is accepted for signature parity with :meth:`apply_slot`; absent groups are
        simply empty here.
        """
        b, c, h, w = x.shape
        key = self._group_key[3 if c == 3 else 1][op]
        counts = torch.bincount(key, minlength=len(_GROUPS)).tolist()
        if counts[0] == b:
            return x
        order = torch.argsort(key, stable=True)
        op_s, bins_s, neg_s = op[order], bins[order], negative[order]
        start = [0]
        for n in counts:
            start.append(start[-1] + n)
        span = {g: (start[i], start[i + 1]) for i, g in enumerate(_GROUPS)}
        t = self.tables(h, w)
        out = x.clone()

        def mag(lo: int, hi: int) -> torch.Tensor:
            return self.magnitude(op_s[lo:hi], bins_s[lo:hi], neg_s[lo:hi], h, w)

        lo, hi = span["geometric"]
        if hi > lo:
            idx = order[lo:hi]
            theta = t["theta"][op_s[lo:hi], bins_s[lo:hi], neg_s[lo:hi]]
            out.index_copy_(0, idx, warp_nearest(x.index_select(0, idx), theta, t["grid"]))

        lo, hi = span["lut"][0], span["equalize"][1]          # all pointwise groups, adjacent
        if hi > lo:
            idx = order[lo:hi]
            n = hi - lo
            xs = x.index_select(0, idx)
            # Pixel -> row of the flattened (n * C * 256) table, in int32 (one fused uint8 + int32
            # op; half the traffic of the int64 index ``gather`` needs): the table lookup and the
            # histograms (``bincount``) both read it.
            offset = torch.arange(0, n * c * 256, 256, device=x.device, dtype=torch.int32).view(n, c, 1)
            pix = _flat(xs) + offset                                               # (n, C, H*W) int32
            lut = t["lut"][op_s[lo:hi], bins_s[lo:hi], neg_s[lo:hi]].unsqueeze(1)   # (n, 1, 256)
            if c != 1:
                lut = lut.expand(n, c, 256).clone()
            v = _values(x)
            a, z = span["contrast"]
            if z > a:
                lut[a - lo:z - lo] = _contrast_px(v, mag(a, z), _grayscale_mean(xs[a - lo:z - lo]))
            a, z = span["autocontrast"][0], span["equalize"][1]
            if z > a:
                base = (a - lo) * c * 256
                hist = torch.bincount(pix[a - lo:z - lo].reshape(-1) - base, minlength=(z - a) * c * 256)
                hist = hist.view(z - a, c, 256)
                m = span["equalize"][0]
                if m > a:
                    lo_v, hi_v = _minmax_from_hist(hist[:m - a])
                    lut[a - lo:m - lo] = _autocontrast_px(v, lo_v, hi_v)
                if z > m:
                    eq_lut, valid = _equalize_lut(hist[m - a:], h * w)
                    part = lut[m - lo:z - lo]
                    lut[m - lo:z - lo] = torch.where(valid, eq_lut, part)
            out.index_copy_(0, idx, lut.reshape(-1).index_select(0, pix.view(-1)).view_as(xs))

        lo, hi = span["sharpness"]
        if hi > lo:
            idx = order[lo:hi]
            out.index_copy_(0, idx, _sharpness(x.index_select(0, idx), mag(lo, hi)))

        lo, hi = span["color"]
        if hi > lo:
            idx = order[lo:hi]
            out.index_copy_(0, idx, _color(x.index_select(0, idx), mag(lo, hi)))
        return out


# Grouped dispatch: which group each op belongs to.  "lut": ops whose lookup table is static (in the
# ``lut`` table); "contrast"/"autocontrast"/"equalize": tables built from the group's statistics.
# The four pointwise groups must stay adjacent, and autocontrast just before equalize (they share one
# histogram).
_GROUPS = ("identity", "geometric", "lut", "contrast", "autocontrast", "equalize", "sharpness", "color")
_GROUP_OF = {"Identity": 0, **{n: 1 for n in GEOMETRIC},
             **{n: 2 for n in ("Brightness", "Posterize", "Solarize", "Invert")},
             "Contrast": 3, "AutoContrast": 4, "Equalize": 5, "Sharpness": 6, "Color": 7}

_STATIC_LUT_OPS = ("Brightness", "Posterize", "Solarize", "Invert")
_STAT_LUT_OPS = ("Contrast", "AutoContrast", "Equalize")       # tables from image statistics
_GEOMETRIC_SET = frozenset(GEOMETRIC)
_POINTWISE_SET = frozenset(POINTWISE)


def _static_tables(height: int, width: int) -> dict[str, torch.Tensor]:
    """Host-side tables of :meth:`BatchAutoAugment.tables` (float64 math, CPU)."""
    bins = magnitude_bins(height, width)
    n_ops = len(OPS)
    mag = torch.stack([bins[name] if bins.get(name) is not None else torch.zeros(NUM_BINS)
                       for name in OPS]).float()                          # (ops, bins)
    signed = torch.tensor([name in SIGNED for name in OPS]).view(n_ops, 1, 1)
    sign = torch.tensor([1.0, -1.0]).view(1, 1, 2)
    smag = torch.where(signed, mag.unsqueeze(-1) * sign, mag.unsqueeze(-1).expand(-1, -1, 2))
    op_ids = torch.arange(n_ops).view(n_ops, 1, 1).expand_as(smag)
    theta = geometric_matrix(op_ids.reshape(-1), smag.reshape(-1).double(), height, width)
    theta = theta.float().view(n_ops, NUM_BINS, 2, 2, 3)
    v = torch.arange(256, dtype=torch.uint8).view(1, 1, 256)
    lut = v.expand(n_ops * NUM_BINS * 2, 1, 256).clone()
    flat_op, flat_m = op_ids.reshape(-1), smag.reshape(-1)
    for name in _STATIC_LUT_OPS:
        rows = flat_op == OP[name]
        m = flat_m[rows]
        if name == "Brightness":
            table = _brightness_px(v, (1.0 + m.double()).float())
        elif name == "Posterize":
            table = _posterize_px(v, m)
        elif name == "Solarize":
            table = _solarize_px(v, m)
        else:
            table = _invert_px(v).expand(len(m), 1, 256)
        lut[rows] = table
    return {"mag": mag, "theta": theta, "lut": lut.view(n_ops, NUM_BINS, 2, 256),
            "grid": pixel_grid(height, width)}
