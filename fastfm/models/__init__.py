"""Models: this repo's WideResNet and, by name, any timm model (``create_model``)."""

from .factory import create_model, to_device
from .wrn import WideResNet

__all__ = ["WideResNet", "create_model", "to_device"]
