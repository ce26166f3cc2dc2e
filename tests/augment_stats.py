"""Per-op statistics of an augmenter, shared by the contract tests (every backend) and the compiled
augmenter's tests: each check switches one op on with ``AugConfig.off(...)`` and compares against
the deterministic reference (bilinear resize + normalise).  ``make(cfg)`` builds the augmenter
under test."""

from __future__ import annotations

import math

import torch

from fastfm.augment.base import normalise, resize_bilinear
from fastfm.config import AugConfig

MEAN, STD = 0.2860, 0.3530
MATCH_TOL = 0.02   # normalised units (~1.8 grey levels): "this output is that reference window"


def reference(images: torch.Tensor, size: int = 36) -> torch.Tensor:
    """The deterministic resize-only output (float, normalised), before any random op."""
    x = images.float()
    if size != x.shape[-1]:
        x = resize_bilinear(x, size)
    return normalise(x, MEAN, STD)



def _rate_ok(k: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(k / n - p) <= sigmas * math.sqrt(p * (1 - p) / n) + 1e-12


def check_flip_rate(make, batch4k, p):
    images, labels = batch4k
    x, _ = make(AugConfig.off(crop=0, flip_p=p))(images, labels)
    ref = reference(images)
    err_keep = (x - ref).abs().amax(dim=(1, 2, 3))
    err_flip = (x - ref.flip(-1)).abs().amax(dim=(1, 2, 3))
    assert (torch.minimum(err_keep, err_flip) < MATCH_TOL).all(), "output is neither image nor mirror"
    # only images that differ clearly from their mirror can tell flipped from not flipped
    clear = (ref - ref.flip(-1)).abs().amax(dim=(1, 2, 3)) > 0.5
    n = int(clear.sum())
    assert n > 3000
    k = int((err_flip < err_keep)[clear].sum())
    assert _rate_ok(k, n, p), f"flip rate {k / n:.4f}, expected {p}"


def check_crop_offsets_uniform(make, batch4k):
    """Every (top, left) in 0..4 x 0..4 equally likely: identify each sample's window, chi-square."""
    images, labels = batch4k
    x, _ = make(AugConfig.off())(images, labels)
    assert x.shape[-2:] == (32, 32)
    ref = reference(images)
    errs = torch.stack([(x - ref[..., t:t + 32, l:l + 32]).abs().amax(dim=(1, 2, 3))
                        for t in range(5) for l in range(5)], dim=1)      # (B, 25)
    best_err, best = errs.min(dim=1)
    assert (best_err < MATCH_TOL).all(), "an output is not a 32x32 window of the resized image"
    counts = torch.bincount(best, minlength=25).double()
    expected = len(images) / 25
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 60, f"chi-square {chi2:.1f} (24 dof; 99.99% quantile ~ 55): {counts.tolist()}"
    rows, cols = counts.view(5, 5).sum(1), counts.view(5, 5).sum(0)
    assert (rows > expected * 5 * 0.8).all() and (cols > expected * 5 * 0.8).all()


def check_erasing_boxes(make, batch4k):
    """Rate ~ p; one axis-aligned rectangle filled with erasing_value; its size is one that
    torchvision's get_params can produce (area fraction and aspect ratio in range, up to the
    rounding of h and w); pixels outside it untouched."""
    images, labels = batch4k
    cfg = AugConfig.off(resize=0, crop=0, erasing_p=0.5, erasing_value=5.0)
    x, _ = make(cfg)(images, labels)
    mask = (x == 5.0)[:, 0]                                     # value impossible for real pixels
    ref = reference(images, 28)
    torch.testing.assert_close(torch.where(mask.unsqueeze(1), ref, x), ref, atol=1e-4, rtol=0)
    erased = mask.flatten(1).any(1)
    k, n = int(erased.sum()), len(images)
    assert _rate_ok(k, n, cfg.erasing_p), f"erasing rate {k / n:.4f}"
    m = mask[erased]
    rows, cols = m.any(2), m.any(1)                             # (k, H), (k, W)
    h, w = rows.sum(1).double(), cols.sum(1).double()
    assert torch.equal(m.flatten(1).sum(1).double(), h * w), "erased region is not a rectangle"
    first_r, first_c = rows.int().argmax(1), cols.int().argmax(1)
    # contiguous: last row - first row + 1 == h (and the same for columns)
    assert (rows.int().flip(1).argmax(1) == 28 - first_r - h.long()).all()
    assert (cols.int().flip(1).argmax(1) == 28 - first_c - w.long()).all()
    hw = 28 * 28
    (a0, a1), (r0, r1) = cfg.erasing_scale, cfg.erasing_ratio
    assert ((h < 28) & (w < 28)).all()
    assert ((h + 0.5) * (w + 0.5) >= a0 * hw).all() and ((h - 0.5) * (w - 0.5) <= a1 * hw).all()
    assert ((h + 0.5) / (w - 0.5) >= r0).all() and ((h - 0.5) / (w + 0.5) <= r1).all()
    # distribution sanity: mean area near the middle of the scale range, log-ratio centred
    frac = (h * w / hw).mean().item()
    assert 0.14 < frac < 0.21, frac
    assert abs(torch.log(h / w).mean().item()) < 0.1
    # every top-left position class appears (corners included)
    assert first_r.min() == 0 and first_c.min() == 0
    assert (first_r + h.long()).max() == 28 and (first_c + w.long()).max() == 28


def _constant_batch(n: int = 200, seed: int = 0):
    """n constant images with distinct grey levels, and random labels."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randperm(256, generator=g)[:n].to(torch.uint8)
    images = values.view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous()
    labels = torch.randint(0, 10, (n,), generator=g)
    return images, labels, values


def check_cutmix_weight_is_pasted_area(make):
    """CutMix: the partner's target weight equals the fraction of its pixels pasted in, exactly."""
    images, labels, values = _constant_batch()
    x, y = make(AugConfig.off(resize=0, crop=0, cutmix_p=1.0))(images, labels)
    torch.testing.assert_close(y.sum(1), torch.ones(len(y)), atol=1e-6, rtol=0)
    level = ((x[:, 0] * STD + MEAN) * 255).round().long().flatten(1)        # (B, 784) grey levels
    owner = torch.full((256,), -1, dtype=torch.long)
    owner[values.long()] = torch.arange(len(values))
    src = owner[level]                                                      # sample each pixel came from
    assert (src >= 0).all(), "pixel from no sample of the batch"
    me = torch.arange(len(values)).view(-1, 1)
    pasted = src != me
    frac = pasted.double().mean(1)
    partner = torch.where(pasted, src, torch.full_like(src, -1)).amax(1)
    # one partner per sample, never itself
    same = torch.where(pasted, src == partner.view(-1, 1), torch.ones_like(pasted))
    assert same.all()
    has = frac > 0
    assert has.float().mean() > 0.8                                        # mostly non-empty boxes
    pl = labels[partner.clamp(min=0)]
    differ = has & (pl != labels)
    assert differ.sum() > 50
    i = differ.nonzero().squeeze(1)
    torch.testing.assert_close(y[i, pl[i]].double(), frac[i], atol=1e-6, rtol=0)
    torch.testing.assert_close(y[i, labels[i]].double(), 1 - frac[i], atol=1e-6, rtol=0)
    # pasted pixels form a rectangle
    box = pasted.view(-1, 28, 28)[has]
    hh, ww = box.any(2).sum(1), box.any(1).sum(1)
    assert torch.equal(box.flatten(1).sum(1), hh * ww)
    # samples with nothing pasted (empty box) keep their one-hot target
    j = (~has).nonzero().squeeze(1)
    assert torch.equal(y[j], torch.nn.functional.one_hot(labels[j], 10).float())


def check_mixup_weights(make):
    """MixUp: weights in [0, 1], and the blended pixels agree with the soft target's weight
    (partner i - 1, as documented in fastfm.augment.mix)."""
    images, labels, values = _constant_batch(seed=1)
    x, y = make(AugConfig.off(resize=0, crop=0, mixup_p=1.0))(images, labels)
    assert (y >= 0).all() and (y <= 1).all()
    torch.testing.assert_close(y.sum(1), torch.ones(len(y)), atol=1e-6, rtol=0)
    flat = x.flatten(1)
    assert (flat.amax(1) - flat.amin(1) < 1e-5).all()                     # blends of constants
    own = normalise(values.float(), MEAN, STD)
    partner = own.roll(1)
    pl = labels.roll(1)
    differ = pl != labels
    w = y[torch.arange(len(y)), pl]
    expect = (1 - w) * own + w * partner
    torch.testing.assert_close(flat[differ, 0], expect[differ], atol=2e-5, rtol=0)
    assert w[differ].std() > 0.05                                          # random, not constant


def _aa_kinds(x: torch.Tensor, src: torch.Tensor):
    """Classify outputs of one repeated source image: identity / pointwise (a lookup table of the
    input grey level) / non-pointwise (geometric, sharpness); and count distinct outputs."""
    q = ((x[:, 0] * STD + MEAN) * 255).round().clamp(0, 255).long().flatten(1)   # (B, HW)
    u = src.flatten().long().expand_as(q)
    lo = torch.full((len(q), 256), 255).scatter_reduce(1, u, q, "amin")
    hi = torch.zeros(len(q), 256, dtype=torch.long).scatter_reduce(1, u, q, "amax")
    present = torch.zeros(256, dtype=torch.bool)
    present[src.flatten().long()] = True
    pointwise = ((lo == hi) | ~present).all(1)
    identity = (q == u).all(1)
    return (int(identity.sum()), int((pointwise & ~identity).sum()), int((~pointwise).sum()),
            torch.unique(q, dim=0).shape[0])


def check_autoaugment_sub_policy_per_sample(make, real_images, policy):
    """One batch of copies of one image: a per-sample policy gives, in every batch, untouched copies,
    pointwise-coloured copies and geometrically changed copies, and far more distinct results
    than one sub-policy could (2 coins x 2 signs x 2 signs = at most 16)."""
    src = real_images[0][0:1]
    images = src.expand(512, -1, -1, -1).contiguous()
    labels = real_images[1][:1].expand(512).contiguous()
    aug = make(AugConfig.off(resize=0, crop=0, autoaugment=policy))
    results = [_aa_kinds(aug(images, labels)[0], src[0, 0]) for _ in range(3)]
    # (all three backends draw the sub-policy per sample; Kornia's stock AutoAugment would not)
    per_sample = all(i > 0 and p > 0 and g > 0 and d > 16 for i, p, g, d in results)
    assert per_sample, f"(identity, pointwise, non-pointwise, distinct) per batch: {results}"
