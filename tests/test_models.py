"""Models: the WideResNet layout and parameter count, timm models by name, local pretrained weights."""

from __future__ import annotations

import pytest
import torch

from fastfm.config import Config, ConfigError
from fastfm.models import WideResNet, create_model


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_wrn40_4_parameter_count():
    # The reference WRN-40-4 layout: 8.95M parameters.
    assert n_params(WideResNet(40, 4, in_chans=3)) == 8_949_210
    assert n_params(WideResNet(40, 4, in_chans=1)) == 8_948_922


@pytest.mark.parametrize("in_chans, size, act, dropout", [(1, 28, "relu", 0.0), (3, 32, "mish", 0.3)])
def test_wrn_forward(in_chans, size, act, dropout):
    m = WideResNet(10, 2, in_chans=in_chans, act=act, dropout=dropout)
    x = torch.randn(4, in_chans, size, size).contiguous(memory_format=torch.channels_last)
    m.to(memory_format=torch.channels_last)
    assert m(x).shape == (4, 10)
    assert any(isinstance(mod, torch.nn.Mish) for mod in m.modules()) == (act == "mish")
    assert any(isinstance(mod, torch.nn.Dropout) for mod in m.modules()) == (dropout > 0)


def test_wrn_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 4"):
        WideResNet(12, 1)


def test_factory_wrn_from_config():
    cfg = Config.from_dict({"model": {"name": "wrn", "depth": 16, "width": 2, "act": "mish"}, "aug": {"channels": 3}})
    m = create_model(cfg)
    assert isinstance(m, WideResNet) and m.stem.in_channels == 3 and m.fc.out_features == 10


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])
def test_factory_timm_model(name):
    cfg = Config.from_dict({"model": {"name": name}, "aug": {"channels": 1, "resize": 0, "crop": 0}})
    m = create_model(cfg).eval()
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_timm_pretrained_from_local_file(tmp_path):
    import timm

    ref = timm.create_model("resnet18", pretrained=False)           # ImageNet-shaped: 3 channels, 1000 classes
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    cfg = Config.from_dict({"model": {"name": "resnet18", "pretrained": str(path)}, "aug": {"channels": 1}})
    m = create_model(cfg)
    assert m.conv1.in_channels == 1 and m.fc.out_features == 10
    assert torch.equal(m.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)


def test_wrn_pretrained_from_fastfm_checkpoint(tmp_path):
    cfg = Config.from_dict({"model": {"depth": 10, "width": 1}})
    src = create_model(cfg)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pt")
    cfg.model.pretrained = str(tmp_path / "w.pt")
    m = create_model(cfg)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), src.state_dict().values()))


@pytest.mark.parametrize("model, message", [
    ({"name": "resnet18", "pretrained": "/nonexistent/w.pth"}, "model.pretrained: /nonexistent/w.pth is not a file"),
    ({"name": "resnet9999"}, "model.name: 'resnet9999' is neither 'wrn' nor a timm model"),
])
def test_factory_errors(model, message):
    with pytest.raises(ConfigError) as e:
        create_model(Config.from_dict({"model": model}))
    assert message in str(e.value)
