"""Optimizer construction and the per-step warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OPTIMIZERS, OptimConfig, SchedConfig


def create_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer named by ``cfg.name`` (:data:`fastfm.config.OPTIMIZERS`) over ``model``'s
    parameters, built by timm.

    Weight decay skips biases and normalisation weights (timm's ``filter_bias_and_bn``).
    ``fused=True`` (torch's fused CUDA kernels, which also take GradScaler's inf flag on the device)
    is used on CUDA when ``cfg.fused`` and the optimizer has such a kernel.  NVIDIA apex is
    deliberately not used: torch >= 2.11 has fused Adam/AdamW/SGD built in, and apex has no RAdam to
    fuse Ranger with.
    """
    from timm.optim import (
        create_optimizer_v2,  # timm is slow to import: only when building
    )

    timm_name, has_fused = OPTIMIZERS[cfg.name]
    kwargs = {}
    if cfg.name != "sgd":              # the adaptive optimizers
        kwargs.update(betas=tuple(cfg.betas), eps=cfg.eps)
    if has_fused and cfg.fused and device.type == "cuda":
        kwargs["fused"] = True
    return create_optimizer_v2(model, opt=timm_name, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, filter_bias_and_bn=True, **kwargs)


class WarmupCosine:
    """Learning rate as a pure function of the optimizer-step index (no state to save).

    Steps ``0 .. warmup_steps - 1`` rise linearly from ``lr * start_factor`` towards ``lr``; the
    remaining steps follow a half cosine from ``lr`` down to ``lr * end_factor`` at the last step.
    Call :meth:`apply` before each optimizer step with the number of steps applied so far.
    """

    def __init__(self, lr: float, total_steps: int, warmup_steps: int, start_factor: float,
                 end_factor: float):
        self.lr = lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(warmup_steps, self.total_steps)
        self.start_factor = start_factor
        self.end_factor = end_factor

    @classmethod
    def from_config(cls, lr: float, cfg: SchedConfig, epochs: int, steps_per_epoch: int) -> "WarmupCosine":
        return cls(lr, epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch),
                   cfg.start_factor, cfg.end_factor)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        t = min(step - self.warmup_steps, decay_steps) / max(1, decay_steps - 1)
        return self.end_factor + (1.0 - self.end_factor) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    def __call__(self, step: int) -> float:
        return self.lr * self.factor(step)

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every parameter group's lr for optimizer step ``step``; returns it (a Python float,
        so fused/foreach optimizers take it without a host-device copy)."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
