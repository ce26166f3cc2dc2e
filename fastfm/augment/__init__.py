"""On-device batch augmentation behind one contract (see :mod:`fastfm.augment.base`).

Backends are chosen by name from :data:`fastfm.config.BACKENDS`; each backend's module, and with it
its optional dependency (Kornia, DALI), is imported only when :func:`create_augmenter` builds it.
Importing this package does not import torch (a configuration can be read without it):
``Augmenter`` is loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..config import BACKENDS, AugConfig

if TYPE_CHECKING:
    import torch

    from .base import Augmenter


class BackendUnavailable(ImportError):
    """The chosen backend's optional dependency is not installed."""


def create_augmenter(cfg: AugConfig, device: torch.device | str, seed: int = 0,
                     mean: float = 0.2860, std: float = 0.3530) -> Augmenter:
    """Build the backend named by ``cfg.backend``.

    ``mean``/``std`` are the training set's pixel statistics (of pixel/255); the defaults are the
    well-known Fashion-MNIST values, but runs pass the ones computed from the resident data.
    """
    cfg.validate()
    target, requirement = BACKENDS[cfg.backend]
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if requirement is None or module_name in str(exc):
            raise
        raise BackendUnavailable(
            f"augmentation backend {cfg.backend!r} needs {requirement}, which is not importable "
            f"({exc}). Install it (pip install {requirement.split(' ')[0]!r}) or choose another "
            f"backend with --aug.backend {{{','.join(b for b in BACKENDS if b != cfg.backend)}}}."
        ) from exc
    return getattr(module, cls_name)(cfg, device=device, seed=seed, mean=mean, std=std)


def __getattr__(name: str):
    # The base class lives in .base, which imports torch: load it only when asked for.
    if name == "Augmenter":
        from .base import Augmenter

        return Augmenter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AugConfig", "Augmenter", "BACKENDS", "BackendUnavailable", "create_augmenter"]
