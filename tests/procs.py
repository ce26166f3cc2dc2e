"""Helpers for tests that drive real processes (``scripts/train.py``, ``torchrun``)."""

from __future__ import annotations

import subprocess
import time


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
