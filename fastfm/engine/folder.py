"""The run folder: what fastfm writes into ``runs/<name>/``, who may write there, and how.

``runs/<name>/``::

    .fastfm-run    fastfm's marker: this folder was created by fastfm (JSON: version, creation time)
    .lock          held (flock) by the run's rank 0 for its whole life; holds its pid
    config.yaml    the resolved configuration (Config.to_dict)
    metrics.jsonl  one JSON object per epoch
    summary.json   the final figures
    last.pt        everything needed to resume (written every epoch, on SIGTERM/SIGINT, and every
                   train.checkpoint_every_min minutes); the format: :mod:`fastfm.engine.checkpoint`
    best.pt        weights and config at the best test accuracy (for scripts/evaluate.py)
    curves.png, confusion.png   rewritten at every evaluation (live)
    augment.png    real training images before and after the run's augmentation (at the start)
    tb/            TensorBoard event files (log.tensorboard), fastfm's own: events.out.tfevents.*

Safety rules (a run name is one plain path component, checked by the config):

* fastfm writes into, empties or resumes only a folder that is empty or holds its marker; a
  non-empty folder without it is refused, never touched.  Emptying (``--overwrite``, or
  ``--train.resume auto`` without ``last.pt``) deletes only the files listed above (in ``tb/``: the
  event files, then the folder when that leaves it empty); anything else in the folder (or in
  ``tb/``) is kept, and named in a warning.
* One run per folder: rank 0 holds an exclusive OS lock (``flock``) on ``.lock`` from before it
  decides anything about the folder until it exits.  The kernel drops the lock when the process
  dies, however it dies, so a killed run leaves no stale lock; a second launch fails at once,
  naming the holder's pid.
* Every file is written atomically (:func:`fastfm.files.atomic_writer`): a crash or a kill during
  a save leaves the previous file intact.  Temporary files left by a process killed mid-write are
  removed when the folder is next opened.  A failed write (disk full, read-only) is a
  :class:`RunFolderError` naming the file.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from ..distributed import DistInfo, broadcast_object
from ..files import atomic_writer

MARKER = ".fastfm-run"
LOCK = ".lock"
# What a run writes (and so what fastfm may delete when a run folder is emptied).
ARTIFACTS = ("config.yaml", "metrics.jsonl", "summary.json", "last.pt", "best.pt", "curves.png",
             "confusion.png", "augment.png")
# The TensorBoard folder (log.tensorboard) and the names of the files fastfm writes into it
# (SummaryWriter's event files); anything else in it is foreign and kept.
TB_DIR = "tb"
TB_EVENTS = "events.out.tfevents."
# atomic_writer's temporary names: ".<final name>.<pid>.<8 hex digits>.tmp".
_TEMP = re.compile(r"\.(?:%s)\.\d+\.[0-9a-f]{8}\.tmp" % "|".join(re.escape(a) for a in ARTIFACTS))


class RunFolderError(Exception):
    """The run folder may not be used as asked: foreign, locked, unwritable, or nothing to resume."""


def _write_failed(path: Path, e: OSError) -> RunFolderError:
    why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return RunFolderError(f"could not write {path}: {why}; the previous version (if any) is intact")


class RunFolder:
    """An open run folder: rank 0 owns it (marker written, lock held) until :meth:`close`.

    :meth:`open` checks, locks, cleans and decides, in that order; ``resume_from`` is then the
    checkpoint to continue from, or None for a fresh start in an empty (or emptied) folder.
    """

    def __init__(self, path: Path, lock_fd: int, resume_from: Path | None, warnings: list[str]):
        self.path, self._lock_fd, self.resume_from, self.warnings = path, lock_fd, resume_from, warnings

    @classmethod
    def open(cls, out_dir: str | Path, name: str, resume: str, overwrite: bool) -> "RunFolder":
        """Open ``out_dir/name`` for a run.

        * ``resume == "yes"``: ``last.pt`` must exist; it is resumed.
        * ``resume == "auto"``: resume when ``last.pt`` exists; otherwise start afresh, emptying
          fastfm's own files (a relaunch of a job that died before its first checkpoint).
        * ``"no"``: a folder holding a previous run is an error unless ``overwrite`` (then emptied).

        Raises :class:`RunFolderError` with a message the user can act on.
        """
        out = Path(out_dir)
        run = out / name
        if out.exists() and not out.is_dir():
            raise RunFolderError(f"out_dir {out} is a file, not a folder")
        if run.exists() and not run.is_dir():
            raise RunFolderError(f"{run} is a file, not a run folder; choose another --name")
        if run.is_dir() and not _owned(run):
            raise RunFolderError(
                f"{run} exists and was not created by fastfm (it has no {MARKER} file): fastfm never "
                f"writes into or deletes a folder it did not create; choose another --name or --out_dir")
        try:
            run.mkdir(parents=True, exist_ok=True)
            fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(f"cannot create the run folder {run}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderError(f"{run} is in use by another fastfm run (pid {holder}); wait for it "
                                 f"to finish, or choose another --name") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            folder = cls(run, fd, None, [])
            folder._claim()
            folder.resume_from = folder._decide(resume, overwrite)
        except BaseException:
            os.close(fd)          # releases the lock: this launch did not take the folder
            raise
        return folder

    def close(self) -> None:
        """Release the lock (the lock file stays: deleting it would race with a new launch)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _claim(self) -> None:
        """Under the lock: write the marker into a new folder, remove dead writers' temporaries."""
        marker = self.path / MARKER
        try:
            if not marker.exists():
                info = {"fastfm": "run folder",
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
                with atomic_writer(marker) as f:
                    f.write((json.dumps(info) + "\n").encode())
            for p in self.path.iterdir():
                if _TEMP.fullmatch(p.name):
                    p.unlink()
        except OSError as e:
            raise RunFolderError(f"cannot write into the run folder {self.path}: {e.strerror}") from None

    def _decide(self, resume: str, overwrite: bool) -> Path | None:
        last = self.path / "last.pt"
        if resume == "yes" and not last.is_file():
            raise RunFolderError(f"{self.path}: nothing to resume (no last.pt); drop --resume to start "
                                 f"this run")
        if resume in ("yes", "auto") and last.is_file():
            return last
        mine = [self.path / a for a in ARTIFACTS if (self.path / a).exists()]
        tb = self.path / TB_DIR
        if tb.is_dir():
            mine += [p for p in sorted(tb.iterdir()) if p.name.startswith(TB_EVENTS) and p.is_file()]
        if mine and not (overwrite or resume == "auto"):
            raise RunFolderError(f"{self.path} already holds a run: pass --resume to continue it, "
                                 f"--overwrite to replace it, or --name to start another run")
        try:
            for p in mine:
                p.unlink()
            if tb.is_dir() and not any(tb.iterdir()):
                tb.rmdir()
        except OSError as e:
            raise RunFolderError(f"cannot empty the run folder {self.path}: {e.strerror}") from None
        foreign = sorted(p.name for p in self.path.iterdir()
                         if p.name not in (MARKER, LOCK) and not (p.name == TB_DIR and p.is_dir()))
        if tb.is_dir():       # what is left in tb/ is not fastfm's: named as tb/<file>
            foreign += sorted(f"{TB_DIR}/{p.name}" for p in tb.iterdir())
        if foreign:
            self.warnings.append(f"warning: {self.path} also holds files fastfm did not write; they are "
                                 f"kept: {', '.join(foreign)}")
        return None


def open_run_folder(out_dir: str | Path, name: str, resume: str, overwrite: bool, info: DistInfo,
                    warn: Callable[[str], None]) -> tuple[RunFolder | None, str | None]:
    """Rank 0 opens (and locks) the folder and decides; every rank gets the checkpoint to resume
    from, or the error.  Returns (the open folder on rank 0, else None; ``last.pt`` or None)."""
    folder, outcome = None, None
    if info.is_primary:
        try:
            folder = RunFolder.open(out_dir, name, resume, overwrite)
            for line in folder.warnings:
                warn(line)
            outcome = ("ok", str(folder.resume_from) if folder.resume_from else None)
        except RunFolderError as e:
            outcome = ("error", str(e))
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise RunFolderError(value)
    return folder, value


def _owned(run: Path) -> bool:
    """True when fastfm may use ``run``: it holds fastfm's marker, or holds nothing (or only the
    lock of a launch that is creating it right now)."""
    if (run / MARKER).is_file():
        return True
    try:
        return all(p.name == LOCK for p in run.iterdir())
    except OSError as e:
        raise RunFolderError(f"cannot read the run folder {run}: {e.strerror}") from None


def write_bytes(path: str | Path, data) -> None:
    """Atomic write of ``data`` (bytes or a buffer); :class:`RunFolderError` naming the file when it fails."""
    try:
        with atomic_writer(path) as f:
            f.write(data)
    except OSError as e:
        raise _write_failed(Path(path), e) from None


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line.  Appending (not rewriting) keeps each record's write small; a crash
    mid-line leaves a partial last line, which :func:`read_jsonl` drops."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise _write_failed(path, e) from None


def read_jsonl(path: Path, warn=None) -> list[dict]:
    """The records of a JSON-lines file; a line that is not valid JSON (a write cut short by a
    crash) is dropped, with a message through ``warn`` when given."""
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and "epoch" in rec:
            records.append(rec)
        elif warn is not None:
            warn(f"warning: {path}: line {n} is not a complete record (a write cut short?); dropped")
    return records


def write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def writing(path: Path):
    """Turn an OSError while writing ``path`` by other means (a plot) into a RunFolderError."""
    try:
        yield
    except OSError as e:
        raise _write_failed(path, e) from None


def trim_metrics(path: Path, epochs_done: int, warn) -> None:
    """Drop records of epochs after the checkpoint (written before a crash, redone on resume) and a
    partial last line (a crash in the middle of an append)."""
    if not path.exists():
        return
    records = read_jsonl(path, warn)
    kept = [r for r in records if r["epoch"] <= epochs_done]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    if text != path.read_text(errors="replace"):
        write_text(path, text)
