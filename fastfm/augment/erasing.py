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

from .config import AugConfig

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
    eh = torch.sqrt(area * ratio).round().long()            # round half to even, as Python's round()
    ew = torch.sqrt(area / ratio).round().long()
    valid = (eh < h) & (ew < w)
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)   # first valid attempt (0 if none)
    apply = apply & valid.any(dim=1)
    eh = eh.gather(1, first).squeeze(1)
    ew = ew.gather(1, first).squeeze(1)
    # top-left uniform over 0..H-h and 0..W-w (torch.randint(0, H - h + 1) in torchvision); an
    # attempt that did not fit (sample not erased) may give a negative range: clamped, harmless.
    top = (torch.rand(b, generator=generator, device=device) * (h - eh + 1)).floor().long()
    left = (torch.rand(b, generator=generator, device=device) * (w - ew + 1)).floor().long()
    top = torch.minimum(top, h - eh).clamp_min(0)           # guard float rounding up to the bound
    left = torch.minimum(left, w - ew).clamp_min(0)
    return apply, top, left, eh, ew


def erase(x: torch.Tensor, boxes: tuple[torch.Tensor, ...], value: float) -> torch.Tensor:
    """Fill each sample's box of :func:`draw_erasing_boxes` with ``value`` in the float batch ``x``
    (B, C, H, W); samples with ``apply`` False are unchanged.  One (B, H, W) mask from row/column
    comparisons and one ``masked_fill``; ``x``'s memory format is kept."""
    apply, top, left, eh, ew = boxes
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    mask = ((rows >= top.view(b, 1, 1)) & (rows < (top + eh).view(b, 1, 1))
            & (cols >= left.view(b, 1, 1)) & (cols < (left + ew).view(b, 1, 1))
            & apply.view(b, 1, 1))
    return x.masked_fill(mask.unsqueeze(1), value)
