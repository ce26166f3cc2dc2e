"""``create_model(cfg)``: this repo's WideResNet or any timm model, by name, for 10 classes; and the
checks that weights read from a file are plain, finite tensors that fit the model they are for."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..config import Config, ConfigError
from .wrn import WideResNet

# Where a training checkpoint keeps its weights, in the order timm's own loader prefers (fastfm's
# checkpoints: "model").
_WEIGHT_ENTRIES = ("state_dict_ema", "model_ema", "state_dict", "model")


def create_model(cfg: Config) -> nn.Module:
    """Build ``cfg.model`` for ``cfg.aug.channels`` input channels and ``cfg.aug.num_classes`` classes,
    float32 on the CPU (the caller moves it).

    ``model.name == "wrn"`` gives :class:`~fastfm.models.wrn.WideResNet`; any other name is a timm
    model.  Pretrained weights come only from the local file ``model.pretrained`` (no model hub is
    reachable), checked by :func:`read_weights`.  A timm model loads them through timm's own loader,
    which adapts the stem to the input channels and drops a 1000-class head, so the file must use
    timm's parameter names for that model; a WRN takes a state dict or a fastfm checkpoint of the
    same architecture.  Raises :class:`ConfigError` for an unknown name, and, naming
    ``model.pretrained``, for weights that are missing, unreadable or do not fit the model.
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
            state = read_weights(weights)
            why = state_dict_misfit(model.state_dict(), state)
            if why:
                raise ConfigError(f"model.pretrained: {weights} does not fit wrn-{m.depth}-{m.width} with "
                                  f"{cfg.aug.channels} input channel(s) and {cfg.aug.num_classes} classes: {why}")
            model.load_state_dict(state)
        return model
    return _create_timm(cfg, weights)


def to_device(model: nn.Module, cfg: Config, device: torch.device) -> nn.Module:
    """``model`` on ``device`` in the run's memory format (channels_last when ``cfg.aug.channels_last``,
    the layout the augmenters deliver), as training and evaluation both need it."""
    fmt = torch.channels_last if cfg.aug.channels_last else torch.contiguous_format
    return model.to(device, memory_format=fmt)


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
    if weights is None:
        return timm.create_model(m.name, pretrained=False, num_classes=cfg.aug.num_classes,
                                 in_chans=cfg.aug.channels, **kwargs)
    state = read_weights(weights)
    # 'file' is the source timm's loader prefers when the config does not name the hub itself.
    kwargs["pretrained_cfg_overlay"] = {"file": str(weights), "source": ""}
    # timm logs the keys it could not place as warnings; for weights that do not fit, the error
    # below says so in one line, so its logs are shown only when the weights are accepted.
    with _held_logs("timm") as held:
        try:
            model = timm.create_model(m.name, pretrained=True, num_classes=cfg.aug.num_classes,
                                      in_chans=cfg.aug.channels, **kwargs)
        except RuntimeError as e:       # load_state_dict's size mismatches, timm's stem adaptation
            raise ConfigError(f"model.pretrained: {weights} does not fit {m.name}: "
                              f"{_one_line(str(e))}") from None
    # timm loads non-strictly whenever it replaces the head (always: 10 classes), so weights of
    # another architecture would leave the model silently at its random initialisation.
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    why = state_dict_misfit(model.state_dict(), state, ignore=tuple(f"{h}." for h in heads), shapes=False)
    if why:
        raise ConfigError(f"model.pretrained: {weights} does not fit {m.name}: {why}")
    for record in held:
        logging.getLogger(record.name).handle(record)
    return model


@contextlib.contextmanager
def _held_logs(name: str):
    """Collect the records of logger ``name`` (and its children) in the yielded list instead of
    emitting them; the caller replays them or drops them."""
    logger = logging.getLogger(name)
    held: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = held.append
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(handler)
    try:
        yield held
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in the file ``path``, on the CPU.

    Accepted: a plain state dict (``torch.save(model.state_dict(), path)``, or ``.safetensors``), or
    a training checkpoint holding one under ``state_dict_ema``, ``model_ema``, ``state_dict`` or
    ``model`` (the first present).  A ``module.`` prefix (a DDP-wrapped model's) is removed.  The
    file is read with ``weights_only=True``: a pickle of anything but tensors and containers is
    refused, never run.  Raises :class:`ConfigError` naming ``model.pretrained`` when the file cannot
    be read that way, holds anything but a mapping of names to tensors, or holds NaN or inf.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            with warnings.catch_warnings():
                # A pickle of another protocol draws a UserWarning just before the refusal below.
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip, safetensors and torch raise many types for foreign files
        raise ConfigError(f"model.pretrained: {path} is not a plain weights file ({type(e).__name__}); "
                          f"expected a state dict of tensors, as written by "
                          f"torch.save(model.state_dict(), path), or a fastfm checkpoint") from None
    if isinstance(obj, dict):
        obj = next((obj[k] for k in _WEIGHT_ENTRIES if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict) or not obj:
        what = "an empty mapping" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise ConfigError(f"model.pretrained: {path} holds {what}, not a state dict of tensors")
    odd = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if odd:
        raise ConfigError(f"model.pretrained: {path} is not a state dict of tensors "
                          f"(entries that are not named tensors: {_some(odd)})")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    bad = nonfinite_tensors(state)
    if bad:
        raise ConfigError(f"model.pretrained: {path} holds NaN or inf in {_some(bad)}")
    return state


def state_dict_misfit(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], *,
                      ignore: tuple[str, ...] = (), shapes: bool = True) -> str | None:
    """Why the tensors ``given`` do not fit ``expected`` (a model's ``state_dict()``), in one line:
    names missing, names not in the model, and (``shapes``) shapes that differ; None when they fit.

    Names starting with a prefix in ``ignore`` (a head that is replaced) are left out on both sides.
    A missing BatchNorm ``num_batches_tracked`` counts as fitting: ``load_state_dict`` fills it in.
    """
    def kept(name: str) -> bool:
        return not name.startswith(ignore)

    missing = [k for k in expected if kept(k) and k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if kept(k) and k not in expected]
    resized = [f"{k} {tuple(given[k].shape)} (model: {tuple(v.shape)})" for k, v in expected.items()
               if shapes and kept(k) and k in given and given[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's tensors missing ({_some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the model ({_some(unexpected)})")
    if resized:
        parts.append(f"{len(resized)} of another shape ({_some(resized)})")
    return "; ".join(parts) or None


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold NaN or inf."""
    return [k for k, v in state.items()
            if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]


def _some(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _one_line(text: str, limit: int = 300) -> str:
    """An exception's message as one line for ``error: ...`` (torch's span several)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
