"""DALI backend specifics (the shared contract is in test_augment_contract.py), on DALI's CPU backend.

The AutoAugment policy built for DALI (torchvision's tables and magnitudes, op by op against
torchvision), pipeline reuse for partial batches and rebuilds for larger ones, resume across both,
flip/erasing on the default geometry, erasing as the shared draw after the pipeline, and the error
when DALI is not importable.  A ``gpu`` test checks the CUDA path (external source on the GPU)
where a GPU is present.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

import torchvision.transforms.v2.functional as TF  # noqa: E402
from nvidia.dali import fn, pipeline_def, types  # noqa: E402
from nvidia.dali.auto_aug.core import signed_bin  # noqa: E402
from torchvision.transforms import AutoAugment, AutoAugmentPolicy, InterpolationMode  # noqa: E402

from fastfm.augment import AugConfig, BackendUnavailable, create_augmenter  # noqa: E402
from fastfm.augment import dali_backend as db  # noqa: E402
from fastfm.augment.base import derive_seed, normalise, resize_bilinear  # noqa: E402
from fastfm.augment.erasing import draw_erasing_boxes, erase  # noqa: E402

MEAN, STD = 0.2860, 0.3530
NEAREST = InterpolationMode.NEAREST


def make(cfg: AugConfig | None = None, seed: int = 0, device="cpu", **overrides):
    cfg = cfg if cfg is not None else AugConfig(**overrides)
    cfg.backend = "dali"
    return create_augmenter(cfg, device, seed=seed, mean=MEAN, std=STD)


# ----------------------------------------------------------------------------- AutoAugment policy


@pytest.mark.parametrize("policy", ["cifar10", "imagenet", "svhn"])
def test_policy_is_torchvisions_table(policy):
    dali_policy = db.torchvision_policy(policy, 32)
    assert dali_policy.num_magnitude_bins == 10
    table = AutoAugment(AutoAugmentPolicy(policy)).policies
    assert len(dali_policy.sub_policies) == len(table) == 25
    for ours, theirs in zip(dali_policy.sub_policies, table):
        theirs = [(name, p, mag) for name, p, mag in theirs if p > 0]
        assert [(p, mag) for _, p, mag in ours] == [(p, mag) for _, p, mag in theirs]
        names = [aug.name.replace("_", "") for aug, _, _ in ours]
        assert names == [name.lower() for name, _, _ in theirs]


def test_unknown_policy_is_a_value_error():
    with pytest.raises(ValueError, match="no AutoAugment policy"):
        db.torchvision_policy("randaugment", 32)


def _tv(img: torch.Tensor, op: str, m: float) -> torch.Tensor:
    """torchvision with the arguments its AutoAugment passes for ``op`` at magnitude ``m``."""
    if op in ("ShearX", "ShearY"):
        angle = math.degrees(math.atan(m))
        shear = [angle, 0.0] if op == "ShearX" else [0.0, angle]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                         interpolation=NEAREST, center=[0, 0])
    if op in ("TranslateX", "TranslateY"):
        t = [int(m), 0] if op == "TranslateX" else [0, int(m)]
        return TF.affine(img, angle=0.0, translate=t, scale=1.0, shear=[0.0, 0.0], interpolation=NEAREST)
    return {
        "Rotate": lambda: TF.rotate(img, angle=m, interpolation=NEAREST),
        "Brightness": lambda: TF.adjust_brightness(img, 1.0 + m),
        "Color": lambda: TF.adjust_saturation(img, 1.0 + m),
        "Contrast": lambda: TF.adjust_contrast(img, 1.0 + m),
        "Sharpness": lambda: TF.adjust_sharpness(img, 1.0 + m),
        "Posterize": lambda: TF.posterize(img, int(m)),
        "Solarize": lambda: TF.solarize(img, m),
        "AutoContrast": lambda: TF.autocontrast(img),
        "Equalize": lambda: TF.equalize(img),
        "Invert": lambda: TF.invert(img),
    }[op]()


# torchvision's magnitude tables for 32 px images (num_bins = 10)
_TV_MAGS = {
    "ShearX": np.linspace(0, 0.3, 10), "ShearY": np.linspace(0, 0.3, 10),
    "TranslateX": np.linspace(0, 150 / 331 * 32, 10), "TranslateY": np.linspace(0, 150 / 331 * 32, 10),
    "Rotate": np.linspace(0, 30, 10), "Brightness": np.linspace(0, 0.9, 10),
    "Color": np.linspace(0, 0.9, 10), "Contrast": np.linspace(0, 0.9, 10),
    "Sharpness": np.linspace(0, 0.9, 10),
    "Posterize": 8 - (np.arange(10) / ((10 - 1) / 4)).round().astype(int),
    "Solarize": np.linspace(255.0, 0.0, 10),
}
EXACT = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Color", "Posterize", "Solarize",
         "Invert")
WITHIN_ONE = ("Brightness", "Contrast", "Sharpness", "AutoContrast")   # DALI rounds, torchvision truncates


@pytest.mark.slow
def test_ops_match_torchvision(real_images):
    """Every op of the policy, at magnitude bins 4 and 9 and both signs, against torchvision on real
    images resized to 32 px: geometric and LUT ops exact, blends within one grey level; Equalize is
    DALI's (OpenCV formula), checked to be a monotone lookup table of the input."""
    x = resize_bilinear(real_images[0][:64].float(), 32).round().clamp(0, 255).to(torch.uint8)
    augs = db._torchvision_augmentations(32)
    cases = []
    for name, aug in augs.items():
        if aug.mag_range is None:
            cases.append((name, None, 0))
            continue
        for bin_ in (4, 9):
            for sign in ((0, 1) if aug.randomly_negate else (0,)):
                cases.append((name, bin_, sign))

    @pipeline_def(batch_size=64, num_threads=1, device_id=None, seed=0, prefetch_queue_depth=1)
    def ops():
        data = fn.external_source(name="images", dtype=types.UINT8, ndim=3, layout="HWC")
        outs = []
        for name, bin_, sign in cases:
            aug = augs[name]
            kwargs = {}
            if bin_ is not None:
                mag = bin_
                if aug.randomly_negate:
                    mag = signed_bin(bin_, random_sign=fn.random.uniform(values=[sign], dtype=types.INT32))
                kwargs = dict(magnitude_bin=mag, num_magnitude_bins=10)
            if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
                kwargs.update(fill_value=0, interp_type=types.INTERP_NN)
            outs.append(aug(data, **kwargs))
        return tuple(outs)

    pipe = ops()
    pipe.build()
    results = pipe.run(images=x.permute(0, 2, 3, 1).contiguous().numpy())
    for (name, bin_, sign), res in zip(cases, results):
        got = torch.from_numpy(np.array(res.as_tensor())).permute(0, 3, 1, 2).int()
        m = 0.0 if bin_ is None else float(_TV_MAGS[name][bin_]) * (-1 if sign else 1)
        if name.startswith("Shear"):
            m = -m              # DALI's shear matrix is mirrored; the sign is random either way
        if name == "Equalize":
            for img, out in zip(x.int(), got):
                levels = img.flatten()
                order = levels.argsort()
                mapped = out.flatten()[order]
                assert (mapped.diff() >= 0).all()                     # monotone in the input level
                same = levels[order].diff() == 0
                assert (mapped.diff()[same] == 0).all()               # a lookup table
            continue
        ref = torch.stack([_tv(img, name, m) for img in x]).int()
        diff = (got - ref).abs().max().item()
        limit = 0 if name in EXACT else 1
        assert diff <= limit, f"{name} bin {bin_} sign {sign}: max |diff| {diff}"


# ----------------------------------------------------------------------------- pipeline lifecycle
# AutoAugment off here: building its conditional graph takes seconds on this CPU, and resume with
# AutoAugment on is covered by test_augment_contract.py::test_state_dict_resume.
NO_AA = dict(autoaugment="none")


@pytest.mark.slow
def test_partial_batches_reuse_the_pipeline_larger_ones_rebuild(real_images):
    images, labels = real_images
    aug = make(**NO_AA)
    x, _ = aug(images[:256], labels[:256])
    pipe = aug._pipe
    x, y = aug(images[:100], labels[:100])                       # last, partial batch
    assert aug._pipe is pipe and x.shape == (100, 1, 32, 32) and y.shape == (100, 10)
    aug(images[:300], labels[:300])                              # larger: rebuilt
    assert aug._pipe is not pipe and aug._pipe_batch == 300


@pytest.mark.parametrize("sizes", [(256, 100, 100, 256), (100, 256, 256, 100), (256,)])
@pytest.mark.slow
def test_resume_across_batch_sizes(real_images, sizes):
    """State saved after the first batch; the rest of the stream (partial batches, a batch larger
    than the pipeline was built for) is identical after a restore into a fresh augmenter."""
    images, labels = real_images
    a = make(seed=11, mixup_p=0.25, **NO_AA)
    a(images[:sizes[0]], labels[:sizes[0]])
    state = a.state_dict()
    want = [a(images[:n], labels[:n]) for n in sizes[1:] + (64,)]
    b = make(seed=11, mixup_p=0.25, **NO_AA)
    b(images[:32], labels[:32])                                  # elsewhere in its own stream
    b.load_state_dict(state)
    assert b.state_dict()["batches"] == 1
    for (xa, ya), n in zip(want, sizes[1:] + (64,)):
        xb, yb = b(images[:n], labels[:n])
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.slow
def test_resume_before_the_first_batch(real_images):
    images, labels = real_images[0][:128], real_images[1][:128]
    a = make(seed=2, **NO_AA)
    state = a.state_dict()
    xa, _ = a(images, labels)
    b = make(seed=2, **NO_AA)
    b(images, labels)
    b.load_state_dict(state)
    assert torch.equal(b(images, labels)[0], xa)


# ----------------------------------------------------------------------------- ops on the default geometry


def test_flip_extremes_are_exact(real_images):
    """flip_p 0 and 1 with the float path (no AutoAugment): the exact reference or its mirror."""
    images, labels = real_images[0][:64], real_images[1][:64]
    ref = normalise(resize_bilinear(images.float(), 36), MEAN, STD)
    x0, _ = make(AugConfig.off(crop=0, flip_p=0.0))(images, labels)
    x1, _ = make(AugConfig.off(crop=0, flip_p=1.0))(images, labels)
    torch.testing.assert_close(x0, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(x1, ref.flip(-1), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_erasing_after_crop(real_images):
    """Erasing on the 32 px crops: rate, one rectangle inside the image, torchvision's size bounds."""
    images, labels = real_images
    cfg = AugConfig.off(erasing_p=0.5, erasing_value=5.0)
    x, _ = make(cfg)(images, labels)
    mask = (x == 5.0)[:, 0]
    erased = mask.flatten(1).any(1)
    n = len(images)
    assert abs(erased.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    m = mask[erased]
    h, w = m.any(2).sum(1).double(), m.any(1).sum(1).double()
    assert torch.equal(m.flatten(1).sum(1).double(), h * w)
    assert ((h < 32) & (w < 32)).all()
    assert ((h + 0.5) * (w + 0.5) >= 0.02 * 1024).all() and ((h - 0.5) * (w - 0.5) <= 0.33 * 1024).all()
    assert ((h + 0.5) / (w - 0.5) >= 0.3).all() and ((h - 0.5) / (w + 0.5) <= 3.3).all()


@pytest.mark.slow
def test_erasing_is_the_shared_draw(real_images):
    """Erasing runs in torch after the pipeline: the boxes are the shared draw from the per-batch
    generator seeded from (seed, batch index), on the pipeline's (normalised) output."""
    images, labels = real_images[0][:256], real_images[1][:256]
    cfg = AugConfig.off(resize=0, crop=0, erasing_p=0.5, erasing_value=5.0)
    aug = make(cfg, seed=6)
    ref = normalise(images, MEAN, STD)
    for index in range(2):
        x, _ = aug(images, labels)
        g = torch.Generator().manual_seed(derive_seed(6, 0x313C, index))
        boxes = draw_erasing_boxes(cfg, 256, 28, 28, g, "cpu")
        want = erase(ref, boxes, 5.0)
        torch.testing.assert_close(x, want, atol=1e-5, rtol=0)
        assert torch.equal(x == 5.0, want == 5.0)


@pytest.mark.slow
def test_full_recipe_output(real_images):
    """Default recipe, 3 channels: contract shapes/format and every op present in the graph."""
    images, labels = real_images[0][:256], real_images[1][:256]
    aug = make(channels=3)
    x, y = aug(images, labels)
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x[:, 0], x[:, 2])
    torch.testing.assert_close(y.sum(1), torch.ones(256), atol=1e-5, rtol=0)
    assert (x == 0.0).flatten(1).all(1).sum() == 0              # nothing fully erased
    assert ((y.max(1).values < 1).float().mean() - 0.5).abs() < 0.15   # CutMix on ~half


# ----------------------------------------------------------------------------- errors


def test_missing_dali_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)
    monkeypatch.delitem(sys.modules, "fastfm.augment.dali_backend", raising=False)
    with pytest.raises(BackendUnavailable, match="dali"):
        create_augmenter(AugConfig(backend="dali"), "cpu")


def test_non_28px_input_is_rejected(real_images):
    aug = make()
    with pytest.raises(ValueError, match="28x28"):
        aug(torch.zeros(4, 1, 32, 32, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_cuda_pipeline(real_images):
    """GPU external source fed from the CUDA batch, outputs on the device; same contract; resume."""
    images, labels = real_images[0][:256].cuda(), real_images[1][:256].cuda()
    aug = make(device="cuda", seed=4, mixup_p=0.25)
    x, y = aug(images, labels)
    assert x.is_cuda and y.is_cuda and x.shape == (256, 1, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.sum(1), torch.ones(256, device="cuda"), atol=1e-5, rtol=0)
    assert x.min() >= (0 - MEAN) / STD - 1e-4 and x.max() <= (1 - MEAN) / STD + 1e-4
    state = aug.state_dict()
    x1, y1 = aug(images, labels)
    x2, _ = aug(images[:100], labels[:100])
    b = make(device="cuda", seed=4, mixup_p=0.25)
    b.load_state_dict(state)
    assert torch.equal(b(images, labels)[0], x1)
    assert torch.equal(b(images[:100], labels[:100])[0], x2)
    # the geometry-only path is the reference on the GPU too
    off = make(AugConfig.off(crop=0), device="cuda")
    ref = normalise(resize_bilinear(images.float(), 36), MEAN, STD)
    torch.testing.assert_close(off(images, labels)[0], ref, atol=1e-3, rtol=0)
