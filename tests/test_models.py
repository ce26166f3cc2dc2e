"""Models: the WideResNet layout and parameter count, timm models by name, local pretrained weights."""

from __future__ import annotations

import pickle

import pytest
import torch

from fastfm.config import Config, ConfigError
from fastfm.models import WideResNet, create_model
from fastfm.models.factory import read_weights, state_dict_misfit


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


class NotWeights:
    """A pickled object: ``weights_only`` loading must refuse it, never run it."""


def _wrn10(**model) -> Config:
    return Config.from_dict({"model": {"depth": 10, "width": 1, **model}})


@pytest.mark.parametrize("content, message", [
    ("object", "is not a plain weights file (UnpicklingError)"),
    ("list", "holds a list, not a state dict"),
    ("tensor", "holds a Tensor, not a state dict"),
    ("numbers", "entries that are not named tensors: a"),
    ("nan", "holds NaN or inf in fc.weight"),
])
def test_pretrained_file_must_be_plain_finite_weights(tmp_path, content, message):
    path = tmp_path / "w.pt"
    if content == "object":
        with open(path, "wb") as f:
            pickle.dump(NotWeights(), f)
    elif content == "nan":
        state = create_model(_wrn10()).state_dict()
        state["fc.weight"][0, 0] = float("inf")
        torch.save(state, path)
    else:
        torch.save({"list": [torch.zeros(2)], "tensor": torch.zeros(2), "numbers": {"a": 1}}[content], path)
    for name in ("wrn", "resnet18"):
        with pytest.raises(ConfigError) as e:
            create_model(Config.from_dict({"model": {"name": name, "depth": 10, "width": 1,
                                                     "pretrained": str(path)}}))
        assert str(e.value).startswith(f"model.pretrained: {path} ") and message in str(e.value)


def test_pretrained_weights_of_another_architecture_are_refused(tmp_path):
    import timm

    path = tmp_path / "w.pt"
    torch.save(create_model(_wrn10()).state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit wrn-16-1 .*of another shape"):
        create_model(Config.from_dict({"model": {"depth": 16, "width": 1, "pretrained": str(path)}}))
    # timm loads non-strictly when it replaces the head: without the check, this would be a
    # randomly initialised resnet18 that claims to be pretrained.
    with pytest.raises(ConfigError, match="does not fit resnet18: 100 of the model's tensors missing"):
        create_model(Config.from_dict({"model": {"name": "resnet18", "pretrained": str(path)}, "aug": {"channels": 1}}))
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit resnet18: 96 not in the model"):
        create_model(Config.from_dict({"model": {"name": "resnet18", "pretrained": str(path)}, "aug": {"channels": 1}}))


def test_read_weights_unwraps_checkpoints_and_ddp_prefixes(tmp_path):
    src = create_model(_wrn10()).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.items()}, "epoch": 3}, tmp_path / "w.pt")
    state = read_weights(tmp_path / "w.pt")
    assert state.keys() == src.keys() and state_dict_misfit(src, state) is None
    m = create_model(_wrn10(pretrained=str(tmp_path / "w.pt")))
    assert torch.equal(m.fc.weight, src["fc.weight"])


def test_state_dict_misfit_names_what_differs():
    model = create_model(_wrn10()).state_dict()
    given = {k: v for k, v in model.items() if k != "fc.bias" and not k.endswith("num_batches_tracked")}
    given["fc.weight"] = torch.zeros(10, 7)
    given["extra"] = torch.zeros(1)
    why = state_dict_misfit(model, given)
    assert "1 of the model's tensors missing (fc.bias)" in why and "1 not in the model (extra)" in why
    assert "fc.weight (10, 7) (model: (10, 64))" in why
    assert state_dict_misfit(model, given, ignore=("fc.", "extra")) is None
