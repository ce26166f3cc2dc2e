"""Kornia backend specifics (the shared contract is in test_augment_contract.py).

Per-sample AutoAugment (grouping by sub-policy and scattering back), isolation of torch's global RNG
(Kornia draws from it), independence from the caller's seeding, the erasing parameters (the shared
draw), and the error when Kornia is not importable.  The profiler ranges (``aug.params`` for
Kornia's parameter draws) are checked for every backend in test_augment_contract.py.  All on CPU.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("kornia")

from fastfm.augment import AugConfig, BackendUnavailable, create_augmenter  # noqa: E402
from fastfm.augment.base import derive_seed, normalise  # noqa: E402
from fastfm.augment.erasing import draw_erasing_boxes, erase  # noqa: E402
from fastfm.augment.kornia_backend import KorniaAugmenter, PerSampleAutoAugment  # noqa: E402

MEAN, STD = 0.2860, 0.3530


def make(cfg: AugConfig | None = None, seed: int = 0, **overrides) -> KorniaAugmenter:
    cfg = cfg if cfg is not None else AugConfig(**overrides)
    cfg.backend = "kornia"
    return create_augmenter(cfg, "cpu", seed=seed, mean=MEAN, std=STD)


class _AddK(torch.nn.Module):
    """Stand-in sub-policy: records the group it gets and adds its index (k / 100)."""

    def __init__(self, k: int, seen: list):
        super().__init__()
        self.k, self.seen = k, seen

    def forward_parameters(self, shape):
        return None

    def forward(self, x, params=None):
        self.seen.append((self.k, x.shape[0], x.shape[1]))
        return x + self.k / 100


def test_per_sample_grouping_and_scatter():
    """Each sample goes through exactly its own sub-policy, once, and lands back in its row."""
    aa = PerSampleAutoAugment("cifar10")
    seen: list = []
    aa.sub_policies = torch.nn.ModuleList(_AddK(k, seen) for k in range(25))
    x = torch.rand(300, 1, 8, 8)
    choice = torch.randint(0, 25, (300,), generator=torch.Generator().manual_seed(0))
    choice[:5] = 7                                           # a group of several
    out = aa(x, choice)
    torch.testing.assert_close(out, x + choice.view(-1, 1, 1, 1) / 100, atol=1e-6, rtol=0)
    assert sorted(k for k, _, _ in seen) == sorted(set(choice.tolist()))   # one call per group
    assert sum(n for _, n, _ in seen) == 300


@pytest.mark.slow
def test_color_sub_policies_run_on_one_channel():
    """Kornia's saturation needs RGB: those sub-policies get the grey channel repeated."""
    aa = PerSampleAutoAugment("cifar10")
    assert any(aa.needs_rgb) and not all(aa.needs_rgb)
    x = torch.rand(50, 1, 16, 16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for k in range(25):
            out = aa(x, torch.full((50,), k))
            assert out.shape == x.shape and torch.isfinite(out).all()
            assert out.min() >= -1e-5 and out.max() <= 1 + 1e-5


def test_sub_policies_differ_within_one_batch(real_images):
    """A real call draws many sub-policies per batch (Kornia alone would use one)."""
    aug = make(AugConfig.off(resize=0, crop=0, autoaugment="cifar10"))
    groups: list = []
    for k, sub in enumerate(aug._autoaugment.sub_policies):
        sub.register_forward_pre_hook(lambda m, args, kw, k=k: groups.append((k, args[0].shape[0])),
                                      with_kwargs=True)
    images, labels = real_images[0][:512], real_images[1][:512]
    aug(images, labels)
    assert len(groups) >= 20                           # 25 sub-policies, ~20 samples each
    assert sum(n for _, n in groups) == 512
    assert max(n for _, n in groups) < 60


@pytest.mark.slow
def test_global_rng_untouched(real_images):
    """Calling the backend does not change torch's global RNG from the caller's point of view."""
    images, labels = real_images[0][:128], real_images[1][:128]
    aug = make(mixup_p=0.25)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    aug(images, labels)
    aug(images, labels)
    assert torch.equal(torch.get_rng_state(), before)
    expected = torch.rand(5, generator=torch.Generator().manual_seed(123))
    assert torch.equal(torch.rand(5), expected)


@pytest.mark.slow
def test_stream_independent_of_caller_seed(real_images):
    """The backend's stream depends on its own seed only, not on the caller's global seeding."""
    images, labels = real_images[0][:128], real_images[1][:128]
    a, b = make(seed=5), make(seed=5)
    torch.manual_seed(1)
    xa, ya = a(images, labels)
    torch.manual_seed(2)
    torch.rand(1000)
    xb, yb = b(images, labels)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_erasing_is_the_shared_draw(real_images):
    """Erasing only: the boxes are the shared draw (fastfm.augment.erasing) from torch's global CPU
    generator as the augmenter forks and seeds it for the batch (nothing else draws before it), and
    K.RandomErasing fills exactly those boxes; samples the draw does not erase get a 0 x 0 box."""
    images, labels = real_images[0][:512], real_images[1][:512]
    cfg = AugConfig.off(resize=0, crop=0, erasing_p=0.5, erasing_value=5.0)
    aug = make(cfg, seed=4)
    x, _ = aug(images, labels)
    g = torch.Generator().manual_seed(derive_seed(4, 0xC0A1, 0))
    boxes = draw_erasing_boxes(cfg, 512, 28, 28, g, "cpu")
    assert torch.equal(x, erase(normalise(images, MEAN, STD), boxes, 5.0))
    assert 0.4 < boxes[0].float().mean() < 0.6
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(4, 0xC0A1, 0))
        p = aug._erase_params((512, 1, 28, 28))
    assert (p["batch_prob"] == 1).all()
    assert torch.equal(p["heights"] > 0, boxes[0]) and torch.equal(p["widths"] > 0, boxes[0])


def test_missing_kornia_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "kornia", None)
    monkeypatch.delitem(sys.modules, "fastfm.augment.kornia_backend", raising=False)
    with pytest.raises(BackendUnavailable, match="kornia"):
        create_augmenter(AugConfig(backend="kornia"), "cpu")


@pytest.mark.gpu
def test_cuda_matches_contract_and_keeps_rngs(real_images):
    """On CUDA: output on the device, contract shapes, and neither global RNG (CPU, CUDA) moves."""
    images, labels = real_images[0][:256].cuda(), real_images[1][:256].cuda()
    aug = create_augmenter(AugConfig(backend="kornia"), "cuda", seed=0, mean=MEAN, std=STD)
    cpu, gpu = torch.get_rng_state(), torch.cuda.get_rng_state()
    x, y = aug(images, labels)
    assert x.is_cuda and y.is_cuda and x.shape == (256, 1, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.sum(1), torch.ones(256, device="cuda"), atol=1e-5, rtol=0)
    assert torch.equal(torch.get_rng_state(), cpu) and torch.equal(torch.cuda.get_rng_state(), gpu)
    state = aug.state_dict()
    x1, _ = aug(images, labels)
    aug.load_state_dict(state)
    x2, _ = aug(images, labels)
    assert torch.equal(x1, x2)
