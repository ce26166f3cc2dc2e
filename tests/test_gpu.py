"""CUDA checks of what the benchmark times (skipped without CUDA; run by ``benchmarks/gpu_check.sh``).

* every backend's contract on CUDA (a backend whose dependency is missing is skipped, by name);
* the benchmark's full training iteration (:func:`fastfm.bench.hot_path.iteration_fn` over the
  engine's hot path: resident data -> EpochLoader -> native augmentation -> step in bf16,
  channels_last) and the loader alone,
  across epoch boundaries, under ``torch.cuda.set_sync_debug_mode("error")``: any host
  synchronisation in the hot path raises;
* a WRN-40-4 forward/backward in bf16 autocast keeps channels_last in every block and gradient.

Synthetic images throughout: these test the device path, not the data.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from fastfm.augment import BACKENDS, AugConfig, BackendUnavailable, create_augmenter
from fastfm.bench.hot_path import build_single, endless, iteration_fn
from fastfm.bench.throughput import resolve_settings
from fastfm.config import Config
from fastfm.data.resident import EpochLoader, ResidentData

pytestmark = pytest.mark.gpu

MEAN, STD = 0.2860, 0.3530
LO, HI = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD


@contextlib.contextmanager
def no_host_sync():
    """Inside: any synchronising CUDA call raises (outstanding work is finished first)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _augmenter(backend: str, seed: int = 0, **overrides):
    try:
        return create_augmenter(AugConfig(backend=backend, **overrides), "cuda", seed=seed, mean=MEAN, std=STD)
    except BackendUnavailable as exc:
        pytest.skip(f"{backend} missing: {exc}")


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_contract_on_cuda(backend, channels):
    """The output half of the contract (fastfm/augment/base.py) on the device, the default stack."""
    data = ResidentData.synthetic(512, "cuda", seed=1)
    aug = _augmenter(backend, channels=channels, mixup_p=0.25)
    x, y = aug(data.images, data.labels)
    assert x.device.type == "cuda" and y.device.type == "cuda"
    assert x.dtype == torch.float32 and x.shape == (512, channels, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(x).all() and x.min() >= LO - 1e-4 and x.max() <= HI + 1e-4
    assert y.dtype == torch.float32 and y.shape == (512, 10) and (y >= 0).all()
    torch.testing.assert_close(y.sum(1), torch.ones(512, device="cuda"), atol=1e-5, rtol=0)
    e = aug.test_transform(data.images)
    assert e.shape == (512, channels, 32, 32) and e.is_contiguous(memory_format=torch.channels_last)
    # seeded: the same seed gives the same stream; a restored state continues it exactly
    same = _augmenter(backend, channels=channels, mixup_p=0.25)
    assert torch.equal(same(data.images, data.labels)[0], x)
    state = aug.state_dict()
    x1, _ = aug(data.images, data.labels)
    same.load_state_dict(state)
    assert torch.equal(same(data.images, data.labels)[0], x1)


def _hot_path(**overrides):
    s = resolve_settings(device="cuda", model="wrn-16-2", batch_size=128, precision="bf16",
                         channels_last=True, **overrides)
    return build_single(s.cfg, s.device, ResidentData.synthetic(1024, "cuda"), MEAN, STD)


def test_full_iteration_has_no_host_sync():
    """The benchmark's full row: every call the trainer makes per step, native backend with the
    whole default stack (AutoAugment, erasing, CutMix), bf16, channels_last, 2.5 epochs."""
    hot = _hot_path()
    assert hot.precision.name == "bf16" and hot.cfg.aug.backend == "native"
    it = iteration_fn(hot)
    for _ in range(3):                  # cuDNN autotuning, optimizer state, AutoAugment tables
        it()
    with no_host_sync():
        for _ in range(20):             # 8 batches per epoch: crosses two epoch boundaries
            it()
    assert hot.stats.finite.item() == 23
    assert hot.stats.loss_sum.item() > 0


def test_loader_iteration_has_no_host_sync():
    loader = EpochLoader(ResidentData.synthetic(1000, "cuda"), 128, seed=3)
    batches = endless(loader)
    next(batches)
    with no_host_sync():
        seen = [next(batches) for _ in range(20)]          # 7 batches per epoch
    images, labels = seen[-1]
    assert images.shape == (128, 1, 28, 28) and images.dtype == torch.uint8 and labels.is_cuda


def test_wrn40_4_bf16_keeps_channels_last():
    from fastfm.models import create_model

    cfg = Config.from_dict({"model": {"name": "wrn", "depth": 40, "width": 4}})
    model = create_model(cfg).cuda().to(memory_format=torch.channels_last).train()
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append((type(m).__name__, o)))
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, type(model.blocks[0])))]
    x = torch.randn(64, 1, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(x)
    logits.float().sum().backward()
    for h in hooks:
        h.remove()
    assert logits.shape == (64, 10) and len(outputs) == len(hooks) == 18 + 40    # blocks, convs
    for name, o in outputs:
        assert o.dtype == torch.bfloat16, name
        assert o.is_contiguous(memory_format=torch.channels_last), (name, o.shape, o.stride())
    for name, p in model.named_parameters():
        if p.dim() == 4:
            assert p.grad.is_contiguous(memory_format=torch.channels_last), name
