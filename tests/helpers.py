"""What the tests share: the scripts launched as a user types them, the one-line error check, the
tiny runs, and the checks of a resumed run.  Test files import from here, never from each other.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from fastfm.config import Config
from fastfm.engine.checkpoint import load_checkpoint
from fastfm.engine.signals import StopSignal

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

# Runs ``python SCRIPT ARGS`` after a prelude, in the same interpreter (sys.argv as the script would
# see it): the command line stays the real one, only what the prelude patched differs.
_WRAPPER = """{prelude}
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


# ---------------------------------------------------------------------- launching the scripts


def _command(script: str, args, prelude: str | None) -> list[str]:
    args = list(map(str, args))
    if prelude is None:
        return [sys.executable, str(script), *args]
    return [sys.executable, "-c", _WRAPPER.format(prelude=prelude), str(script), *args]


def run_script(script: str | Path, *args, prelude: str | None = None, env: dict | None = None,
               cwd: Path = REPO, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` in a fresh process from ``cwd``, until it ends; output captured as text
    (SCRIPT may also be an interpreter option that takes the next argument: ``-m MODULE``, ``-I FILE``).

    ``prelude``: Python run first in the same interpreter (to patch in a failure or a probe);
    ``env``: added to (or, with a value of None, removed from) this process's environment; ``kw``:
    passed to :func:`subprocess.run`."""
    return subprocess.run(_command(script, args, prelude), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=_environ(env), **kw)


def train(args: list, **kw) -> subprocess.CompletedProcess:
    """``python scripts/train.py ARGS`` (see :func:`run_script`)."""
    return run_script("scripts/train.py", *args, **kw)


def launch(script: str | Path, *args, env: dict | None = None, cwd: Path = REPO, **kw) -> subprocess.Popen:
    """``python SCRIPT ARGS`` started and left running, stdout and stderr piped as text, unbuffered
    (so that :func:`wait_for` sees each line when it is printed)."""
    return subprocess.Popen(_command(script, args, None), cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_environ({"PYTHONUNBUFFERED": "1", **(env or {})}),
                            **kw)


def torchrun(launcher: list[str], args: list[str], **kw) -> subprocess.Popen:
    """``torchrun LAUNCHER scripts/train.py ARGS`` started and left running, like :func:`launch`;
    one intra-op thread per process (its ranks share the machine's cores)."""
    return subprocess.Popen([TORCHRUN, *launcher, "scripts/train.py", *map(str, args)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_environ({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}), **kw)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environ(changes: dict | None) -> dict:
    env = dict(os.environ)
    for key, value in (changes or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Read the process's stdout until a line containing ``text``; returns what was read.  Kills the
    process and fails, with what it printed, when the line does not come within ``timeout`` s."""
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if text in line:
            return seen
    proc.kill()
    raise AssertionError(f"{text!r} not printed; got:\n{seen}\n{proc.stderr.read()}")


def assert_error(r: subprocess.CompletedProcess, *named, code: int = 2, only_line: bool = True) -> str:
    """A user's mistake as every script reports it: exit status ``code``, no traceback, and one
    ``error: ...`` line on stderr naming everything in ``named``; returns that line.
    ``only_line``: that line is all of stderr (False where a run prints warnings or a log first)."""
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr)
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    if only_line:
        assert r.stderr.splitlines() == errors, r.stderr
    for name in named:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


# ---------------------------------------------------------------------- tiny runs


def tiny_args(data_root: Path, out_dir: Path, name: str, *extra, images: int = 256, batch: int = 64,
              test_images: int = 200, epochs: int = 2) -> list[str]:
    """``scripts/train.py``'s arguments for a tiny CPU run: the cpu preset (WRN-10-1, flip TTA,
    TensorBoard), ``images // batch`` steps per epoch, a refresh every 2 steps, deterministic, no
    progress bar.  ``extra`` comes last, so it overrides any of these."""
    return ["--config", "cpu", "--name", name, "--out_dir", str(out_dir), "--data.root", str(data_root),
            "--data.train_limit", str(images), "--data.test_limit", str(test_images),
            "--train.batch_size", str(batch), "--epochs", str(epochs), "--train.deterministic", "true",
            "--train.progress", "false", "--train.log_every", "2", *map(str, extra)]


def tiny_config(out_dir: Path, data_root: Path, name: str = "tiny", **sections) -> Config:
    """For ``fastfm.engine.run.train`` in this process: WRN-10-1, 1024 training / 500 test images
    (8 steps of 128 per epoch), 2 epochs, deterministic, quiet, 10-view TTA.

    ``sections``: per-section dicts merged over the defaults, e.g. ``optim={"name": "adamw"}``.
    """
    d = {
        "name": name, "out_dir": str(out_dir),
        "data": {"root": str(data_root), "train_limit": 1024, "test_limit": 500},
        "model": {"name": "wrn", "depth": 10, "width": 1},
        "aug": {"backend": "native", "resize": 0, "crop": 0, "flip_p": 0.5, "autoaugment": "none",
                "erasing_p": 0.0, "cutmix_p": 0.0, "channels": 1},
        "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 5e-4},
        "sched": {"warmup_epochs": 0.5, "start_factor": 0.1},
        "train": {"epochs": 2, "batch_size": 128, "deterministic": True, "progress": False, "log_every": 2},
        "eval": {"batch_size": 250, "tta": True, "tta_shift": 1},
    }
    for section, values in sections.items():
        d[section] = {**d.get(section, {}), **values}
    return Config.from_dict(d)


# ---------------------------------------------------------------------- stopped and resumed runs


class StopAtCheck(StopSignal):
    """A stop request that appears at the ``n``-th time the trainer looks (1-based).

    The trainer looks at every refresh (every ``train.log_every`` steps and at an epoch's last step)
    and once more after each epoch's checkpoint.  With 8 steps per epoch and ``log_every: 2``:
    checks 1-4 are the refreshes after steps 2, 4, 6, 8 of epoch 1 and check 5 is its end.
    """

    def __init__(self, n: int):
        super().__init__()
        self.n, self.calls = n, 0

    def is_set(self) -> bool:
        self.calls += 1
        return self.calls >= self.n


def assert_same_state(a: Path, b: Path) -> None:
    """The checkpoints ``a`` and ``b`` hold the same weights, EMA and optimizer state bit for bit, at
    the same step."""
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    for part in ("model", "ema"):
        if sa[part] is None or sb[part] is None:       # a run without EMA
            assert sa[part] is sb[part] is None
            continue
        assert sa[part].keys() == sb[part].keys()
        for key in sa[part]:
            assert torch.equal(sa[part][key], sb[part][key]), f"{part}.{key} differs"
    opt_a, opt_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert opt_a.keys() == opt_b.keys()
    for i in opt_a:
        for k, v in opt_a[i].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(opt_b[i][k])), f"optimizer {i}.{k} differs"
    assert sa["progress"]["step"] == sb["progress"]["step"]
