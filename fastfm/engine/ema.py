"""An exponential moving average of a model's weights, updated with one fused foreach call per step.

:class:`ModelEma` keeps timm ``ModelEmaV3``'s arithmetic (the same decay schedule, the same
``_foreach_lerp_`` over the floating-point state, plain copies of the integer state such as
BatchNorm's ``num_batches_tracked``) but builds its tensor lists once: timm's ``update`` walks both
models' ``state_dict()`` every step, host work on the order of a small model's whole GPU step.  The
lists stay valid because training and ``load_state_dict`` update those tensors in place.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn


class ModelEma:
    """EMA of ``model``'s state (parameters and persistent buffers), bound to ``model`` once.

    ``module``: the averaged copy (eval mode), what evaluation and checkpoints use
    (``ema.module.state_dict()``, ``ema.module.load_state_dict(...)``).  ``update(step)``: after
    the optimizer step of global step ``step``; never syncs.  With ``warmup`` the decay is timm's
    ``min(decay, 1 - (1 + s) ** -2/3)`` with ``s = step - 1``, and steps 0 and 1 copy the weights
    (decay 0), exactly as ``ModelEmaV3(use_warmup=True)``.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True, warmup_power: float = 2 / 3):
        self.module = deepcopy(model).eval()
        self.decay, self.warmup, self.warmup_power = decay, warmup, warmup_power
        # state_dict(keep_vars=True) pairs the two models' tensors in the order timm uses; .detach()
        # gives in-place-updatable aliases of the parameters (no autograd bookkeeping).
        src = [t.detach() for t in model.state_dict(keep_vars=True).values()]
        dst = [t.detach() for t in self.module.state_dict(keep_vars=True).values()]
        if any(t.dtype in (torch.bfloat16, torch.float16) for t in dst):
            # timm rounds low-precision EMA tensors stochastically; fastfm keeps fp32 weights
            # (autocast does the low precision), so that path is not reproduced here.
            raise ValueError("ModelEma: the model must keep float32 weights (autocast for bf16/fp16)")
        self._float = ([d for d in dst if d.is_floating_point()], [s for s in src if s.is_floating_point()])
        self._other = ([d for d in dst if not d.is_floating_point()],
                       [s for s in src if not s.is_floating_point()])

    def get_decay(self, step: int) -> float:
        """timm ``ModelEmaV3.get_decay`` (update_after_step 0, min_decay 0, warmup_gamma 1)."""
        step = max(0, step - 1)
        if step <= 0:
            return 0.0
        if self.warmup:
            return max(min(1 - (1 + step) ** -self.warmup_power, self.decay), 0.0)
        return self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        weight = 1.0 - self.get_decay(step)
        torch._foreach_lerp_(self._float[0], self._float[1], weight)
        if self._other[0]:
            torch._foreach_copy_(self._other[0], self._other[1])
