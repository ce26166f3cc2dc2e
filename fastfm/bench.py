"""Honest timing shared by every benchmark: warm-up, device synchronisation, median of repeats,
and the environment (device, versions, git revision) stored beside every figure."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .config import ConfigError
from .distributed import resolve_device

REPO = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Per-call wall time of a timed function: median and spread over ``repeats`` runs of ``iters``."""

    ms_median: float
    ms_min: float
    ms_max: float
    iters: int
    repeats: int

    def per_second(self, items_per_call: int) -> float:
        return items_per_call * 1000.0 / self.ms_median

    def to_dict(self) -> dict:
        return asdict(self)


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, iters: int = 10,
            repeats: int = 5) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed runs of ``iters`` calls each.

    Each run is bracketed by device synchronisation (CUDA work is asynchronous: without it only the
    launch would be timed); the figure is the run's wall time divided by ``iters``.  The median over
    runs is reported because it is robust to a stray slow run (another process, a GC pause).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    runs = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        synchronize(device)
        runs.append((time.perf_counter() - t0) * 1000.0 / iters)
    return Timing(statistics.median(runs), min(runs), max(runs), iters, repeats)


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"


def device_name(device: torch.device) -> str:
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


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (key, header, format spec); missing values print as an em dash."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" if f else ":---" for _, _, f in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            v = row.get(key)
            cells.append("—" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report_json(report: dict, path) -> None:
    """A benchmark report (everything but its markdown rendering) as JSON at ``path``."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in report.items() if k != "markdown"}, indent=2))


# ------------------------------------------------------------------ checks before the work
# The scripts run these before minutes of measuring or evaluating, so that a typo in an option
# costs seconds, not a whole run that then ends in a traceback.


def check_writable(path, option: str, *, create_parents: bool = True) -> None:
    """Raise :class:`ConfigError` naming ``option`` unless a file can be written at ``path``.

    ``path`` must not be a folder, and the nearest of its ancestors that exists must be a folder
    this process may write into (``create_parents``: folders missing below it are created by the
    writer; otherwise ``path``'s own folder must exist).  Creates and writes nothing.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option}: {path} is a folder; give a file name")
    parent = path.parent
    if not create_parents and not parent.exists():
        raise ConfigError(f"{option}: cannot write {path}: the folder {parent} does not exist")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option}: cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option}: cannot write {path}: permission denied")


def parse_device(name: str, option: str = "--device") -> torch.device:
    """``name`` (auto, cpu, cuda or cuda:N) as a device, ``auto`` meaning CUDA when present.

    Raises :class:`ConfigError` naming ``option`` for any other name, and for a CUDA device this
    machine does not have.
    """
    kind, colon, index = name.partition(":")
    if name != "auto" and not (name == "cpu" or (kind == "cuda" and (not colon or index.isdigit()))):
        raise ConfigError(f"{option}: {name!r} is not auto, cpu, cuda or cuda:N")
    try:
        device = resolve_device(name)
    except ValueError as e:
        raise ConfigError(f"{option}: {e}") from None
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise ConfigError(f"{option}: {name!r}, but this machine has {count} CUDA device(s)")
    return device
