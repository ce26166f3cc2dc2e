"""DDP on CPU (gloo, 2 processes spawned with torch.multiprocessing): exact evaluation across ranks,
one step on 2 ranks equal to one step on 1, and a whole run stopped mid-epoch and resumed bit for bit
(per-rank random streams in the checkpoint)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from helpers import StopAtCheck, assert_same_state, free_port, tiny_config

from fastfm.augment import AugConfig, create_augmenter
from fastfm.data.resident import EpochLoader, ResidentData
from fastfm.distributed import cleanup, init_distributed, wrap_ddp
from fastfm.engine.amp import Precision, create_gradient_update
from fastfm.engine.checkpoint import evaluate_checkpoint, load_checkpoint
from fastfm.engine.run import train
from fastfm.engine.signals import Interrupted
from fastfm.engine.step import OptimizerStep

pytestmark = pytest.mark.slow


def spawn(fn, world_size: int, *args) -> None:
    """Run ``fn(rank, world_size, port, *args)`` in ``world_size`` processes (torchrun's environment)."""
    mp.spawn(_entry, args=(fn, world_size, free_port(), args), nprocs=world_size, join=True)


def _entry(rank, fn, world_size, port, args):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)             # two processes on two cores
    fn(rank, world_size, *args)


# ---------------------------------------------------------------------- evaluation


def _evaluate(rank, world_size, ckpt, out):
    res = evaluate_checkpoint(ckpt, tta=True)
    cleanup()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)


def test_evaluation_is_exact_across_world_sizes(tmp_path, data_root):
    # 2000 test images in batches of 500: the same batches whichever the world size.
    cfg = tiny_config(tmp_path, data_root, train={"epochs": 1}, data={"test_limit": 2000},
                      eval={"batch_size": 500})
    train(cfg)
    ckpt = str(tmp_path / "tiny" / "last.pt")
    single = evaluate_checkpoint(ckpt, tta=True)
    spawn(_evaluate, 2, ckpt, str(tmp_path / "ddp.json"))
    double = json.loads((tmp_path / "ddp.json").read_text())
    assert double["test_acc"] == single["test_acc"] and double["test_acc_tta"] == single["test_acc_tta"]
    assert double["per_class_acc"] == single["per_class_acc"]
    assert double["test_loss"] == pytest.approx(single["test_loss"], rel=1e-12)


# ---------------------------------------------------------------------- one step


def _no_bn_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))


def _one_step(rank, world_size, global_batch, out):
    info = init_distributed("cpu")
    model = _no_bn_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    precision = Precision("fp32", info.device)
    scaler = create_gradient_update(precision, model.parameters(), 0.0, info.device, skip_nonfinite=False)
    step = OptimizerStep(wrap_ddp(model, info), optimizer, precision, scaler, label_smoothing=0.1)
    data = ResidentData.synthetic(global_batch, seed=1)
    loader = EpochLoader(data, global_batch // world_size, rank=rank, world_size=world_size, seed=3)
    aug = create_augmenter(AugConfig.off(resize=0, crop=0, channels_last=False), info.device, seed=0,
                           mean=0.5, std=0.25)
    images, labels = next(iter(loader))
    step(*aug(images, labels))
    cleanup()
    if rank == 0:
        torch.save(model.state_dict(), out)


def test_one_step_on_two_ranks_equals_one_rank(tmp_path):
    spawn(_one_step, 1, 64, str(tmp_path / "w1.pt"))
    spawn(_one_step, 2, 64, str(tmp_path / "w2.pt"))
    w1, w2 = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
    initial = _no_bn_net().state_dict()
    for key in w1:
        assert not torch.equal(w1[key], initial[key])          # the step did move the weights
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- a whole run


def _fit(rank, world_size, cfg, stop_at):
    try:
        train(cfg, stop=StopAtCheck(stop_at) if stop_at else None)
    except Interrupted:
        pass


def test_ddp_run_resumes_bit_exact(tmp_path, data_root):
    def cfg(name):
        return tiny_config(tmp_path, data_root, name=name, ema={"enabled": True}, model={"dropout": 0.1},
                           aug={"erasing_p": 0.5, "cutmix_p": 0.5}, train={"epochs": 2})

    spawn(_fit, 2, cfg("straight"), 0)
    spawn(_fit, 2, cfg("resumed"), 2)                 # stops mid-epoch, after step 4
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["progress"]["epoch_step"] == 4
    resumed = cfg("resumed")
    resumed.train.resume = "yes"
    spawn(_fit, 2, resumed, 0)

    state = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert len(state["rank_states"]) == 2
    a, b = (s["augmenter"]["generator"] for s in state["rank_states"])
    assert not torch.equal(a, b)                      # each rank has its own augmentation stream
    assert state["progress"]["step"] == 2 * 8         # 2 epochs of 1024 / 128 global steps
    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt")
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
