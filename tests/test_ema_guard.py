"""The hot path's per-step helpers: the foreach EMA (timm ModelEmaV3's arithmetic without a
state_dict() walk per step), the foreach BufferGuard, and train.compile_mode's checks."""

import pytest
import torch
from timm.utils import ModelEmaV3
from torch import nn

from fastfm.config import Config, ConfigError
from fastfm.engine.amp import BufferGuard
from fastfm.engine.ema import ModelEma


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def train_steps(model, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(n):
        x = torch.randn(8, 1, 8, 8, generator=g)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        yield


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_matches_timm_model_ema_v3_bit_for_bit(warmup):
    # Same tensors, same order, same _foreach_lerp_ with the same Python-float weight: bit-identical.
    model = small_model()
    ours, timm = ModelEma(model, decay=0.99, warmup=warmup), ModelEmaV3(model, decay=0.99, use_warmup=warmup)
    for step, _ in enumerate(train_steps(model, 12)):
        ours.update(step)
        timm.update(model, step=step)
        assert ours.get_decay(step) == timm.get_decay(step)
    a, b = ours.module.state_dict(), timm.module.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["1.num_batches_tracked"] == 12
    assert not torch.equal(a["0.weight"], model.state_dict()["0.weight"])   # an average, not a copy


def test_ema_update_calls_no_state_dict(monkeypatch):
    model = small_model()
    ema = ModelEma(model, decay=0.99)
    calls = []
    original = nn.Module.state_dict

    def counting(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "state_dict", counting)
    for step, _ in enumerate(train_steps(model, 3)):
        ema.update(step)
    assert calls == []
    assert ema.module.state_dict().keys() == model.state_dict().keys()   # checkpoints still work


def test_ema_load_state_dict_keeps_the_update_lists_valid():
    model = small_model()
    ema = ModelEma(model, decay=0.5, warmup=False)
    ema.module.load_state_dict({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    ema.update(5)
    assert torch.equal(ema.module[0].weight, 0.5 * model[0].weight.detach())


def test_buffer_guard_restores_only_when_flagged():
    model = small_model()
    guard = BufferGuard(model)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}
    for flag, kept in ((True, False), (False, True)):
        guard.save()
        model.train()(torch.full((4, 1, 8, 8), float("nan")))   # poisons the running statistics
        guard.restore_if(torch.tensor(flag))
        after = {k: v for k, v in model.state_dict().items() if k in before}
        same = all(torch.equal(before[k], after[k]) for k in before)
        assert same != kept
    assert torch.isnan(model[1].running_mean).all() and model[1].num_batches_tracked == 1   # the restored step left no count


def test_compile_mode_is_checked_and_the_old_key_names_its_replacement():
    assert Config.load("fast").train.compile_mode == "default"
    assert Config.load(None, ["--train.compile_mode", "reduce-overhead"]).train.compile_mode == "reduce-overhead"
    with pytest.raises(ConfigError, match=r"^train.compile_mode: 'fast' is not one of none, default"):
        Config.load(None, ["--train.compile_mode", "fast"])
    for load in (lambda: Config.load(None, ["--train.compile", "false"]),
                 lambda: Config.from_dict({"train": {"compile": True}})):
        with pytest.raises(ConfigError, match=r"^train.compile: replaced by train.compile_mode"):
            load()
