"""The run folder and what is written into it: atomic checkpoints, the resolved config, metrics.

``runs/<name>/``::

    config.yaml    the resolved configuration (Config.to_dict)
    metrics.jsonl  one JSON object per evaluated epoch
    summary.json   the final figures
    last.pt        everything needed to resume (written every epoch and on SIGTERM)
    best.pt        weights and config at the best test accuracy (for scripts/evaluate.py)
    curves.png, confusion.png

Checkpoints are written atomically (temporary file in the same folder, fsync, rename; see
:func:`fastfm.data.idx.atomic_writer`): a crash or a kill during a save leaves the previous file
intact.  Only rank 0 writes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..data.idx import atomic_writer

CHECKPOINT_VERSION = 1


class RunFolderError(Exception):
    """The run folder exists and may not be reused as asked, or holds no checkpoint to resume."""


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable or not a fastfm checkpoint."""


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` atomically: ``path`` holds the old or the new file, whole."""
    with atomic_writer(path) as f:
        torch.save({"version": CHECKPOINT_VERSION, **state}, f)


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors only: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "config" not in state:
        raise CheckpointError(f"{path}: not a fastfm checkpoint (version {CHECKPOINT_VERSION})")
    return state


def prepare_run_dir(run_dir: Path, resume: str, overwrite: bool) -> Path | None:
    """Decide what to do with ``run_dir`` (rank 0 only); returns the checkpoint to resume, or None.

    * ``resume == "yes"``: ``run_dir/last.pt`` must exist.
    * ``resume == "auto"``: resume when ``last.pt`` exists; otherwise start afresh in the folder,
      emptying it (a relaunch of a job that died before its first checkpoint).
    * ``"no"``: an existing, non-empty folder is an error unless ``overwrite`` (then it is emptied).
    """
    last = run_dir / "last.pt"
    if resume == "yes" and not last.is_file():
        raise RunFolderError(f"{run_dir}: nothing to resume (no last.pt); drop --resume to start this run")
    if resume in ("yes", "auto") and last.is_file():
        return last
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (overwrite or resume == "auto"):
            raise RunFolderError(f"{run_dir} already exists: pass --resume to continue it, --overwrite "
                                 f"to replace it, or --name to start another run")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def write_json(path: Path, obj: dict) -> None:
    with atomic_writer(path) as f:
        f.write((json.dumps(obj, indent=2) + "\n").encode())
