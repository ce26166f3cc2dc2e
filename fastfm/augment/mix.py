"""CutMix and MixUp as whole-batch tensor ops, shared by every backend (DALI has no CutMix).

Every sample ``i`` is mixed with partner ``i - 1`` (the batch rolled by one): batches come from a
fresh device permutation each epoch, so the neighbour is a random sample, and a roll never pairs a
sample with itself.  Each sample independently gets CutMix with probability ``cutmix_p``, MixUp with
probability ``mixup_p``, or stays as it is.  The partner's weight in the soft target is the exact
pasted area fraction (CutMix) or the blend factor (MixUp).
"""

from __future__ import annotations

import torch

from .config import AugConfig

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


def mix_batch(x: torch.Tensor, targets: torch.Tensor, cfg: AugConfig,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply per-sample CutMix / MixUp to a float batch ``x`` (B, C, H, W) and soft ``targets`` (B, K).

    Returns new tensors; ``x`` keeps its memory format.  With both probabilities 0 it returns the
    inputs untouched (and draws nothing, so switching mixing off does not shift other streams).
    """
    if cfg.cutmix_p <= 0 and cfg.mixup_p <= 0:
        return x, targets
    b, _, h, w = x.shape
    dev = x.device
    partner_x = x.roll(1, dims=0)
    partner_t = targets.roll(1, dims=0)

    choice = torch.rand(b, generator=generator, device=dev)
    do_cut = choice < cfg.cutmix_p
    do_mix = (choice >= cfg.cutmix_p) & (choice < cfg.cutmix_p + cfg.mixup_p)

    # CutMix box: area fraction 1 - lam, lam ~ Beta(a, a); centre uniform; clipped to the image.
    lam = sample_beta(cfg.cutmix_alpha, b, generator, dev)
    cut = torch.sqrt(1.0 - lam)
    cy = torch.rand(b, generator=generator, device=dev) * h
    cx = torch.rand(b, generator=generator, device=dev) * w
    half_h = cut * h / 2
    half_w = cut * w / 2
    y0 = (cy - half_h).round().clamp(0, h).long()
    y1 = (cy + half_h).round().clamp(0, h).long()
    x0 = (cx - half_w).round().clamp(0, w).long()
    x1 = (cx + half_w).round().clamp(0, w).long()
    # Row and column masks are small ((B, H, 1) and (B, 1, W)); only their product is full size.
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    in_rows = (rows >= y0.view(b, 1, 1)) & (rows < y1.view(b, 1, 1)) & do_cut.view(b, 1, 1)
    in_cols = (cols >= x0.view(b, 1, 1)) & (cols < x1.view(b, 1, 1))
    box = (in_rows & in_cols).unsqueeze(1)                       # (B, 1, H, W)
    area = ((y1 - y0) * (x1 - x0)).float() / (h * w)             # exact pasted fraction
    partner_w = torch.where(do_cut, area, torch.zeros_like(area))

    out = x
    if cfg.mixup_p > 0:                                          # config branch, not data
        mix_lam = sample_beta(cfg.mixup_alpha, b, generator, dev)   # weight of the sample itself
        blend = torch.where(do_mix, 1.0 - mix_lam, torch.zeros_like(mix_lam))
        out = x + (partner_x - x) * blend.view(b, 1, 1, 1)       # MixUp (blend 0 elsewhere)
        partner_w = partner_w + blend
    out = torch.where(box, partner_x, out)                       # CutMix paste
    t = targets * (1.0 - partner_w).unsqueeze(1) + partner_t * partner_w.unsqueeze(1)
    return out, t
