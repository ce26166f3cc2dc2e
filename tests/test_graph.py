"""The hot path is graph-capturable: the native augmenter's full recipe on the masked
(CUDA, no-sync) AutoAugment path traces as one ``torch.compile`` graph with no break, and the
two-phase call (draws eagerly, then the pure function) gives the eager call's bits, compiled or not.
CPU only: ``torch._dynamo.explain`` and the ``eager``/``aot_eager`` backends need no C++ compiler."""

import functools

import pytest
import torch

from fastfm.augment import AugConfig, create_augmenter

MEAN, STD = 0.286, 0.353


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def full_recipe(**kw) -> AugConfig:
    cfg = AugConfig(**kw)       # the defaults: resize 36, crop 32, flip, AutoAugment cifar10,
    assert cfg.resize == 36 and cfg.crop == 32 and cfg.flip_p > 0 and cfg.autoaugment == "cifar10"
    assert cfg.erasing_p > 0 and cfg.cutmix_p > 0      # erasing and CutMix
    return cfg


def test_full_native_recipe_is_one_graph_without_breaks():
    aug = create_augmenter(full_recipe(), "cpu", seed=0, mean=MEAN, std=STD)
    images, labels = batch()
    apply = functools.partial(aug.apply, dispatch="masked")
    apply(images, labels, aug.draw(64, 28, 28))         # builds the per-size tables outside the graph
    explained = torch._dynamo.explain(apply)(images, labels, aug.draw(64, 28, 28))
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize("backend", [None, pytest.param("eager", marks=pytest.mark.slow),
                                     pytest.param("aot_eager", marks=pytest.mark.slow)])
def test_two_phase_call_matches_the_eager_call_bit_for_bit(backend):
    """Same seed -> same generator stream -> same bits, for the masked path compiled with
    ``fullgraph=True`` too; so compiled statistics (flip rate, crop offsets, sub-policy frequencies,
    CutMix areas) are exactly the eager ones, which tests/test_augment_native.py checks."""
    cfg = full_recipe(mixup_p=0.3)
    eager = create_augmenter(cfg, "cpu", seed=5, mean=MEAN, std=STD)
    graph = create_augmenter(cfg, "cpu", seed=5, mean=MEAN, std=STD)
    apply = functools.partial(graph.apply, dispatch="masked")
    if backend is not None:
        torch._dynamo.reset()
        apply = torch.compile(apply, backend=backend, fullgraph=True)
    for seed in range(3):
        images, labels = batch(seed=seed)
        x0, y0 = eager(images, labels)
        x1, y1 = graph.graph_call(images, labels, apply)
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert torch.equal(eager.state_dict()["generator"], graph.state_dict()["generator"])   # resumable


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_training_step_graphs_have_no_breaks(optimizer):
    """Forward + loss (as :class:`~fastfm.engine.step.OptimizerStep` computes them) is one graph,
    whose backward AOTAutograd compiles with it; the optimizer step is another.  ``loss.backward()``
    itself is not traced by Dynamo (a graph break unless compiled autograd is on), which is why the
    step is captured as these two graphs rather than one ``fullgraph`` function."""
    import torch.nn.functional as F

    from fastfm.config import Config
    from fastfm.engine.optim import create_optimizer
    from fastfm.models import create_model

    cfg = Config.from_dict({"model": {"name": "wrn", "depth": 10, "width": 1}, "optim": {"name": optimizer}})
    model = create_model(cfg)
    opt = create_optimizer(model, cfg.optim, torch.device("cpu"))
    x, t = torch.randn(8, 1, 32, 32), torch.softmax(torch.randn(8, 10), 1)

    def forward_loss(x, t):
        return F.cross_entropy(model(x).float(), t, label_smoothing=0.1)

    def optimizer_step():
        opt.step()
        opt.zero_grad(set_to_none=True)

    for fn, args in ((forward_loss, (x, t)), (optimizer_step, ())):
        if fn is optimizer_step:
            forward_loss(x, t).backward()
        torch._dynamo.reset()
        explained = torch._dynamo.explain(fn)(*args)
        assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
        assert explained.graph_count == 1


# ATen operator calls (views included) of one eager call of the full native recipe at batch 128 on
# the masked AutoAugment dispatch.  The count is independent of the batch size and of the data, so
# a bound is a behaviour, not a timing: a regression guard on the launches per batch.
MAX_OPS_PER_CALL = 218


def test_dispatch_count_of_the_masked_recipe_stays_bounded():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    aug = create_augmenter(full_recipe(), "cpu", seed=0, mean=MEAN, std=STD)
    aug.autoaugment.dispatch = "masked"
    images, labels = batch(128)
    aug(images, labels)                                  # per-size tables built once, not counted
    with Count():
        aug(images, labels)
    assert 0 < Count.calls <= MAX_OPS_PER_CALL
