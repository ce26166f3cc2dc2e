"""CutMix and MixUp as whole-batch tensor ops, run for every backend by
:meth:`fastfm.augment.base.Augmenter._mix_and_finish` after the backend's own ops.

Every sample ``i`` is mixed with partner ``i - 1`` (the batch rolled by one): batches come from a
fresh device permutation each epoch, so the neighbour is a random sample, and a roll never pairs a
sample with itself.  Each sample independently gets CutMix with probability ``cutmix_p``, MixUp with
probability ``mixup_p``, or stays as it is.  The partner's weight in the soft target is the exact
pasted area fraction (CutMix) or the blend factor (MixUp).  The random half (:func:`draw_mix`)
depends on shapes only, never on the pixels, so a two-phase call can draw first and apply
(:func:`apply_mix`) inside a compiled graph.
"""

from __future__ import annotations

import torch

from ..config import AugConfig
from .erasing import box_mask

_GAMMA_TRIES = 12  # Marsaglia-Tsang proposals per sample; P(all rejected) < 1e-15 for shape >= 1


def sample_gamma(shape: float, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """``n`` draws of Gamma(shape, 1) using only ``generator`` (torch's own gamma takes none).

    Marsaglia & Tsang (2000), vectorised with a fixed number of proposals so that there is no
    data-dependent loop (and no host sync); shape < 1 uses the boost Gamma(a) = Gamma(a+1) U^(1/a).
    """
    boost = shape < 1.0
    a = shape + 1.0 if boost else shape
    d = a - 1.0 / 3.0
    c = 1.0 / (9.0 * d) ** 0.5
    z = torch.randn(_GAMMA_TRIES, n, generator=generator, device=device)
    u = torch.rand(_GAMMA_TRIES, n, generator=generator, device=device)
    v = (1.0 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    first = torch.argmax(ok.int(), dim=0)                        # first accepted proposal
    g = (d * v).gather(0, first[None]).squeeze(0)
    g = torch.where(ok.any(0), g, torch.full_like(g, d))         # never reached in practice
    if boost:
        g = g * torch.rand(n, generator=generator, device=device) ** (1.0 / shape)
    return g


def sample_beta(alpha: float, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """``n`` draws of Beta(alpha, alpha) on ``device`` from ``generator``."""
    if alpha == 1.0:                    # Beta(1, 1) is U(0, 1): CutMix's default, one kernel
        return torch.rand(n, generator=generator, device=device)
    x = sample_gamma(alpha, n, generator, device)
    y = sample_gamma(alpha, n, generator, device)
    return x / (x + y).clamp_min(1e-12)


def draw_cutmix_boxes(alpha: float, b: int, h: int, w: int, generator: torch.Generator,
                      device) -> tuple[torch.Tensor, ...]:
    """``b`` CutMix boxes by the standard formula (torchvision v2 ``CutMix``, timm ``rand_bbox``).

    ``lam ~ Beta(alpha, alpha)``, ``r = sqrt(1 - lam)``, ``cut_h = int(H * r)``, ``cut_w = int(W * r)``,
    integer centre ``cy ~ U{0..H-1}``, ``cx ~ U{0..W-1}``, and the box
    ``[cy - cut_h // 2, cy + cut_h // 2) x [cx - cut_w // 2, cx + cut_w // 2)`` clipped to the image.
    The label weight of the pasted partner is then the clipped box's area fraction (torchvision's
    ``lam`` adjusted to the box), which :func:`apply_mix` uses exactly.

    Draws, in this order, from ``generator`` (on ``device``): lam (see :func:`sample_beta`), cy (b,),
    cx (b,).  Returns ``(y0, y1, x0, x1)``, each int64 (b,): rows ``y0 <= i < y1``, columns
    ``x0 <= j < x1``.
    """
    start, end = _draw_cutmix_spans(alpha, b, h, w, generator, device)
    y0, x0 = start.unbind(0)
    y1, x1 = end.unbind(0)
    return y0, y1, x0, x1


def _draw_cutmix_spans(alpha: float, b: int, h: int, w: int, generator: torch.Generator,
                       device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`draw_cutmix_boxes` (same draws, same values) as ``(start, end)``, each int64 (2, b):
    row 0 the rows (y0, y1), row 1 the columns (x0, x1)."""
    lam = sample_beta(alpha, b, generator, device)
    r = torch.sqrt(1.0 - lam)
    cy = torch.randint(0, h, (b,), generator=generator, device=device)
    cx = torch.randint(0, w, (b,), generator=generator, device=device)
    centre = torch.stack((cy, cx))
    if h == w:
        half = (r * h).long() // 2          # int() truncation: r >= 0, so it is a floor
        return (centre - half).clamp_(0, h), (centre + half).clamp_(0, h)
    half = torch.stack(((r * h).long() // 2, (r * w).long() // 2))
    start, end = centre - half, centre + half
    return (torch.stack((start[0].clamp(0, h), start[1].clamp(0, w))),
            torch.stack((end[0].clamp(0, h), end[1].clamp(0, w))))


def draw_mix(cfg: AugConfig, b: int, h: int, w: int, generator: torch.Generator, device) -> dict:
    """The draws of per-sample CutMix / MixUp for ``b`` images of ``h`` x ``w``, in this order: the
    per-sample choice (b,), the CutMix boxes (:func:`draw_cutmix_boxes`; only when ``cutmix_p > 0``),
    the MixUp weights (only when ``mixup_p > 0``).  ``{}`` with both probabilities 0: switching
    mixing off draws nothing, so it does not shift other streams."""
    if cfg.cutmix_p <= 0 and cfg.mixup_p <= 0:
        return {}
    d = {"choice": torch.rand(b, generator=generator, device=device)}
    if cfg.cutmix_p > 0:                                         # config branches, not data
        d["box"] = _draw_cutmix_spans(cfg.cutmix_alpha, b, h, w, generator, device)   # (start, end)
    if cfg.mixup_p > 0:
        d["mix_lam"] = sample_beta(cfg.mixup_alpha, b, generator, device)   # weight of the sample itself
    return d


def apply_mix(x: torch.Tensor, targets: torch.Tensor, cfg: AugConfig,
              draws: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix the float batch ``x`` (B, C, H, W) and soft ``targets`` (B, K) as :func:`draw_mix`'s
    ``draws`` say; new tensors, ``x``'s memory format kept (the inputs themselves when ``draws`` is
    empty).  No random draws, no host reads: ``torch.compile`` traces it as part of one graph."""
    if not draws:
        return x, targets
    b, _, h, w = x.shape
    partner_x = x.roll(1, dims=0)
    partner_t = targets.roll(1, dims=0)

    choice = draws["choice"]
    out = x
    partner_w = None
    box = None
    if "box" in draws:
        start, end = draws["box"]                                # (2, B): rows, columns
        # Box sides, 0 for samples without CutMix: an empty box, and no area.
        size = (end - start) * (choice < cfg.cutmix_p)
        y0, x0 = start.unbind(0)
        bh, bw = size.unbind(0)
        box = box_mask(y0, bh, x0, bw, h, w)                     # (B, 1, H, W)
        partner_w = (bh * bw).float() / (h * w)                  # exact pasted fraction
    if "mix_lam" in draws:
        mix_lam = draws["mix_lam"]
        do_mix = (choice >= cfg.cutmix_p) & (choice < cfg.cutmix_p + cfg.mixup_p)
        blend = torch.where(do_mix, 1.0 - mix_lam, torch.zeros_like(mix_lam))
        out = x + (partner_x - x) * blend.view(b, 1, 1, 1)       # MixUp (blend 0 elsewhere)
        partner_w = blend if partner_w is None else partner_w + blend
    if box is not None:
        out = torch.where(box, partner_x, out)                   # CutMix paste
    partner_w = partner_w.unsqueeze(1)
    t = targets * (1.0 - partner_w) + partner_t * partner_w
    return out, t
