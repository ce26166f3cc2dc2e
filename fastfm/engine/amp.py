"""Precision set-up, done once per run: an autocast context (:class:`Precision`) and a gradient-update
object (:func:`create_gradient_update`), timm's split of autocast and scaler.

The update object owns backward, loss scaling, gradient clipping, the optimizer step and zeroing
the gradients: the training step calls ``update(loss, optimizer)`` whatever the precision.  It
counts the steps a ``torch.amp.GradScaler`` skips (inf/NaN gradients) on the device, without a host
sync; the trainer reads the count at its periodic refresh (:mod:`fastfm.engine.run`).

Host syncs: bf16/fp32 steps need none.  On the fp16 path, torch's ``GradScaler.step`` reads
``found_inf`` on the host once per step unless the optimizer is fused (Adam, AdamW, SGD with
``fused=True`` on CUDA), which takes the flag on the device: fp16 is sync-free only with a fused
optimizer.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` | ``fp16`` (CUDA) or ``fp32`` (CPU); explicit names pass through."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


class Precision:
    """``autocast()``: a fresh autocast context for ``dtype`` on ``device`` (nullcontext for fp32)."""

    def __init__(self, name: str, device: torch.device):
        self.name = name
        self.dtype = DTYPES[name]
        if self.dtype == torch.float32:
            self.autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        else:
            self.autocast = functools.partial(torch.autocast, device_type=device.type, dtype=self.dtype)


class GradientUpdate:
    """fp32/bf16 update: ``backward``, optional clipping, ``step``, ``zero_grad``; never skips.

    ``skipped``: device count of skipped steps; ``last_skipped``: device bool, whether the latest
    step was skipped (always False here).
    """

    def __init__(self, parameters: Iterable[torch.Tensor], clip_grad: float, device: torch.device):
        self.parameters = list(parameters)
        self.clip_grad = clip_grad
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        self.last_skipped = torch.zeros((), dtype=torch.bool, device=device)

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        loss.backward()
        if self.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.skipped.copy_(state["skipped"])


class ScaledGradientUpdate(GradientUpdate):
    """Loss-scaled update with ``torch.amp.GradScaler``: skips (and counts) steps with inf/NaN grads.

    fp16 uses the usual dynamic scale (2**16 to start).  With ``init_scale=1`` and no growth it is
    the "skip non-finite steps" mode for fp32/bf16: the scale only ever halves after a skip, and
    scaling by a power of two is exact in fp32 gradients.
    """

    def __init__(self, parameters: Iterable[torch.Tensor], clip_grad: float, device: torch.device,
                 init_scale: float = 2.0 ** 16, growth_interval: int = 2000):
        super().__init__(parameters, clip_grad, device)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale,
                                           growth_interval=growth_interval)

    def __call__(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.scale(loss).backward()
        # After update() the scale has shrunk exactly when the step was skipped (backoff < 1).
        # GradScaler keeps it as a device tensor (``_scale``, created by the first scale()): reading
        # it directly is the only way to see the skip without a host sync.
        before = self.scaler._scale.clone()
        if self.clip_grad > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_grad)
        self.scaler.step(optimizer)
        self.scaler.update()
        self.last_skipped = self.scaler._scale < before
        self.skipped += self.last_skipped
        optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scaler.load_state_dict(state["grad_scaler"])


class BufferGuard:
    """Undoes a skipped step's changes to the model's buffers (BatchNorm running statistics).

    The forward pass updates the running statistics before anyone knows the loss is non-finite;
    skipping the optimizer step alone would leave NaN statistics behind.  ``save()`` before the
    forward, ``restore_if(flag)`` after the step: a device-side select, no host sync.  Used only
    with ``train.on_nonfinite: skip``; otherwise :class:`NoGuard`.
    """

    def __init__(self, model: torch.nn.Module):
        # Flat views of the buffers, grouped by dtype and built once: a save is one concatenation,
        # a restore one select and one foreach copy per dtype, with no Python loop over the
        # (hundreds of) buffers per step.  The views stay valid because the forward pass and
        # load_state_dict update the buffers in place.
        self.groups = []
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for b in model.buffers():
            by_dtype.setdefault(b.dtype, []).append(b.detach().view(-1))
        for views in by_dtype.values():
            self.groups.append((views, [v.numel() for v in views], torch.cat(views)))

    def save(self) -> None:
        for views, _, saved in self.groups:
            torch.cat(views, out=saved)

    def restore_if(self, flag: torch.Tensor) -> None:
        for views, sizes, saved in self.groups:
            torch._foreach_copy_(views, torch.where(flag, saved, torch.cat(views)).split(sizes))


class NoGuard:
    """The guard of runs that never skip a step: nothing to save or restore."""

    def save(self) -> None:
        pass

    def restore_if(self, flag: torch.Tensor) -> None:
        pass


def create_gradient_update(precision: Precision, parameters: Iterable[torch.Tensor], clip_grad: float,
                           device: torch.device, skip_nonfinite: bool) -> GradientUpdate:
    """fp16 -> dynamic loss scaling; fp32/bf16 -> plain, or scale-1 skipping when ``skip_nonfinite``."""
    if precision.name == "fp16":
        return ScaledGradientUpdate(parameters, clip_grad, device)
    if skip_nonfinite:
        return ScaledGradientUpdate(parameters, clip_grad, device, init_scale=1.0, growth_interval=2 ** 30)
    return GradientUpdate(parameters, clip_grad, device)


def create_buffer_guard(model: torch.nn.Module, skip_nonfinite: bool) -> BufferGuard | NoGuard:
    return BufferGuard(model) if skip_nonfinite else NoGuard()
