"""``create_model(cfg)``: this repo's WideResNet or any timm model, by name, for 10 classes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import Config, ConfigError
from .wrn import WideResNet


def create_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` for ``cfg.aug.channels`` input channels and ``cfg.aug.num_classes`` classes.

    ``model.name == "wrn"`` gives :class:`~fastfm.models.wrn.WideResNet`; any other name goes to
    ``timm.create_model(name, num_classes=..., in_chans=..., pretrained=False)``.  Pretrained weights
    come only from the local file ``model.pretrained`` (no model hub is reachable): for timm models
    through timm's own loader, which adapts the stem to 1 channel and drops a 1000-class head; for a
    WRN, a state dict or a fastfm checkpoint of the same architecture.  Parameters are float32 on
    the CPU; the caller moves the model.  Raises :class:`ConfigError` for an unknown name or a
    missing weights file.
    """
    m = cfg.model
    weights = Path(m.pretrained) if m.pretrained else None
    if weights is not None and not weights.is_file():
        raise ConfigError(f"model.pretrained: {weights} is not a file; pretrained weights must be a "
                          f"local file (no model hub is reachable from here)")
    if m.name == "wrn":
        model = WideResNet(m.depth, m.width, num_classes=cfg.aug.num_classes, in_chans=cfg.aug.channels,
                           act="relu" if m.act == "default" else m.act, dropout=m.dropout)
        if weights is not None:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("model", state))
        return model
    return _create_timm(cfg, weights)


def _create_timm(cfg: Config, weights: Path | None) -> nn.Module:
    import timm  # imported here: timm is slow to import and WRN runs do not need it

    m = cfg.model
    if not timm.is_model(m.name):
        raise ConfigError(f"model.name: {m.name!r} is neither 'wrn' nor a timm model "
                          f"(see timm.list_models(), e.g. resnet34, efficientnet_b0)")
    kwargs = {}
    if m.act != "default":
        kwargs["act_layer"] = m.act
    if m.dropout > 0:
        kwargs["drop_rate"] = m.dropout
    if weights is not None:
        # 'file' is the source timm's loader prefers when the config does not name the hub itself.
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights), "source": ""}
    return timm.create_model(m.name, pretrained=weights is not None, num_classes=cfg.aug.num_classes,
                             in_chans=cfg.aug.channels, **kwargs)
