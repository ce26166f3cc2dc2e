"""Reliability: bit-exact resume (epoch boundary and mid-epoch), SIGTERM, atomic checkpoint writes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import StopAtCheck, assert_same_state, launch, tiny_args, tiny_config, wait_for

from fastfm.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastfm.engine.folder import MARKER, RunFolder, RunFolderError
from fastfm.engine.run import train
from fastfm.engine.signals import Interrupted


def full_recipe(tmp_path, data_root, name: str, opt: str):
    """Every source of state: dropout (torch RNG), the whole augmentation stack (augmenter RNG),
    EMA, label smoothing, warm-up + cosine, and the optimizer's own state (Lookahead for ranger)."""
    return tiny_config(tmp_path, data_root, name=name,
                       model={"dropout": 0.2},
                       aug={"resize": 32, "crop": 28, "autoaugment": "cifar10", "erasing_p": 0.5,
                            "cutmix_p": 0.3, "mixup_p": 0.2},
                       optim={"name": opt, "lr": 2e-3 if opt != "sgd" else 0.05},
                       train={"label_smoothing": 0.1}, ema={"enabled": True, "decay": 0.9})


@pytest.mark.parametrize("opt, stop_at", [("ranger", 5), ("adamw", 2)], ids=["epoch-boundary", "mid-epoch"])
@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path, data_root, opt, stop_at):
    straight = train(full_recipe(tmp_path, data_root, "straight", opt))

    cfg = full_recipe(tmp_path, data_root, "resumed", opt)
    with pytest.raises(Interrupted):
        train(cfg, stop=StopAtCheck(stop_at))
    progress = load_checkpoint(tmp_path / "resumed" / "last.pt")["progress"]
    assert (progress["epoch"], progress["epoch_step"]) == ((1, 0) if stop_at == 5 else (0, 4))
    cfg.train.resume = "yes"
    resumed = train(cfg)

    assert_same_state(tmp_path / "straight" / "last.pt", tmp_path / "resumed" / "last.pt")
    for key in ("test_acc", "test_loss", "test_acc_tta"):
        assert resumed[key] == straight[key]
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2                 # no epoch logged twice


def test_resume_requires_a_checkpoint(tmp_path, data_root):
    cfg = tiny_config(tmp_path, data_root, train={"resume": "yes"})
    with pytest.raises(RunFolderError, match="nothing to resume"):
        train(cfg)


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_auto_resume_continues(tmp_path, data_root):
    args = tiny_args(data_root, tmp_path, "sig", "--train.log_every", "1", "--train.resume", "auto",
                     images=1024, batch=128, epochs=500)
    proc = launch("scripts/train.py", *args)
    wait_for(proc, "steps/epoch")          # set-up done: the SIGTERM handler is installed
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    first = load_checkpoint(tmp_path / "sig" / "last.pt")["progress"]
    assert first["step"] > 0

    # What torchrun --max-restarts (or a job scheduler) does: the same command again.
    proc = launch("scripts/train.py", *args)
    out = wait_for(proc, "resumed from")
    assert f"batch {first['epoch_step']} of 8" in out
    wait_for(proc, "train loss")            # at least one more epoch finished
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert load_checkpoint(tmp_path / "sig" / "last.pt")["progress"]["step"] > first["step"]


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"config": {}, "model": {"w": torch.ones(3)}}, path)

    def dies_midway(fd):
        raise KeyboardInterrupt          # a kill or a crash after the bytes, before the rename

    monkeypatch.setattr(os, "fsync", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"config": {}, "model": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]       # no temporary file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"config": {}, "model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def _open(run: Path, resume: str, overwrite: bool = False) -> Path | None:
    folder = RunFolder.open(run.parent, run.name, resume, overwrite)
    folder.close()
    return folder.resume_from


def test_run_folder_rules(tmp_path):
    run = tmp_path / "r"
    assert _open(run, "no") is None and (run / MARKER).is_file()
    (run / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RunFolderError, match="already holds a run"):
        _open(run, "no")
    # auto without last.pt: a relaunch of a job that died before its first checkpoint starts afresh
    assert _open(run, "auto") is None and not (run / "metrics.jsonl").exists()
    save_checkpoint({"config": {}}, run / "last.pt")
    assert _open(run, "auto") == run / "last.pt"
    assert _open(run, "yes") == run / "last.pt"
    assert _open(run, "no", overwrite=True) is None and not (run / "last.pt").exists()


def test_run_folder_lock_is_exclusive_and_released(tmp_path):
    held = RunFolder.open(tmp_path, "r", "no", False)
    with pytest.raises(RunFolderError, match=f"in use by another fastfm run \\(pid {os.getpid()}\\)"):
        RunFolder.open(tmp_path, "r", "auto", False)
    held.close()
    RunFolder.open(tmp_path, "r", "auto", False).close()
