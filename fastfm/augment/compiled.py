"""The augmenter as the hot path calls it under ``train.compile_mode``: the native recipe's pure
part compiled with ``torch.compile(fullgraph=True)``, the random draws still eager.

Why two phases.  An explicit ``torch.Generator`` cannot live inside a compiled graph, and a graph
that draws its own numbers (Philox inside inductor) would give a stream that no eager call, no
checkpoint and no other device reproduces.  :meth:`~fastfm.augment.native_backend.NativeAugmenter.graph_call`
therefore makes every random draw eagerly, from the augmenter's one generator and in the eager
call's order, then runs :meth:`~fastfm.augment.native_backend.NativeAugmenter.apply` -- a pure
function of (pixels, labels, draws) on the masked AutoAugment dispatch (no host reads), ending in
the base class's tail as an eager call does -- compiled.  Hence, against the eager call:

* the same draws, in the same order, from the same generator, and the same generator state after a
  call, so ``state_dict()``/``load_state_dict()`` (and a resumed run) behave exactly as in eager
  mode, and eager and compiled runs can resume each other;
* pixel values may differ in the last float bits (inductor fuses and reorders float arithmetic in
  the resize, normalisation and mixing); integer ops -- crop, flip, uint8 AutoAugment, the erasing
  masks -- are exact.  tests/test_compiled_augment.py checks both and the statistics of the ops.

The first call for a batch shape runs ``apply`` once eagerly on its draws (discarding the result)
before compiling: it fills the per-size tables the kernels cache on the object, so that the trace
sees them as constants instead of tracing (and guarding on) their construction.  Shapes are static
(``dynamic=False``): the training loader drops the last partial batch, so one graph serves a run.

CUDA graphs.  ``reduce-overhead`` is used for the model only; the augmenter is compiled with
inductor's default mode whatever the model's mode.  Fusion already turns its few hundred small
launches into a few dozen, and its inputs are fresh tensors every step (a CUDA graph would copy
them into static buffers, and the model's own graphs then read its output).

Kornia and DALI have no pure phase (their random draws happen inside their own ops), so
:func:`compile_augmenter` returns them unchanged: they run eagerly under every compile mode.

Not on the CPU.  The compiled graph is the masked AutoAugment dispatch (every op group on the whole
batch, selected per sample): on a GPU it replaces a few hundred launches, on a CPU it only adds work
that the grouped dispatch avoids, and compiled masked stays slower there than eager grouped.  So on
the CPU the hot path keeps the eager augmenter whatever ``compile_mode`` says; the tests build
:class:`CompiledAugment` directly.
"""

from __future__ import annotations

import functools

import torch

from .base import Augmenter


class CompiledAugment:
    """``augment(images, labels) -> (x, y)``: ``augmenter``'s call with its pure part compiled (see
    the module docstring).  ``augmenter`` keeps the state: checkpoint it, not this wrapper."""

    def __init__(self, augmenter: Augmenter, mode: str = "default"):
        self.augmenter = augmenter
        self.mode = mode
        self._eager = functools.partial(augmenter.apply, dispatch="masked")
        self._compiled = torch.compile(self._eager, fullgraph=True, dynamic=False, mode=mode)
        self._warm: set[tuple[int, ...]] = set()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.augmenter.graph_call(images, labels, self._apply)

    def _apply(self, images: torch.Tensor, labels: torch.Tensor, draws: dict):
        shape = tuple(images.shape)
        if shape not in self._warm:
            self._eager(images, labels, draws)        # fills the per-size caches outside the graph
            self._warm.add(shape)
        return self._compiled(images, labels, draws)

    def __repr__(self) -> str:
        return f"CompiledAugment({self.augmenter.name}, mode={self.mode!r})"


def compile_augmenter(augmenter: Augmenter, compile_mode: str):
    """What the hot path calls per batch for ``train.compile_mode`` = ``compile_mode``:
    ``augmenter`` itself for ``"none"``, for backends without a pure phase (Kornia, DALI) and on the
    CPU, else a :class:`CompiledAugment` (inductor's default mode: see the module docstring for why
    not ``reduce-overhead``, and why not on the CPU)."""
    if compile_mode == "none" or not hasattr(augmenter, "graph_call") or augmenter.device.type == "cpu":
        return augmenter
    return CompiledAugment(augmenter, "default")
