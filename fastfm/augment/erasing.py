"""Random erasing, shared by every backend: the box draw (torchvision's ``RandomErasing.get_params``,
vectorised over the batch) and a mask-based fill.

Every backend draws its boxes with :func:`draw_erasing_boxes`, so the three cannot drift apart; they
differ only in where the generator lives (native: its device generator; Kornia: torch's forked
global CPU generator, like Kornia's own parameters; DALI: its per-batch device generator) and in
who fills the box (native and DALI: :func:`erase`; Kornia: ``K.RandomErasing`` with these
parameters).
"""

from __future__ import annotations

import math

import torch

from ..config import AugConfig

ERASING_ATTEMPTS = 10  # torchvision RandomErasing.get_params tries 10 boxes before giving up


def draw_erasing_boxes(cfg: AugConfig, b: int, h: int, w: int, generator: torch.Generator,
                       device) -> tuple[torch.Tensor, ...]:
    """torchvision ``RandomErasing.get_params`` for ``b`` images of ``h`` x ``w`` pixels, per sample.

    Up to 10 attempts of area ``U(erasing_scale) * H * W`` and aspect ratio
    ``exp(U(log erasing_ratio))``, ``h = round(sqrt(area * r))``, ``w = round(sqrt(area / r))``; the
    first attempt with ``h < H and w < W`` wins and its top-left corner is uniform over the valid
    integer positions; if none fits the sample is left alone.  Applied with probability
    ``erasing_p``.  Vectorised: all 10 attempts are drawn for every sample at once and the first
    valid one is found with ``argmax`` over the attempt axis (no data-dependent shape, no host sync).

    Draws, in this order, from ``generator`` (on ``device``): the apply coin (b,), the areas
    (b, 10), the ratios (b, 10), the top (b,) and the left (b,) uniforms.  float32 arithmetic.

    Returns ``(apply, top, left, eh, ew)``, each (b,) on ``device``: ``apply`` bool (erase this
    sample: the coin said yes and an attempt fitted), the others int64 pixels.
    """
    lo, hi = cfg.erasing_scale
    log_r0, log_r1 = math.log(cfg.erasing_ratio[0]), math.log(cfg.erasing_ratio[1])
    apply = torch.rand(b, generator=generator, device=device) < cfg.erasing_p
    area = (h * w) * (lo + (hi - lo) * torch.rand(b, ERASING_ATTEMPTS, generator=generator, device=device))
    ratio = torch.exp(log_r0 + (log_r1 - log_r0)
                      * torch.rand(b, ERASING_ATTEMPTS, generator=generator, device=device))
    # Heights and widths as one (2, b, 10) tensor (rows: h, w), and so on below: the same values
    # as one tensor per axis, in fewer (small) ops.
    hw = torch.stack((area * ratio, area / ratio)).sqrt_().round_().long()   # half to even, as round()
    if h == w:
        valid = (hw < h).all(0)
    else:
        valid = (hw[0] < h) & (hw[1] < w)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)   # first valid attempt (0 if none)
    apply = apply & valid.any(dim=1)
    hw = hw.gather(2, first.expand(2, b, 1)).view(2, b)         # (eh, ew)
    # top-left uniform over 0..H-h and 0..W-w (torch.randint(0, H - h + 1) in torchvision); an
    # attempt that did not fit (sample not erased) may give a negative range: clamped, harmless.
    u = torch.stack((torch.rand(b, generator=generator, device=device),
                     torch.rand(b, generator=generator, device=device)))
    span = (h + 1) - hw if h == w else torch.stack((h + 1 - hw[0], w + 1 - hw[1]))
    # (u * span).long(): truncation is the floor wherever span > 0; where it is not, the clamp
    # below gives 0 either way.  The minimum guards float rounding up to the bound.
    tl = torch.minimum((u * span).long(), span - 1).clamp_min_(0)
    top, left = tl.unbind(0)
    eh, ew = hw.unbind(0)
    return apply, top, left, eh, ew


_BANDS: dict = {}


def band_table(n: int, device: torch.device, axis: int) -> torch.Tensor:
    """Band masks of one axis of an (n x n) box, built once per (n, device, axis): ``[start, length]``
    -> ``start <= i < start + length`` over ``i`` in ``0..n-1``, shaped (n + 1, n + 1, 1, n, 1)
    for rows (``axis`` -2) and (n + 1, n + 1, 1, 1, n) for columns (``axis`` -1), so that indexing it
    with (B,) start and length tensors gives a (B, 1, n, 1) / (B, 1, 1, n) mask in one op."""
    key = (n, device, axis)
    table = _BANDS.get(key)
    if table is None:
        i = torch.arange(n, device=device)
        s = torch.arange(n + 1, device=device).view(-1, 1, 1)
        table = (i >= s) & (i < s + torch.arange(n + 1, device=device).view(1, -1, 1))
        table = table.view((n + 1, n + 1, 1, n, 1) if axis == -2 else (n + 1, n + 1, 1, 1, n))
        _BANDS[key] = table
    return table


def box_mask(top: torch.Tensor, height: torch.Tensor, left: torch.Tensor, width: torch.Tensor,
             h: int, w: int) -> torch.Tensor:
    """(B, 1, h, w) bool mask of the boxes ``top <= i < top + height``, ``left <= j < left + width``
    given (B,) int64 tensors in ``0..h`` / ``0..w`` (a 0 height or width: empty box): two lookups
    in :func:`band_table` and one ``&``."""
    dev = top.device
    return band_table(h, dev, -2)[top, height] & band_table(w, dev, -1)[left, width]


def erase(x: torch.Tensor, boxes: tuple[torch.Tensor, ...], value: float) -> torch.Tensor:
    """Fill each sample's box of :func:`draw_erasing_boxes` with ``value`` in the float batch ``x``
    (B, C, H, W); samples with ``apply`` False are unchanged.  One (B, 1, H, W) mask from two
    band-table lookups (:func:`box_mask`; a sample not erased gets an empty box) and one
    ``masked_fill``; ``x``'s memory format is kept."""
    apply, top, left, eh, ew = boxes
    h, w = x.shape[-2:]
    return x.masked_fill(box_mask(top, eh * apply, left, ew * apply, h, w), value)
