"""The training loop on CPU: learning, run-folder outputs, non-finite losses, the pieces of the step.

``helpers.tiny_config`` trains a WRN-10-1 on a real 1024-image subset: 8 steps per epoch, a second or
two per epoch on 2 cores.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import run_script, tiny_config

from fastfm.config import Config
from fastfm.engine import step as step_mod
from fastfm.engine.amp import Precision, create_gradient_update
from fastfm.engine.checkpoint import evaluate_checkpoint, load_checkpoint
from fastfm.engine.evaluate import shift_images, tta_views
from fastfm.engine.optim import WarmupCosine
from fastfm.engine.run import train
from fastfm.engine.step import NonFiniteLoss, OptimizerStep


@pytest.mark.slow
def test_tiny_model_learns_and_writes_run_folder(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, train={"epochs": 3}, data={"train_limit": 2048})
    summary = train(cfg)
    assert summary["test_acc"] > 0.6            # chance is 0.1
    run = tmp_path / "tiny"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt", "curves.png", "confusion.png"):
        assert (run / name).is_file(), name
    assert Config.load(run / "config.yaml", ["--name", "tiny"]) == cfg
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ("lr", "train_loss", "test_loss", "test_acc", "images_per_sec", "wall_time_s"):
        assert all(r[key] is not None for r in records), key
    saved = json.loads((run / "summary.json").read_text())
    for key in ("test_acc", "test_loss", "test_acc_tta", "best_test_acc", "images_per_sec", "device",
                "world_size", "epochs", "wall_time_s", "git_revision", "per_class_acc"):
        assert key in saved, key
    assert saved["tta_views"] == 10 and saved["world_size"] == 1 and saved["epochs"] == 3
    assert saved["test_acc"] == records[-1]["test_acc"]
    # The checkpoint rebuilds the model from its own config: the same accuracy, exactly.
    again = evaluate_checkpoint(str(run / "last.pt"), tta=True)
    assert again["test_acc"] == saved["test_acc"] and again["test_acc_tta"] == saved["test_acc_tta"]


@pytest.mark.slow
def test_evaluate_script(tmp_path, tiny_run):
    r = run_script("scripts/evaluate.py", "--ckpt", tiny_run / "best.pt", "--tta")
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "with TTA (2 views)" in r.stdout and "Ankle boot" in r.stdout   # flip TTA
    r = run_script("scripts/evaluate.py", "--ckpt", tmp_path / "nope.pt")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


class NaNAt:
    """Wraps an augmenter so that the ``step``-th training batch (1-based) is all NaN."""

    def __init__(self, aug, step: int):
        self.aug, self.step, self.calls = aug, step, 0

    def __call__(self, images, labels):
        self.calls += 1
        x, y = self.aug(images, labels)
        return (torch.full_like(x, float("nan")) if self.calls == self.step else x), y

    def __getattr__(self, name):
        return getattr(self.aug, name)


def _poison(monkeypatch, step: int):
    real = step_mod.create_augmenter
    monkeypatch.setattr(step_mod, "create_augmenter", lambda *a, **k: NaNAt(real(*a, **k), step))


def test_nonfinite_loss_stops_and_names_the_step(tmp_path, data_root, monkeypatch):
    _poison(monkeypatch, step=5)
    with pytest.raises(NonFiniteLoss, match=r"at step 5 \(epoch 1, batch 5 of 8\)"):
        train(tiny_config(tmp_path, data_root))


@pytest.mark.slow
def test_nonfinite_loss_skip_mode(tmp_path, data_root, monkeypatch):
    _poison(monkeypatch, step=11)
    train(tiny_config(tmp_path, data_root, train={"on_nonfinite": "skip"}))
    records = [json.loads(line) for line in (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records] == [0, 1]
    state = load_checkpoint(tmp_path / "tiny" / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert state["progress"]["step"] == 16 and state["progress"]["skipped"] == 1


def test_skipping_update_leaves_weights_and_counts():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    update = create_gradient_update(Precision("fp32", torch.device("cpu")), model.parameters(), 1.0,
                                    torch.device("cpu"), skip_nonfinite=True)
    before = [p.detach().clone() for p in model.parameters()]
    update(model(torch.full((2, 4), float("nan"))).sum(), opt)
    assert int(update.skipped) == 1
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    update(model(torch.ones(2, 4)).sum(), opt)
    assert int(update.skipped) == 1
    assert not torch.equal(before[0], model.weight)


def test_warmup_cosine_schedule():
    s = WarmupCosine(1.0, total_steps=100, warmup_steps=10, start_factor=0.01, end_factor=0.0)
    assert s(0) == pytest.approx(0.01)
    assert s(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s(10) == pytest.approx(1.0)
    assert s(99) == pytest.approx(0.0, abs=1e-12)
    lrs = [s(i) for i in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert WarmupCosine(1.0, 10, 50, 0.1, 0.0)(9) < 1.0      # warm-up longer than the run


def test_optimizer_step_returns_the_smoothed_soft_target_loss():
    """The loss the step reports (and trains on) is the label-smoothed cross-entropy of the model's
    logits against the (CutMix/MixUp) soft targets: with one-hot targets it must equal the
    hard-label loss of the same logits, and a mixed target must move it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)      # lr 0: the weights stay put
    prec = Precision("fp32", torch.device("cpu"))
    update = create_gradient_update(prec, model.parameters(), 0.0, torch.device("cpu"), skip_nonfinite=False)
    step = OptimizerStep(model, optimizer, prec, update, label_smoothing=0.1)
    x, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    with torch.no_grad():
        reference = F.cross_entropy(model(x), labels, label_smoothing=0.1)
    one_hot = F.one_hot(labels, 10).float()
    loss = step(x, one_hot)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and not loss.requires_grad
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    mixed = 0.5 * one_hot + 0.5 * one_hot.roll(1, 0)
    assert not torch.allclose(step(x, mixed), reference)


def test_tta_views_and_shift():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.uint8).view(2, 1, 5, 5)
    s = shift_images(x, 1, -2)
    assert torch.equal(s[..., 1:, :3], x[..., :4, 2:])
    assert s[..., 0, :].eq(0).all() and s[..., 3:].eq(0).all()
    views = tta_views(lambda t: t.float(), flip=True, shift=2)
    assert len(views) == 10
    assert torch.equal(views[0](x), x.float()) and torch.equal(views[5](x), x.flip(-1).float())


@pytest.mark.gpu
@pytest.mark.parametrize("precision, opt", [("bf16", "adamw"), ("fp16", "adamw"), ("bf16", "ranger")])
def test_training_steps_do_not_sync_on_cuda(precision, opt):
    """The trainer's own hot path, ``HotPath.iteration`` as built by ``build_hot_path`` (loader,
    augmenter, step, stats, EMA, schedule), under CUDA's sync debug mode: any device->host
    synchronisation raises."""
    from fastfm.data.resident import ResidentData
    from fastfm.distributed import DistInfo
    from fastfm.engine.step import build_hot_path

    dev = torch.device("cuda")
    cfg = Config.from_dict({"model": {"depth": 10, "width": 1},
                            "optim": {"name": opt, "clip_grad": 1.0},
                            "aug": {"cutmix_p": 0.5, "autoaugment": "cifar10", "erasing_p": 0.5},
                            "train": {"precision": precision, "batch_size": 128, "epochs": 1},
                            "ema": {"enabled": True}})
    hot = build_hot_path(cfg, DistInfo(0, 1, 0, dev), ResidentData.synthetic(2048, dev), 0.286, 0.353)
    hot.stats.reset(0)
    batches = iter(hot.loader)
    try:
        for i in range(12):
            if i == 4:                   # after cuDNN autotuning and lazy initialisation
                torch.cuda.set_sync_debug_mode("error")
            hot.iteration(*next(batches), i, i)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert hot.stats.finite.item() == 12
