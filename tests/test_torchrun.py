"""Multi-process runs launched exactly as the README says, with ``torchrun`` (gloo, CPU):

* a frozen rank (``kill -STOP``) fails the job after ``train.dist_timeout_s`` instead of hanging it;
* an elastic restart (``--max-restarts 1 ... --train.resume auto``) after ``kill -9`` of one rank
  resumes from ``last.pt`` and ends bit-identical to an uninterrupted 2-rank run;
* two torchrun "nodes" on this machine (c10d rendezvous on 127.0.0.1) train the same weights as
  ``--standalone --nproc_per_node 2``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import assert_same_state, free_port, tiny_args, torchrun, wait_for

pytestmark = pytest.mark.slow


def base(data_root: Path, out: Path, name: str, *extra: str) -> list[str]:
    """A tiny run of 16 global steps of 128 per epoch (2048 images), 2 epochs, without TTA."""
    return tiny_args(data_root, out, name, "--eval.tta", "false", *extra, images=2048, batch=128)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def standalone(args: list[str]) -> None:
    out, err = finish(torchrun(["--standalone", "--nproc_per_node", "2"], args))
    assert "Traceback" not in err, err


def worker(launcher_pid: int, rank: int, restart: int = 0, timeout: float = 60) -> int:
    """The pid of torchrun's worker with ``RANK=rank`` in restart round ``restart``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-o", "pid=", "--ppid", str(launcher_pid)], capture_output=True, text=True)
        for pid in ps.stdout.split():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if (f"RANK={rank}".encode() in env
                    and f"TORCHELASTIC_RESTART_COUNT={restart}".encode() in env):
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank} under torchrun (pid {launcher_pid})")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_frozen_rank_fails_the_job_after_the_timeout(tmp_path, data_root):
    timeout_s = 10
    args = base(data_root, tmp_path, "frozen", "--epochs", "500", "--train.log_every", "1",
                "--train.dist_timeout_s", str(timeout_s))
    job = torchrun(["--standalone", "--nproc_per_node", "2"], args)
    wait_for(job, "steps/epoch", timeout=180)
    rank0, rank1 = worker(job.pid, 0), worker(job.pid, 1)
    time.sleep(1.0)
    os.kill(rank1, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        while alive(rank0) and time.monotonic() - frozen_at < 2 * timeout_s:
            time.sleep(0.2)
        assert not alive(rank0), f"rank 0 still waits {2 * timeout_s} s after rank 1 froze"
        # torchrun then stops the frozen rank: SIGTERM, and SIGKILL after its fixed 30 s grace.
        out, err = finish(job, timeout=2 * timeout_s + 45)
    finally:
        if alive(rank1):
            os.kill(rank1, signal.SIGKILL)
    assert job.returncode != 0
    assert not alive(rank1)
    assert f"train.dist_timeout_s = {timeout_s} s" in err, err
    assert "error: rank 0: " in err


def test_elastic_restart_after_a_lost_rank_is_bit_identical(tmp_path, data_root):
    standalone(base(data_root, tmp_path, "reference", "--epochs", "4"))
    args = base(data_root, tmp_path, "elastic", "--epochs", "4", "--train.resume", "auto")
    job = torchrun(["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"], args)
    wait_for(job, "epoch   1/4", timeout=180)
    deadline = time.monotonic() + 60
    while not (tmp_path / "elastic" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(worker(job.pid, 1), signal.SIGKILL)            # a lost worker, in epoch 2
    out, err = finish(job)
    assert job.returncode == 0, err
    assert "another rank is gone" in err                    # what rank 0 said before the restart
    assert "resumed from" in out
    assert_same_state(tmp_path / "reference" / "last.pt", tmp_path / "elastic" / "last.pt")


def test_two_nodes_train_the_same_weights_as_one(tmp_path, data_root):
    standalone(base(data_root, tmp_path, "one", "--epochs", "1"))
    port = free_port()
    nodes = [torchrun(["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                       "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                       "--rdzv_id", "fastfm-test"],
                      base(data_root, tmp_path, "two", "--epochs", "1"))
             for rank in (0, 1)]
    for node in nodes:
        out, err = finish(node)
        assert node.returncode == 0, err
    assert_same_state(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt")
