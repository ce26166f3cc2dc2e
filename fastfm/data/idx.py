"""IDX files (the format of the official MNIST / Fashion-MNIST files): read, write, check, load.

Format: a big-endian header, then raw uint8 bytes in row-major order.

* labels: magic 2049 (0x00000801), count; then ``count`` bytes.
* images: magic 2051 (0x00000803), count, rows, cols; then ``count * rows * cols`` bytes.

A file may be gzipped (recognised by its magic bytes, not its name).  A header is untrusted input:
its dimensions (up to 2**32 - 1 each) may declare terabytes, so :func:`read_idx` checks them
against the file before reading data.  Every problem with a file raises :class:`DataError` naming it.
"""

from __future__ import annotations

import errno
import gzip
import math
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..files import atomic_writer

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
COUNTS = {"train": 60_000, "test": 10_000}
NUM_CLASSES = 10
IMAGE_SIZE = 28

LABELS_MAGIC = 2049
IMAGES_MAGIC = 2051
_NDIM = {LABELS_MAGIC: 1, IMAGES_MAGIC: 3}
_KIND = {LABELS_MAGIC: "labels", IMAGES_MAGIC: "images"}
# The shape each official file's header declares; readers that know which file they read pass it to
# read_idx, so that a corrupt count is rejected before any data are read.
SHAPES = {name: shape
          for split, (images, labels) in FILES.items()
          for name, shape in ((images, (COUNTS[split], IMAGE_SIZE, IMAGE_SIZE)),
                              (labels, (COUNTS[split],)))}
_GZIP_MAGIC = b"\x1f\x8b"
# gzip's default level: a higher one gains little on these images and writes slower.
_GZIP_LEVEL = 6
_CHUNK = 1 << 20


class DataError(Exception):
    """A data file is missing, unreadable or invalid; the message names the file and the problem."""


def raw_dir(root: str | os.PathLike) -> Path:
    """``root/FashionMNIST/raw``: where torchvision (and :func:`load_split`) read the files."""
    return Path(root) / "FashionMNIST" / "raw"


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether the file starts with the gzip magic bytes; :class:`DataError` if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == _GZIP_MAGIC
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_idx(path: str | os.PathLike, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzipped) into a writable uint8 array shaped as its header says.

    Raises :class:`DataError` naming ``path`` for an unreadable, truncated or corrupt file, a magic
    other than 2049/2051, a zero dimension, a shape other than ``shape`` (when given), and data
    shorter or longer than the header declares.  Shape and size are checked against the header and
    the file's size (or gzip trailer) before the data are read, and no read asks for more than the
    declared size + 1 bytes, so memory stays bounded by what the file holds.
    """
    path = Path(path)
    try:
        gz = is_gzip(path)
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            return _read_stream(f, path, gz, shape)
    except EOFError:
        raise DataError(f"{path}: truncated gzip stream (the file ends before the gzip end marker)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_stream(f: BinaryIO, path: Path, gz: bool, shape: tuple[int, ...] | None) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated header ({len(head)} bytes); not an IDX file")
    (magic,) = struct.unpack(">I", head)
    if magic not in _NDIM:
        raise DataError(f"{path}: wrong magic number {magic} (0x{magic:08x}); "
                        f"expected {LABELS_MAGIC} (labels) or {IMAGES_MAGIC} (images)")
    ndim = _NDIM[magic]
    header_len = 4 + 4 * ndim
    dims_raw = f.read(4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated header ({4 + len(dims_raw)} of {header_len} bytes)")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    if shape is not None and dims != tuple(shape):
        expected = "images" if len(shape) == 3 else "labels"
        raise DataError(f"{path}: header declares {_KIND[magic]} of shape {list(dims)}, "
                        f"expected {expected} of shape {list(shape)}")
    if 0 in dims:
        raise DataError(f"{path}: header declares shape {list(dims)}, with a zero dimension (no data)")
    # Python ints, not np.prod: three uint32 dimensions overflow int64 and would wrap around.
    size = math.prod(dims)
    held = _gzip_data_length(f, path, header_len, size) if gz else _plain_data_length(f, header_len)
    if held is not None and held != size:
        raise _length_mismatch(path, dims, size, held, exact=not gz)
    buf = bytearray()
    while len(buf) <= size:
        chunk = f.read(min(_CHUNK, size + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
    if len(buf) != size:
        raise _length_mismatch(path, dims, size, len(buf), exact=False)
    # bytearray-backed, so the array is writable (torch.from_numpy warns on read-only arrays).
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


def _plain_data_length(f: BinaryIO, header_len: int) -> int | None:
    """The number of data bytes in an uncompressed file; None when it is not a regular file (a pipe)."""
    st = os.fstat(f.fileno())
    return st.st_size - header_len if stat.S_ISREG(st.st_mode) else None


def _gzip_data_length(f: BinaryIO, path: Path, header_len: int, size: int) -> int:
    """The number of data bytes in a gzip stream positioned after the header, counted up to ``size + 1``.

    The gzip trailer's ISIZE (uncompressed length mod 2**32) settles it without decompressing when it
    agrees and the declared total is below 2**32 (every real IDX file).  Otherwise (a corrupt header,
    a truncated or multi-member gzip, or a declared total that ISIZE cannot vouch for) the stream is
    decompressed and counted in chunks that are not kept, then rewound to the end of the header.
    """
    total = header_len + size
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", raw.read(4))
    if total < 2**32 and isize == total:
        return size
    held = 0
    while held <= size:
        chunk = f.read(min(_CHUNK, size + 1 - held))
        if not chunk:
            break
        held += len(chunk)
    f.seek(header_len)
    return held


def _length_mismatch(path: Path, dims: tuple[int, ...], size: int, held: int, exact: bool) -> DataError:
    """The error for a data length ``held`` other than ``size``; ``exact``: ``held`` is not capped at
    ``size + 1``, so a surplus can be given in bytes."""
    if held < size:
        return DataError(f"{path}: length mismatch (truncated): header {list(dims)} declares {size} "
                         f"data bytes, the file holds {held}")
    return DataError(f"{path}: length mismatch (trailing bytes): header {list(dims)} declares "
                     f"{size} data bytes, the file holds {held if exact else 'more'}")


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file at ``path``, atomically (:func:`fastfm.files.atomic_writer`).

    ``array`` must be uint8, 1-d (labels, magic 2049) or 3-d (images, magic 2051), with no zero
    dimension (:func:`read_idx` rejects such files); else ValueError.  The file is gzipped when
    ``path`` ends in ``.gz``, with a fixed header timestamp so equal arrays give equal bytes.  Raises
    :class:`DataError` naming ``path`` when it cannot be written (read-only folder, full disk), with
    ``path`` left as it was.
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"write_idx({path}): dtype must be uint8, got {array.dtype}")
    magic = {1: LABELS_MAGIC, 3: IMAGES_MAGIC}.get(array.ndim)
    if magic is None:
        raise ValueError(f"write_idx({path}): array must be 1-d or 3-d, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"write_idx({path}): array has a zero dimension, shape {array.shape}")
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    data = memoryview(np.ascontiguousarray(array)).cast("B")
    try:
        with atomic_writer(path) as f:
            if str(path).endswith(".gz"):
                with gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=_GZIP_LEVEL,
                                   mtime=0) as g:
                    g.write(header)
                    g.write(data)
            else:
                f.write(header)
                f.write(data)
    except OSError as e:
        raise write_error(path, e) from None


def write_error(path: str | os.PathLike, e: OSError) -> DataError:
    """The :class:`DataError` for an OSError while writing ``path`` (the file named, the reason in words)."""
    why = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    return DataError(f"{path}: cannot write ({why})")


def check_split(split: str, images: np.ndarray, labels: np.ndarray,
                images_path: str | os.PathLike, labels_path: str | os.PathLike) -> None:
    """Check a split's arrays as read from ``images_path`` / ``labels_path`` (named in errors).

    Images must be (N, 28, 28), labels (N,), with N the official count (:data:`COUNTS`), labels in
    0..9 and every class exactly N/10 times.  Raises :class:`DataError`.
    """
    if images.ndim != 3:
        raise DataError(f"{images_path}: holds a labels file (magic {LABELS_MAGIC}), expected images")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: holds an images file (magic {IMAGES_MAGIC}), expected labels")
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                        f"expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels")
    expected = COUNTS[split]
    if len(labels) != expected:
        raise DataError(f"{labels_path}: wrong count: {len(labels)} {split} examples, expected {expected}")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(f"{labels_path}: labels out of range 0..{NUM_CLASSES - 1}: {bad.size} bad, "
                        f"first {int(labels[bad[0]])} at index {int(bad[0])}")
    per_class = np.bincount(labels, minlength=NUM_CLASSES)
    if (per_class != expected // NUM_CLASSES).any():
        raise DataError(f"{labels_path}: class imbalance: per-class counts {per_class.tolist()}, "
                        f"expected {expected // NUM_CLASSES} each")


def load_split(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a checked split from ``root/FashionMNIST/raw`` (each file uncompressed, else ``.gz``).

    Returns images uint8 (N, 28, 28) and labels int64 (N,); ``split`` is "train" or "test".
    Raises :class:`DataError` if a file is missing (with the command that prepares the data),
    unreadable, declares another shape than the official one (:data:`SHAPES`; checked before its data
    are read) or fails :func:`check_split`.
    """
    if split not in FILES:
        raise ValueError(f"split must be one of {sorted(FILES)}, got {split!r}")
    folder = raw_dir(root)
    paths = []
    for name in FILES[split]:
        path = next((p for p in (folder / name, folder / f"{name}.gz") if p.exists()), None)
        if path is None:
            raise DataError(f"{folder / name}: not found (nor {name}.gz); "
                            f"run: python scripts/prepare_data.py --root {root}")
        paths.append(path)
    images, labels = (read_idx(p, SHAPES[name]) for p, name in zip(paths, FILES[split]))
    check_split(split, images, labels, *paths)
    return images, labels.astype(np.int64)
