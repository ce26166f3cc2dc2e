"""Runs that no mistake can destroy: every test here runs ``scripts/train.py`` in a subprocess,
exactly as a user types it.

Run names and foreign folders, checks before the folder is touched, ``--resume`` after SIGTERM and
SIGINT (bit-identical to an uninterrupted run), the run-folder lock, crashes at every checkpoint
write, leftover temporary files, skipped steps, changed configs and bad checkpoints on resume, and
clear errors for unwritable, full or read-only run folders.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import REPO, assert_error, assert_same_state, launch, run_script, tiny_args, train, wait_for

from fastfm.engine.checkpoint import evaluate_checkpoint, load_checkpoint, save_checkpoint
from fastfm.engine.folder import MARKER


def base(data_root: Path, out: Path, name: str, *extra: str) -> list[str]:
    """A tiny run of 16 steps of 128 per epoch (2048 images), 2 epochs, without TTA."""
    return tiny_args(data_root, out, name, "--eval.tta", "false", *extra, images=2048, batch=128)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the lock file's (it holds the pid of the latest launch)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_root) -> Path:
    """The uninterrupted run every interrupted or crashed one must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("straight")
    r = train(base(data_root, out, "straight"))
    assert r.returncode == 0, r.stderr
    return out / "straight"


# ---------------------------------------------------------------------- names and foreign folders


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/tmp/abs", "x" * 101, "a b", ""])
def test_run_name_must_be_one_plain_component(tmp_path, data_root, name):
    # The layout of the incident: runs/ inside a checkout; "--name .." would have emptied the checkout.
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (checkout / "notes.txt").write_text("mine\n")
    before = tree(checkout)
    for extra in (["--train.resume", "auto"], ["--overwrite"])[:2 if name == ".." else 1]:
        r = train([*base(data_root, checkout / "runs", name), *extra])
        assert_error(r, "name: ", only_line=False)
    assert tree(checkout) == before and not (checkout / "runs").exists()


@pytest.mark.parametrize("extra", [["--overwrite"], ["--train.resume", "auto"], ["--resume"], []])
@pytest.mark.slow
def test_a_folder_fastfm_did_not_create_is_never_touched(tmp_path, data_root, extra):
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    (run / "thesis.tex").write_text("three years of work\n")
    (run / "metrics.jsonl").write_text("my own file of that name\n")
    before = tree(run)
    r = train([*base(data_root, tmp_path / "runs", "mine"), *extra])
    assert_error(r, "was not created by fastfm", only_line=False)
    assert tree(run) == before


@pytest.mark.slow
def test_overwrite_deletes_only_what_fastfm_wrote(tmp_path, data_root):
    args = base(data_root, tmp_path, "r", "--epochs", "1")
    assert train(args).returncode == 0
    (tmp_path / "r" / "my_notes.md").write_text("keep me\n")
    r = train([*args, "--overwrite"])
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r" / "my_notes.md").read_text() == "keep me\n"
    assert "they are kept: my_notes.md" in r.stdout
    assert (tmp_path / "r" / "last.pt").is_file()


@pytest.mark.slow
def test_existing_run_needs_resume_or_overwrite(tmp_path, data_root):
    args = base(data_root, tmp_path, "r", "--epochs", "1")
    assert train(args).returncode == 0
    before = tree(tmp_path / "r")
    assert_error(train(args), "already holds a run: pass --resume", only_line=False)
    assert_error(train([*args, "--resume", "--overwrite"]), "contradict", only_line=False)
    assert tree(tmp_path / "r") == before


@pytest.mark.parametrize("extra, message", [
    pytest.param(["--train.batch_size", "4096"], "train.batch_size: 4096 is larger than the training set (2,048 images",
                 marks=pytest.mark.slow),
    pytest.param(["--train.device", "cuda"], "train.device: ", marks=pytest.mark.slow),
    pytest.param(["--data.root", "/nonexistent/data"], "/nonexistent/data", marks=pytest.mark.slow),
    pytest.param(["--model.pretrained", "/nonexistent/w.pt"], "model.pretrained", marks=pytest.mark.slow),
    (["--lr", "nan"], "optim.lr: expected a finite number"),
    (["--lr", "inf"], "optim.lr: expected a finite number"),
])
def test_everything_is_checked_before_the_run_folder_is_touched(tmp_path, data_root, extra, message):
    if extra[:2] == ["--train.device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    modes = ([], ["--overwrite"], ["--train.resume", "auto"])
    for mode in modes if "4096" in extra else modes[2:]:
        r = train([*base(data_root, tmp_path / "runs", "r"), *extra, *mode])
        assert_error(r, message, only_line=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", ["folder", "binary"])
def test_config_that_is_not_a_yaml_file(tmp_path, kind):
    path = tmp_path / "c"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(bytes(range(256)) * 4)
    r = train(["--config", str(path), "--out_dir", str(tmp_path / "runs")])
    assert_error(r, f"config file {path}: ", only_line=False)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_out_dir_that_is_a_file(tmp_path, data_root):
    (tmp_path / "f").write_text("x")
    assert_error(train(base(data_root, tmp_path / "f", "r")), "is a file, not a folder", only_line=False)
    assert (tmp_path / "f").read_text() == "x"


# ---------------------------------------------------------------------- --resume, SIGTERM, SIGINT


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_stopped_run_resumed_with_the_same_command_is_bit_identical(tmp_path, data_root, straight, sig, code):
    args = base(data_root, tmp_path, "straight")      # the same name: the same config, bit for bit
    proc = launch("scripts/train.py", *args)
    wait_for(proc, "steps/epoch")                      # set-up done: the handlers are installed
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"stopped by {sig.name}" in err and "Traceback" not in err and "--resume" in err
    stopped = load_checkpoint(tmp_path / "straight" / "last.pt")["progress"]
    assert stopped["step"] < 32                       # it really stopped early

    r = train([*args, "--resume"])                     # what the message tells the user to type
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    assert_same_state(straight / "last.pt", tmp_path / "straight" / "last.pt")
    mine, ref = (json.loads((d / "summary.json").read_text()) for d in (tmp_path / "straight", straight))
    assert (mine["test_acc"], mine["best_epoch"]) == (ref["test_acc"], ref["best_epoch"])
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "straight" / "metrics.jsonl").open()]
    assert epochs == [1, 2]


@pytest.mark.slow
def test_resume_yes_in_a_yaml_file(tmp_path, data_root):
    args = base(data_root, tmp_path, "r", "--epochs", "1")
    assert train(args).returncode == 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text((REPO / "configs" / "cpu.yaml").read_text() + "\n# YAML 1.1 would read yes as true\n")
    text = cfg.read_text().replace("  precision: auto", "  precision: auto\n  resume: yes")
    cfg.write_text(text)
    r = train([*args[2:], "--config", str(cfg), "--epochs", "2"])
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout


@pytest.mark.slow
def test_second_ctrl_c_quits_at_once(tmp_path, data_root):
    # One refresh per epoch (log_every larger than the epoch): the first Ctrl-C would wait for it.
    args = base(data_root, tmp_path, "r", "--data.train_limit", "60000", "--train.log_every", "100000")
    proc = launch("scripts/train.py", *args)
    wait_for(proc, "steps/epoch")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 130 and "without saving" in err and "Traceback" not in err, err
    assert not (tmp_path / "r" / "last.pt").exists()


# ---------------------------------------------------------------------- one run per folder


@pytest.mark.slow
def test_a_second_launch_on_a_running_folder_fails_and_a_killed_run_leaves_no_lock(tmp_path, data_root):
    args = base(data_root, tmp_path, "r", "--epochs", "500")
    first = launch("scripts/train.py", *args)
    try:
        wait_for(first, "steps/epoch")
        r = train(args + ["--overwrite"])
        assert_error(r, f"is in use by another fastfm run (pid {first.pid})", only_line=False)
        r = train(args + ["--train.resume", "auto"])
        assert_error(r, f"(pid {first.pid})", only_line=False)
    finally:
        first.kill()                                   # SIGKILL: no handler runs, the kernel drops the lock
        first.communicate()
    r = train(base(data_root, tmp_path, "r", "--epochs", "1", "--overwrite"))
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------- crashes at every write


def _pt_writes(data_root: Path, out: Path) -> list[str]:
    log = out / "writes.log"
    r = run_script("tests/crash_train.py", *base(data_root, out, "count"), env={"CRASH_LOG": str(log)})
    assert r.returncode == 0, r.stderr
    return log.read_text().split()


@pytest.mark.slow
def test_a_crash_at_any_checkpoint_write_leaves_a_consistent_run(tmp_path, data_root, straight):
    writes = _pt_writes(data_root, tmp_path)
    assert "best.pt" in writes and writes.count("last.pt") == 2
    # best.pt is published before last.pt at an improved evaluation
    assert writes.index("best.pt") < writes.index("last.pt")
    points = [(k, "after") for k in range(1, len(writes) + 1)] + [(len(writes), "before")]
    for k, when in points:
        name = f"crash{k}{when}"
        args = base(data_root, tmp_path, "straight")
        shutil.rmtree(tmp_path / "straight", ignore_errors=True)
        r = run_script("tests/crash_train.py", *args, env={"CRASH_AT": str(k), "CRASH_WHEN": when})
        assert r.returncode == 137, (name, r.stderr)
        run = tmp_path / "straight"
        temps = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        assert bool(temps) == (when == "before"), (name, temps)   # a kill mid-write leaves its temp file

        r = train([*args, "--train.resume", "auto"])             # a relaunch by torchrun or a scheduler
        assert r.returncode == 0, (name, r.stderr)
        assert not [p for p in run.iterdir() if p.name.endswith(".tmp")], name
        summary = json.loads((run / "summary.json").read_text())
        best = load_checkpoint(run / "best.pt")["progress"]
        assert (summary["best_epoch"], summary["best_test_acc"]) == (best["best_epoch"], best["best_acc"]), name
        assert evaluate_checkpoint(str(run / "best.pt"))["test_acc"] == summary["best_test_acc"], name
        assert_same_state(straight / "last.pt", run / "last.pt")


@pytest.mark.slow
def test_periodic_checkpoints_mid_epoch(tmp_path, data_root):
    log = tmp_path / "writes.log"
    args = base(data_root, tmp_path, "r", "--train.checkpoint_every_min", "1e-9")
    r = run_script("tests/crash_train.py", *args, env={"CRASH_LOG": str(log)})
    assert r.returncode == 0, r.stderr
    # 16 steps per epoch, a refresh every 2: 7 mid-epoch saves and 1 at the end, per epoch
    assert log.read_text().split().count("last.pt") == 2 * 8


# ---------------------------------------------------------------------- skipped steps


@pytest.mark.slow
def test_a_run_whose_steps_are_all_skipped_stops_with_an_error(tmp_path, data_root):
    args = base(data_root, tmp_path, "r", "--lr", "1e6", "--train.on_nonfinite", "skip")
    r = train(args)
    assert_error(r, "steps (up to epoch 1) were skipped", only_line=False)
    assert "train.max_skipped = 0.5" in r.stderr
    # Without the stop rule the run goes on; a dead epoch reports its loss as missing, never as 0.
    r = train([*args, "--overwrite", "--train.max_skipped", "1"])
    assert r.returncode == 0, r.stderr
    assert "train loss n/a (all 16 steps skipped)" in r.stdout and "train loss 0.0000" not in r.stdout
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").open()]
    assert records[-1]["train_loss"] is None and records[-1]["epoch_skipped"] == 16


# ---------------------------------------------------------------------- resuming what cannot be resumed


@pytest.fixture
def stopped_run(tmp_path, data_root, straight) -> tuple[Path, list[str]]:
    """A copy of the finished straight run, as a run folder to resume with more epochs."""
    shutil.copytree(straight, tmp_path / "straight")
    return tmp_path / "straight", base(data_root, tmp_path, "straight", "--epochs", "3", "--resume")


@pytest.mark.parametrize("extra, keys", [
    (["--train.batch_size", "256"], "train.batch_size: 128 -> 256"),
    (["--model.width", "2"], "model.width: 1 -> 2"),
])
@pytest.mark.slow
def test_resume_with_a_changed_shape_is_refused_by_name(stopped_run, extra, keys):
    run, args = stopped_run
    before = tree(run)
    assert_error(train([*args, *extra]), keys, only_line=False)
    assert tree(run) == before


@pytest.mark.parametrize("damage, message", [
    ("drop_weight", "does not fit this run"),
    ("drop_optimizer", "not a resumable checkpoint"),
    ("truncate", "not a readable checkpoint"),
])
@pytest.mark.slow
def test_resume_from_a_checkpoint_that_does_not_fit(stopped_run, damage, message):
    run, args = stopped_run
    state = load_checkpoint(run / "last.pt")
    state.pop("version")
    if damage == "drop_weight":
        state["model"].pop(next(iter(state["model"])))
    elif damage == "drop_optimizer":
        state.pop("optimizer")
    save_checkpoint(state, run / "last.pt")
    if damage == "truncate":
        (run / "last.pt").write_bytes((run / "last.pt").read_bytes()[:1000])
    assert_error(train(args), message, only_line=False)


@pytest.mark.slow
def test_partial_metrics_line_is_dropped_on_resume(stopped_run):
    run, args = stopped_run
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_lo')                # a crash in the middle of an append
    r = train(args)
    assert r.returncode == 0, r.stderr
    assert "not a complete record" in r.stdout
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").open()] == [1, 2, 3]


@pytest.mark.slow
def test_leftover_temporary_files_are_removed_when_the_folder_is_opened(stopped_run):
    run, args = stopped_run
    (run / ".last.pt.12345.0badcafe.tmp").write_bytes(b"half a checkpoint")
    (run / "my.tmp").write_text("not fastfm's")
    assert train(args).returncode == 0
    assert not (run / ".last.pt.12345.0badcafe.tmp").exists() and (run / "my.tmp").exists()


# ---------------------------------------------------------------------- unwritable, full, read-only


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /tmp && true"],
                       capture_output=True)
    return r.returncode == 0


needs_mount = pytest.mark.skipif(not _unshare_works(), reason="needs unshare -rm and tmpfs mounts")


def _train_on_mount(tmp_path: Path, data_root: Path, mount_opts: str, *extra: str) -> subprocess.CompletedProcess:
    """scripts/train.py with out_dir on a private tmpfs (a user and mount namespace: no root needed)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    args = " ".join(f"'{a}'" for a in base(data_root, mnt, "r", "--epochs", "1", *extra))
    cmd = f"mount -t tmpfs -o {mount_opts} none '{mnt}' && exec '{sys.executable}' scripts/train.py {args}"
    return subprocess.run(["unshare", "-rm", "sh", "-c", cmd], cwd=REPO, capture_output=True, text=True,
                          timeout=180)


@needs_mount
@pytest.mark.slow
def test_read_only_run_folder(tmp_path, data_root):
    assert_error(_train_on_mount(tmp_path, data_root, "ro"), "cannot create the run folder", only_line=False)


@needs_mount
@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint(tmp_path, data_root):
    # 512 KiB: room for config.yaml, metrics and best.pt (330 kB), not for last.pt (660 kB)
    r = _train_on_mount(tmp_path, data_root, "size=512k")
    assert_error(r, "the disk is full", only_line=False)
    assert "last.pt" in r.stderr


@pytest.mark.slow
def test_marker_is_written_with_the_run(tmp_path, data_root):
    assert train(base(data_root, tmp_path, "r", "--epochs", "1")).returncode == 0
    assert (tmp_path / "r" / MARKER).is_file()
