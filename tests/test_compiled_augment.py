"""The compiled augmenter (fastfm/augment/compiled.py) as the hot path uses it under
``train.compile_mode``: inductor on the CPU (the machine's C++ compiler), ``fullgraph=True``.

* the draws stay eager: same targets, same generator stream as the eager call, resumable from an
  eager augmenter's state and back; pixels equal up to float rounding;
* the statistics of its ops -- flip rate, crop offsets, erasing boxes, CutMix areas, MixUp weights,
  a sub-policy per sample -- pass the very checks every backend passes (tests/augment_stats.py),
  run here on the compiled call;
* the hot path picks it for the native backend when ``compile_mode`` is not ``none`` off the CPU,
  and leaves Kornia/DALI (no pure phase), eager runs and CPU runs alone;
* DALI fed one batch ahead (``prefetch``) gives the same batches and resumes exactly.
"""

from __future__ import annotations

import dataclasses

import augment_stats as stats
import pytest
import torch

from fastfm.augment import AugConfig, create_augmenter
from fastfm.augment.compiled import CompiledAugment, compile_augmenter

MEAN, STD = stats.MEAN, stats.STD

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


class Compiled:
    """A native augmenter whose calls go through :class:`CompiledAugment`; every other attribute
    (state_dict, cfg, ...) is the augmenter's."""

    def __init__(self, aug):
        self.aug, self.call = aug, CompiledAugment(aug)

    def __call__(self, images, labels):
        return self.call(images, labels)

    def __getattr__(self, name):
        return getattr(self.aug, name)


@pytest.fixture
def make():
    """``make(cfg_or_None, seed=0, **overrides)`` as in the contract tests, compiled."""
    torch._dynamo.reset()

    def build(cfg: AugConfig | None = None, seed: int = 0, **overrides):
        cfg = cfg if cfg is not None else AugConfig(**overrides)
        cfg.backend = "native"
        return Compiled(create_augmenter(cfg, "cpu", seed=seed, mean=MEAN, std=STD))

    build.backend = "native"
    return build


@pytest.fixture(scope="module")
def batch4k(real_images):
    x, y = real_images
    return torch.cat([x, x]), torch.cat([y, y])


def test_compiled_call_keeps_the_eager_stream_and_resumes_both_ways(make, real_images):
    cfg = AugConfig(mixup_p=0.3)                   # the full recipe, CutMix and MixUp both possible
    eager = create_augmenter(cfg, "cpu", seed=7, mean=MEAN, std=STD)
    comp = make(dataclasses.replace(cfg), seed=7)
    images, labels = real_images[0][:256], real_images[1][:256]
    for _ in range(2):
        x0, y0 = eager(images, labels)
        x1, y1 = comp(images, labels)
        assert torch.equal(y0, y1)                  # CutMix/MixUp weights come from the draws
        torch.testing.assert_close(x1, x0, atol=1e-4, rtol=0)
        assert x1.dtype == torch.float32 and x1.shape == (256, 1, 32, 32)
        assert x1.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(eager.state_dict()["generator"], comp.state_dict()["generator"])
    # an eager run's checkpoint resumes into a compiled one and vice versa, continuing the stream
    state = eager.state_dict()
    resumed = make(dataclasses.replace(cfg), seed=99)
    resumed.load_state_dict(state)
    x0, y0 = eager(images, labels)
    x1, y1 = resumed(images, labels)
    assert torch.equal(y0, y1)
    torch.testing.assert_close(x1, x0, atol=1e-4, rtol=0)
    back = create_augmenter(cfg, "cpu", seed=0, mean=MEAN, std=STD)
    back.load_state_dict(resumed.state_dict())
    assert torch.equal(back(images, labels)[1], eager(images, labels)[1])


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


def test_autoaugment_sub_policy_per_sample(make, real_images):
    stats.check_autoaugment_sub_policy_per_sample(make, real_images, "cifar10")


def test_hot_path_compiles_the_native_augmenter_only_off_the_cpu():
    """The hot path's choice (``HotPath.augment_batch``, derived again when the benchmarks swap the
    augmenter): compiled for the native backend under a compile mode on an accelerator; eager for
    ``none``, for Kornia and DALI, and on the CPU, where the grouped eager dispatch is faster than the
    compiled masked one (fastfm/augment/compiled.py)."""
    from fastfm.config import Config
    from fastfm.data.resident import ResidentData
    from fastfm.distributed import DistInfo
    from fastfm.engine.step import build_hot_path

    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    data = ResidentData.synthetic(256, "cpu")
    for backend, mode in (("native", "default"), ("native", "none"), ("kornia", "default")):
        cfg = Config.from_dict({"model": {"name": "wrn", "depth": 10, "width": 1},
                                "aug": {"backend": backend},
                                "train": {"batch_size": 64, "compile_mode": mode, "epochs": 1}})
        hot = build_hot_path(cfg, info, data, MEAN, STD)
        assert hot.augment_batch is hot.augmenter                         # the CPU: eager
        other = create_augmenter(cfg.aug, "cpu", seed=1, mean=MEAN, std=STD)
        assert dataclasses.replace(hot, augmenter=other).augment_batch is other
        # the same augmenter as if it lived on a GPU (the choice reads only its device; a
        # CompiledAugment compiles lazily, at its first call)
        other.device = torch.device("cuda", 0)
        chosen = compile_augmenter(other, mode)
        if backend == "native" and mode != "none":
            assert isinstance(chosen, CompiledAugment) and chosen.augmenter is other and chosen.mode == "default"
        else:
            assert chosen is other
    for mode in ("default", "reduce-overhead", "max-autotune"):   # the augmenter never takes CUDA graphs
        assert compile_augmenter(create_augmenter(AugConfig(), "cpu"), mode).__class__ is not CompiledAugment
        gpu = create_augmenter(AugConfig(), "cpu")
        gpu.device = torch.device("cuda", 0)
        assert compile_augmenter(gpu, mode).mode == "default"


# ------------------------------------------------------------------ DALI, one batch ahead


def _dali(seed=3, **kw):
    pytest.importorskip("nvidia.dali")
    cfg = AugConfig(backend="dali", **kw)
    return create_augmenter(cfg, "cpu", seed=seed, mean=MEAN, std=STD)


@pytest.mark.slow
def test_dali_prefetch_gives_the_same_batches_and_resumes_exactly(real_images):
    images, labels = real_images
    batches = [(images[i:i + 64], labels[i:i + 64]) for i in range(0, 384, 64)]
    plain = _dali()
    expected = [plain(x, y) for x, y in batches]
    ahead = _dali()
    got, state = [], None
    for i, (x, y) in enumerate(batches):
        got.append(ahead(x, y))
        if i + 1 < len(batches):
            ahead.prefetch(batches[i + 1][0])
        if i == 2:
            state = ahead.state_dict()              # taken with batch 3 in flight
    for (x0, y0), (x1, y1) in zip(expected, got):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    resumed = _dali(seed=0)
    resumed.load_state_dict(state)
    for (x, y), (x0, y0) in zip(batches[3:], expected[3:]):
        x1, y1 = resumed(x, y)
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_dali_prefetch_promise_is_checked(real_images):
    images, labels = real_images
    a, b = images[:32], images[32:64]
    aug = _dali(autoaugment="none")
    aug.prefetch(a)
    with pytest.raises(RuntimeError, match="not been augmented yet"):
        aug.prefetch(b)
    with pytest.raises(ValueError, match="promised"):
        aug(b, labels[32:64])
    x, _ = aug(a, labels[:32])                       # the promise still holds
    assert x.shape == (32, 1, 32, 32)
    with pytest.raises(TypeError, match="uint8"):          # the contract's own input check
        aug.prefetch(a.float())
