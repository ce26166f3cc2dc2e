"""The augmentation contract (:mod:`fastfm.augment.base`), checked for every backend in ``BACKENDS``.

Output half of the contract (shapes, dtypes, ranges, memory format, soft targets), seeding and
resume, the tagged state format, input validation, the template (``__call__`` written once in the
base class), profiler ranges, and per-op statistics (``tests/augment_stats.py``, shared with the
compiled augmenter's tests).  The shared pieces (erasing boxes, CutMix boxes, Beta
draws) are checked against plain reference implementations of torchvision's formulas.  A backend is
skipped only while its module does not exist yet; a backend whose module exists but fails is a
failure.  All on CPU.
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys

import augment_stats as stats
import numpy as np
import pytest
import torch
from torchvision.transforms import RandomErasing

from fastfm.augment import BACKENDS, AugConfig, create_augmenter
from fastfm.augment.base import (DALI_PIPELINE_STREAM, KORNIA_STREAM, MIX_STREAM, Augmenter,
                                 CounterSeeded)
from fastfm.augment.erasing import draw_erasing_boxes
from fastfm.augment.mix import draw_cutmix_boxes, sample_beta

MEAN, STD = stats.MEAN, stats.STD
LO, HI = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD          # normalised range of pixels in [0, 255]
reference = stats.reference


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _require(name: str) -> None:
    """Skip only while the backend's module itself does not exist (being written in parallel)."""
    module_name = BACKENDS[name][0].split(":")[0]
    try:
        importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            pytest.skip(f"{module_name} does not exist yet")
        raise


# Kornia and DALI run the contract in the full suite only (their own files keep a quick check each).
@pytest.fixture(params=[b if b == "native" else pytest.param(b, marks=pytest.mark.slow) for b in BACKENDS])
def make(request):
    """``make(cfg_or_None, seed=0, **overrides)`` -> augmenter of this backend on the CPU."""
    name = request.param
    _require(name)

    def build(cfg: AugConfig | None = None, seed: int = 0, **overrides):
        cfg = cfg if cfg is not None else AugConfig(**overrides)
        cfg.backend = name
        return create_augmenter(cfg, "cpu", seed=seed, mean=MEAN, std=STD)

    build.backend = name
    return build


@pytest.fixture(scope="module")
def batch4k(real_images):
    """4096 samples (the 2048 real images twice: the two copies get independent draws)."""
    x, y = real_images
    return torch.cat([x, x]), torch.cat([y, y])


# ----------------------------------------------------------------------------- output contract


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("channels_last", [True, False])
def test_output_contract(make, real_images, channels, channels_last):
    images, labels = real_images[0][:256], real_images[1][:256]
    aug = make(channels=channels, channels_last=channels_last, mixup_p=0.25)
    x, y = aug(images, labels)
    b = len(images)
    assert x.shape == (b, channels, 32, 32) and x.dtype == torch.float32
    assert y.shape == (b, 10) and y.dtype == torch.float32
    assert x.device == images.device and y.device == images.device
    if channels_last:
        assert x.is_contiguous(memory_format=torch.channels_last)
    else:
        assert x.is_contiguous()
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert x.min() >= LO - 1e-4 and x.max() <= HI + 1e-4, (x.min(), x.max())
    assert x.std() > 0.3                                       # not collapsed
    if channels == 3:
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert (y >= 0).all() and (y <= 1).all()
    torch.testing.assert_close(y.sum(1), torch.ones(b), atol=1e-5, rtol=0)
    # labels survive: the own class keeps the largest weight unless the sample was mixed to >= 1/2
    assert (y.argmax(1) == labels).float().mean() > 0.5


@pytest.mark.parametrize("channels", [1, 3])
def test_test_transform_contract(make, real_images, channels):
    images = real_images[0][:128]
    aug = make(channels=channels)
    x = aug.test_transform(images)
    assert x.shape == (128, channels, 32, 32) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    ref = reference(images)[..., 2:34, 2:34].expand(-1, channels, -1, -1)
    torch.testing.assert_close(x, ref, atol=1e-4, rtol=0)
    assert torch.equal(aug.test_transform(images), x)


def test_template_is_written_once(make):
    """Checks, mix and finish, the test transform and the tagged state live in the base class only:
    a backend implements its own ops and its own state, nothing else of the contract."""
    cls = type(make())
    for method in ("__call__", "_mix_and_finish", "check_input", "test_transform", "op_range",
                   "state_dict", "load_state_dict"):
        assert getattr(cls, method) is getattr(Augmenter, method), method
    for method in ("_augment", "_state_dict", "_load_state_dict"):
        assert getattr(cls, method) is not getattr(Augmenter, method), method
    assert not hasattr(cls, "eval")                             # would read as nn.Module.eval
    if make.backend in ("kornia", "dali"):                      # library-owned RNGs: counter seeding
        assert issubclass(cls, CounterSeeded)
        assert {"seed", "batches"} <= set(make(seed=3).state_dict())


def test_stream_ids_are_distinct_and_fixed():
    """The counter-seeded stream ids are part of the checkpoint format (a state holds only the seed
    and the batch counter): distinct, and unchanged so that saved runs resume on the same streams."""
    assert (MIX_STREAM, KORNIA_STREAM, DALI_PIPELINE_STREAM) == (0x313C, 0xC0A1, 0xDA11)


def test_pipeline_without_ops_is_the_reference(make, real_images):
    """All random ops off and no crop: output is the resize-only reference (one-hot targets)."""
    images, labels = real_images[0][:256], real_images[1][:256]
    x, y = make(AugConfig.off(crop=0))(images, labels)
    torch.testing.assert_close(x, reference(images), atol=1e-3, rtol=0)
    assert torch.equal(y, torch.nn.functional.one_hot(labels, 10).float())


# ----------------------------------------------------------------------------- seeds and resume


def test_same_seed_same_stream(make, real_images):
    images, labels = real_images[0][:256], real_images[1][:256]
    a, b, c = make(seed=7, mixup_p=0.25), make(seed=7, mixup_p=0.25), make(seed=8, mixup_p=0.25)
    for _ in range(2):                                          # two consecutive batches
        xa, ya = a(images, labels)
        xb, yb = b(images, labels)
        xc, yc = c(images, labels)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert not torch.equal(xa, xc)
        assert not torch.equal(ya, yc)


def test_state_dict_resume(make, real_images):
    """Save mid-stream; a new augmenter built as a resumed run builds it (same config and seed) and
    advanced elsewhere, then restored, produces the identical next batches."""
    images, labels = real_images[0][:256], real_images[1][:256]
    a = make(seed=3, mixup_p=0.25)
    a(images, labels)
    state = a.state_dict()
    x1, y1 = a(images, labels)
    x2, y2 = a(images, labels)
    b = make(seed=3, mixup_p=0.25)
    for _ in range(3):                                          # somewhere else in the stream
        b(images, labels)
    b.load_state_dict(state)
    x1b, y1b = b(images, labels)
    x2b, y2b = b(images, labels)
    assert torch.equal(x1, x1b) and torch.equal(y1, y1b)
    assert torch.equal(x2, x2b) and torch.equal(y2, y2b)
    assert not torch.equal(x1, x2)                              # and the stream does move on


def test_state_is_tagged_with_the_backend(make, real_images):
    """``state_dict()`` names its backend; a state of another backend (or an untagged one) is a
    ValueError naming both backends, and leaves the augmenter as it was."""
    images, labels = real_images[0][:64], real_images[1][:64]
    aug = make(seed=1)
    state = aug.state_dict()
    assert state["backend"] == make.backend == aug.name
    other = next(b for b in BACKENDS if b != make.backend)
    with pytest.raises(ValueError, match=rf"'{other}'.*'{make.backend}'"):
        aug.load_state_dict({**state, "backend": other})
    with pytest.raises(ValueError, match="tag"):
        aug.load_state_dict({k: v for k, v in state.items() if k != "backend"})
    x, y = aug(images, labels)
    fresh = make(seed=1)
    assert all(torch.equal(a, b) for a, b in zip((x, y), fresh(images, labels)))


def test_rejects_bad_input(make, real_images):
    images, labels = real_images[0][:8], real_images[1][:8]
    aug = make()
    with pytest.raises(TypeError, match="uint8"):
        aug(images.float(), labels)
    with pytest.raises(ValueError, match="shape"):
        aug(images[:, 0], labels)                               # (B, 28, 28)
    with pytest.raises(ValueError, match="shape"):
        aug(images.expand(-1, 3, -1, -1).contiguous(), labels)  # 3 channels in
    with pytest.raises(ValueError, match="int64"):
        aug(images, labels.int())
    with pytest.raises(ValueError, match="int64"):
        aug(images, labels[:4])
    with pytest.raises(ValueError, match="built for cpu"):      # the generators live on the CPU
        aug(images.to("meta"), labels.to("meta"))


# ----------------------------------------------------------------------------- profiler ranges

# What each backend records with ``op_ranges`` on, for the full default recipe.
RANGES = {
    "native": {"resize", "crop_flip", "autoaugment", "normalise", "erasing", "mix", "finish"},
    "kornia": {"resize", "crop", "flip", "autoaugment", "params", "normalise", "erasing", "mix",
               "finish"},
    "dali": {"dali", "erasing", "mix", "finish"},
}


@pytest.mark.parametrize("on", [True, False])
def test_profiler_ranges(make, real_images, on):
    """With ``op_ranges`` on, every op of the backend appears as a named range ``aug.<op>`` in a
    ``torch.profiler`` trace; off (the default), none does."""
    images, labels = real_images[0][:64], real_images[1][:64]
    aug = make()
    assert aug.op_ranges is False
    aug.op_ranges = on
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        aug(images, labels)
    names = {e.key for e in prof.key_averages() if e.key.startswith("aug.")}
    assert names == ({f"aug.{op}" for op in RANGES[make.backend]} if on else set())


# ----------------------------------------------------------------------------- op statistics


@pytest.mark.parametrize("p", [0.25, 1.0])
def test_flip_rate(make, batch4k, p):
    stats.check_flip_rate(make, batch4k, p)


def test_crop_offsets_uniform(make, batch4k):
    stats.check_crop_offsets_uniform(make, batch4k)


def test_erasing_boxes(make, batch4k):
    stats.check_erasing_boxes(make, batch4k)


def test_cutmix_weight_is_pasted_area(make):
    stats.check_cutmix_weight_is_pasted_area(make)


def test_mixup_weights(make):
    stats.check_mixup_weights(make)


@pytest.mark.parametrize("policy", ["cifar10", "svhn"])
def test_autoaugment_sub_policy_per_sample(make, real_images, policy):
    stats.check_autoaugment_sub_policy_per_sample(make, real_images, policy)


# ----------------------------------------------------------------------------- shared pieces


def _se_close(ours: np.ndarray, ref: np.ndarray, sigmas: float = 4.0) -> tuple[bool, str]:
    """Means of two independent samples agree within ``sigmas`` standard errors of their difference."""
    se = math.sqrt(ours.var() / len(ours) + ref.var() / len(ref))
    diff = abs(ours.mean() - ref.mean())
    return diff <= sigmas * se, f"mean {ours.mean():.4f} vs reference {ref.mean():.4f} (SE {se:.5f})"


@pytest.mark.parametrize("case", [dict(size=(32, 32), scale=(0.02, 0.33)),
                                  dict(size=(28, 20), scale=(0.3, 0.9))])
@pytest.mark.slow
def test_erasing_draw_matches_torchvision(case):
    """The shared box draw against torchvision's own ``RandomErasing.get_params`` (one call per
    sample, p = 1): the rate of boxes found, and the means of height, width, area and top-left
    corner, within 4 standard errors.  The second case has ~half of the attempts too large, so the
    'first attempt that fits' rule and the give-up after 10 matter."""
    (h, w), scale, ratio = case["size"], case["scale"], (0.3, 3.3)
    cfg = AugConfig.off(erasing_p=1.0, erasing_scale=scale, erasing_ratio=ratio)
    n_ref, n = 20_000, 200_000
    torch.manual_seed(0)
    img = torch.zeros(1, h, w)
    ref = np.array([RandomErasing.get_params(img, scale=scale, ratio=ratio, value=[0.0])[:4]
                    for _ in range(n_ref)], dtype=np.float64)             # (i, j, h, w)
    ref_apply = ref[:, 2] < h                                             # gave up: the whole image
    apply, top, left, eh, ew = (t.double().numpy() for t in
                                draw_erasing_boxes(cfg, n, h, w, torch.Generator().manual_seed(0), "cpu"))
    apply = apply.astype(bool)
    ok, msg = _se_close(apply.astype(np.float64), ref_apply.astype(np.float64))
    assert ok, f"erased fraction: {msg}"
    ref = ref[ref_apply]
    ours = np.stack([top, left, eh, ew], 1)[apply]
    assert (ours[:, 2] < h).all() and (ours[:, 3] < w).all() and (ours[:, 2:] >= 1).all()
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= h).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= w).all()
    for k, name in enumerate(("top", "left", "height", "width")):
        ok, msg = _se_close(ours[:, k], ref[:, k])
        assert ok, f"{name}: {msg}"
    ok, msg = _se_close(ours[:, 2] * ours[:, 3], ref[:, 2] * ref[:, 3])
    assert ok, f"area: {msg}"


def _cutmix_reference(alpha: float, n: int, h: int, w: int, rng: np.random.Generator):
    """torchvision v2 ``CutMix`` / timm ``rand_bbox``, in plain NumPy: (y0, y1, x0, x1)."""
    lam = rng.beta(alpha, alpha, n)
    r = np.sqrt(1.0 - lam)
    cut_h, cut_w = (h * r).astype(np.int64), (w * r).astype(np.int64)
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
    return (np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h),
            np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w))


@pytest.mark.parametrize("alpha", [1.0, 0.2])
def test_cutmix_boxes_follow_the_standard_formula(alpha):
    """Box area fraction, height and width: means agree with the reference formula within 4
    standard errors.  That tolerance is well under 1% of the mean area, so boxes from a nearby
    formula (e.g. a continuous centre with rounded edges) fail here."""
    h, w = 28, 32                                               # unequal sides catch a swapped axis
    n, n_ref = 400_000, 1_000_000
    y0, y1, x0, x1 = (t.numpy() for t in
                      draw_cutmix_boxes(alpha, n, h, w, torch.Generator().manual_seed(0), "cpu"))
    assert (0 <= y0).all() and (y0 <= y1).all() and (y1 <= h).all()
    assert (0 <= x0).all() and (x0 <= x1).all() and (x1 <= w).all()
    r0, r1, c0, c1 = _cutmix_reference(alpha, n_ref, h, w, np.random.default_rng(0))
    area, ref_area = (y1 - y0) * (x1 - x0) / (h * w), (r1 - r0) * (c1 - c0) / (h * w)
    for name, ours, ref in (("area", area, ref_area), ("height", y1 - y0, r1 - r0),
                            ("width", x1 - x0, c1 - c0)):
        ok, msg = _se_close(ours.astype(np.float64), ref.astype(np.float64))
        assert ok, f"{name}: {msg}"
    se = math.sqrt(area.var() / n + ref_area.var() / n_ref)
    assert 4 * se < 0.01 * ref_area.mean()


def test_config_import_needs_no_torch():
    """Reading a configuration must not import torch: ``fastfm.config`` (and the augment package
    itself, with its factory) import with torch made unimportable."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fastfm.config\n"
            "import fastfm.augment as a\n"
            "assert callable(a.create_augmenter) and a.AugConfig().backend == 'native'\n"
            "assert 'torch' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_sample_beta_moments(alpha):
    n = 400_000
    x = sample_beta(alpha, n, torch.Generator().manual_seed(0), "cpu").double()
    assert torch.isfinite(x).all() and (x >= 0).all() and (x <= 1).all()
    var = 1.0 / (4.0 * (2.0 * alpha + 1.0))                    # Beta(a, a): mean 1/2
    assert abs(x.mean().item() - 0.5) < 4 * math.sqrt(var / n)
    assert abs(x.var().item() / var - 1.0) < 0.02
    if alpha == 1.0:                                            # Beta(1, 1) is uniform
        hist = torch.histc(x, bins=10, min=0, max=1) / n
        assert (hist - 0.1).abs().max() < 0.005
