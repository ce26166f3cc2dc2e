"""Native backend specifics (the backend-agnostic contract is in test_augment_contract.py).

The native backend is exact where the others only need to be close: its crop/flip outputs *are*
windows of the shared reference, its AutoAugment is :class:`BatchAutoAugment` (tested against
torchvision in test_autoaugment_ops.py) fed from the same generator, and its generator state alone
determines the stream.
"""

from __future__ import annotations

import pytest
import torch

from fastfm.augment import AugConfig, create_augmenter
from fastfm.augment.autoaugment import BatchAutoAugment
from fastfm.augment.base import Augmenter, normalise, resize_bilinear
from fastfm.augment.erasing import draw_erasing_boxes, erase
from fastfm.augment.native_backend import NativeAugmenter

MEAN, STD = 0.2860, 0.3530


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def make(cfg: AugConfig | None = None, seed: int = 0, device="cpu", **overrides) -> NativeAugmenter:
    cfg = cfg if cfg is not None else AugConfig(**overrides)
    aug = create_augmenter(cfg, device, seed=seed, mean=MEAN, std=STD)
    assert isinstance(aug, NativeAugmenter) and aug.name == "native"
    return aug


@pytest.fixture(scope="module")
def batch(real_images):
    return real_images[0][:512], real_images[1][:512]


def test_crop_and_flip_are_exact_windows(batch):
    """Each output is bit-identical to one of the 25 x 2 windows (offset, mirror) of the reference."""
    images, labels = batch
    x, _ = make(AugConfig.off(flip_p=0.5))(images, labels)
    ref = normalise(resize_bilinear(images.float(), 36), MEAN, STD)
    found = torch.zeros(len(images), dtype=torch.bool)
    flipped = torch.zeros(len(images), dtype=torch.bool)
    for t in range(5):
        for l in range(5):
            win = ref[..., t:t + 32, l:l + 32]
            same = (x == win).flatten(1).all(1)
            mirrored = (x == win.flip(-1)).flatten(1).all(1)
            flipped |= mirrored & ~same
            found |= same | mirrored
    assert found.all()
    assert 0.35 < flipped.float().mean() < 0.65


def test_crop_flip_on_uint8(batch):
    """The same gather serves uint8 batches (the AutoAugment path)."""
    images, _ = batch
    aug = make(AugConfig.off(resize=0, crop=24, flip_p=0.5))
    out = aug.crop_flip(images)
    assert out.dtype == torch.uint8 and out.shape == (len(images), 1, 24, 24)
    ok = torch.zeros(len(images), dtype=torch.bool)
    for t in range(5):
        for l in range(5):
            win = images[..., t:t + 24, l:l + 24]
            ok |= (out == win).flatten(1).all(1) | (out == win.flip(-1)).flatten(1).all(1)
    assert ok.all()


def test_autoaugment_runs_on_uint8_levels(batch):
    """With AutoAugment the resized image is quantised to uint8 first (torchvision works on uint8);
    without it nothing is quantised."""
    images, labels = batch
    levels = lambda x: (x * STD + MEAN) * 255  # noqa: E731
    x, _ = make(AugConfig.off(autoaugment="cifar10"))(images, labels)
    assert (levels(x) - levels(x).round()).abs().max() < 1e-3
    x, _ = make(AugConfig.off())(images, labels)
    assert (levels(x) - levels(x).round()).abs().max() > 0.1


def test_pipeline_autoaugment_is_batch_autoaugment(batch):
    """Only AutoAugment on: the pipeline output is BatchAutoAugment driven by the same generator."""
    images, labels = batch
    x, _ = make(AugConfig.off(resize=0, crop=0, autoaugment="svhn"), seed=11)(images, labels)
    g = torch.Generator().manual_seed(11)
    want = normalise(BatchAutoAugment("svhn", "cpu")(images, g), MEAN, STD)
    assert torch.equal(x, want)


def test_no_global_rng(batch):
    """All draws come from the augmenter's generator: the global RNG is neither used nor needed."""
    images, labels = batch
    torch.manual_seed(0)
    state = torch.get_rng_state()
    x1, y1 = make(seed=5, mixup_p=0.3)(images, labels)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)
    x2, y2 = make(seed=5, mixup_p=0.3)(images, labels)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_state_is_the_whole_stream(batch):
    """The generator state alone determines what follows: restoring it into an augmenter built with
    another seed continues the stream exactly; the state is a plain tensor (checkpointable)."""
    images, labels = batch
    a = make(seed=1)
    a(images, labels)
    state = a.state_dict()
    assert set(state) == {"backend", "generator"} and state["generator"].dtype == torch.uint8
    x1, y1 = a(images, labels)
    b = make(seed=2)
    b.load_state_dict(state)
    x2, y2 = b(images, labels)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_erasing_nothing_fits_means_no_erasing(batch):
    """torchvision semantics: when none of the 10 attempts fits (h < H and w < W), nothing is erased."""
    images, labels = batch
    # area >= 0.98 * 1024 with ratio 1 gives h = w = round(31.7..31.9) = 32: never fits a 32 px image
    cfg = AugConfig.off(erasing_p=1.0, erasing_scale=(0.98, 0.99), erasing_ratio=(1.0, 1.0),
                        erasing_value=5.0)
    x, _ = make(cfg)(images, labels)
    assert not (x == 5.0).any()


def test_erasing_takes_first_fitting_attempt(batch):
    """Attempts that do not fit are skipped: with ~4% of attempts too large, (nearly) every sample is
    erased, always with a box that fits, square for ratio 1."""
    images, labels = batch
    cfg = AugConfig.off(erasing_p=1.0, erasing_scale=(0.5, 0.99), erasing_ratio=(1.0, 1.0),
                        erasing_value=5.0)
    x, _ = make(cfg)(images, labels)
    mask = (x == 5.0)[:, 0]
    h, w = mask.any(2).sum(1), mask.any(1).sum(1)
    assert (mask.flatten(1).sum(1) == h * w).all()
    assert mask.flatten(1).any(1).all()                 # P(10 misses) ~ 0.043^10
    assert torch.equal(h, w) and (h < 32).all() and (h >= 22).all()   # round(sqrt(0.5 * 1024)) = 23


@pytest.mark.parametrize("b", [1, 3, 100])
def test_small_and_odd_batches(real_images, b):
    images, labels = real_images[0][:b], real_images[1][:b]
    aug = make(channels=3, mixup_p=0.3)
    x, y = aug(images, labels)
    assert x.shape == (b, 3, 32, 32) and y.shape == (b, 10)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(y.sum(1), torch.ones(b), atol=1e-6, rtol=0)


def test_test_transform_is_the_shared_one():
    assert NativeAugmenter.test_transform is Augmenter.test_transform


def test_erasing_is_the_shared_draw(batch):
    """Erasing only: the output is the reference with the boxes of the shared draw, from the
    augmenter's generator (nothing else draws before it)."""
    images, labels = batch
    cfg = AugConfig.off(resize=0, crop=0, erasing_p=0.5, erasing_value=5.0)
    x, _ = make(cfg, seed=9)(images, labels)
    boxes = draw_erasing_boxes(cfg, len(images), 28, 28, torch.Generator().manual_seed(9), "cpu")
    assert torch.equal(x, erase(normalise(images, MEAN, STD), boxes, 5.0))


def test_every_policy_runs(batch):
    images, labels = batch
    for policy in ("none", "cifar10", "imagenet", "svhn"):
        x, y = make(autoaugment=policy)(images, labels)
        assert torch.isfinite(x).all() and x.shape == (len(images), 1, 32, 32)


@pytest.mark.gpu
def test_cuda_no_host_sync(real_images):
    """On CUDA a training call never synchronises with the host (sync debug mode turns any
    synchronising call into an error); the first call is outside, it caches device tables."""
    images, labels = real_images[0][:512].cuda(), real_images[1][:512].cuda()
    aug = make(device="cuda", mixup_p=0.2, channels=3)
    aug(images, labels)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            x, y = aug(images, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all() and x.is_contiguous(memory_format=torch.channels_last)
    cpu = make(mixup_p=0.2, channels=3)
    xc, _ = cpu(images.cpu(), labels.cpu())
    assert x.shape == xc.shape
