"""Files written atomically: a reader (or a crash) sees the old file or the new one, whole.

Used by every layer that writes (the data preparation, the run folder, plots), so it lives here,
below all of them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class OutputPathError(ValueError):
    """An output path given on the command line cannot be written; the message names the option."""


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary file that takes the name ``path`` only if the ``with`` block completes.

    The data go to a hidden temporary file in the same folder (so that ``os.replace`` is an atomic
    rename), fsynced, then renamed over ``path``.  On any exception (KeyboardInterrupt included, or a
    full disk while writing, flushing or renaming) the temporary file is removed, ``path`` is left as
    it was and the exception propagates unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with mode 0o666 (not mkstemp's 0o600) so the final file gets the umask's permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Any OSError: a failed removal must not replace the error that says what went wrong.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; not every platform or file system can fsync a folder."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable(path, option: str, *, create_parents: bool = True) -> None:
    """Raise :class:`OutputPathError` naming ``option`` unless a file can be written at ``path``.

    ``path`` must not be a folder, and the nearest of its ancestors that exists must be a folder
    this process may write into (``create_parents``: folders missing below it are created by the
    writer; otherwise ``path``'s own folder must exist).  Creates and writes nothing.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option}: {path} is a folder; give a file name")
    parent = path.parent
    if not create_parents and not parent.exists():
        raise OutputPathError(f"{option}: cannot write {path}: the folder {parent} does not exist")
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"{option}: cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputPathError(f"{option}: cannot write {path}: permission denied")
