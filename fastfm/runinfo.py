"""What a run or a benchmark records about where it ran: the device, the versions, the revision.

A small neutral module: the engine (``summary.json``) and the benchmarks (every results file) both
use it, and neither needs the other for it.
"""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def git_revision() -> str:
    """The checkout's short revision (``-dirty`` with uncommitted changes), or ``unknown`` outside a
    git checkout (an installed package)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``CPU: <model name> (<threads> threads)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu} ({torch.get_num_threads()} threads)"


def environment(device: torch.device) -> dict:
    """What every results file records beside its figures."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
