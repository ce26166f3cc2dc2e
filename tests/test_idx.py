"""IDX reading/writing, per-file and per-split checks, atomic writes, load_split."""

from __future__ import annotations

import errno
import gzip
import os
import re
import struct
import tracemalloc

import numpy as np
import pytest

from fastfm.data import idx
from fastfm.data.idx import DataError, check_split, load_split, read_idx, write_idx
from fastfm.files import atomic_writer


def _images(n=12, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _labels(n=12):
    return (np.arange(n) % 10).astype(np.uint8)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("array", [_images(), _labels()], ids=["images", "labels"])
def test_round_trip(tmp_path, suffix, array):
    path = tmp_path / f"x-ubyte{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_header_layout(tmp_path):
    write_idx(tmp_path / "i", _images(3))
    write_idx(tmp_path / "l", _labels(3))
    assert struct.unpack(">4I", (tmp_path / "i").read_bytes()[:16]) == (2051, 3, 28, 28)
    assert struct.unpack(">2I", (tmp_path / "l").read_bytes()[:8]) == (2049, 3)
    assert (tmp_path / "i").stat().st_size == 16 + 3 * 28 * 28


def test_gzip_detected_by_content_not_name(tmp_path):
    write_idx(tmp_path / "a.gz", _labels())
    (tmp_path / "a.gz").rename(tmp_path / "gzipped-without-suffix")
    write_idx(tmp_path / "b", _labels())
    (tmp_path / "b").rename(tmp_path / "plain-named.gz")
    for name in ("gzipped-without-suffix", "plain-named.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), _labels())


def test_gzip_output_is_deterministic(tmp_path):
    # Neither a timestamp nor the temporary file's name may end up in the gzip header.
    write_idx(tmp_path / "a.gz", _images())
    write_idx(tmp_path / "b.gz", _images())
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


@pytest.mark.parametrize("bad", [np.zeros(3, np.int64), np.zeros((2, 28), np.uint8),
                                 np.zeros((0, 28, 28), np.uint8)])
def test_write_rejects_wrong_dtype_or_rank(tmp_path, bad):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", bad)
    assert not list(tmp_path.iterdir())


# --- bad files: each error names the file and the problem -------------------------------------

def _gz_labels(tmp_path, n=5000):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(path, np.random.default_rng(1).integers(0, 10, n, dtype=np.uint8))
    return path


def test_truncated_gzip(tmp_path):
    path = _gz_labels(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: truncated gzip"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    path = _gz_labels(tmp_path)
    data = bytearray(path.read_bytes())
    data[40:60] = bytes(b ^ 0xFF for b in data[40:60])
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: corrupt gzip"):
        read_idx(path)


def test_corrupt_gzip_crc(tmp_path):
    path = _gz_labels(tmp_path)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"\.gz: corrupt gzip .*CRC"):
        read_idx(path)


def test_wrong_magic(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">4I", 2052, 1, 28, 28) + bytes(784))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: wrong magic number 2052"):
        read_idx(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">2I", 2051, 1))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated header"):
        read_idx(path)


def test_length_short(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">4I", 2051, 2, 28, 28) + bytes(784 + 10))
    with pytest.raises(DataError,
                       match=r"t10k-images-idx3-ubyte: length mismatch \(truncated\).* 1568 .* 794"):
        read_idx(path)


def test_length_trailing_bytes(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">2I", 2049, 3) + bytes(4))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: length mismatch \(trailing bytes\)"):
        read_idx(path)


def test_huge_declared_count_does_not_allocate(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">4I", 2051, 2**31, 28, 28) + bytes(784))
    with pytest.raises(DataError, match="length mismatch"):
        read_idx(path)


# --- untrusted headers: exact sizes, no allocation beyond what the file holds ------------------

def _idx(magic, dims, data=b""):
    return struct.pack(f">{1 + len(dims)}I", magic, *dims) + data


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("content, pattern", [
    (_idx(2051, (0xFFFFFFFF, 28, 28), bytes(784)),
     r"length mismatch \(truncated\): header \[4294967295, 28, 28\] declares 3367254359280 data bytes, "
     r"the file holds 784$"),
    # Products beyond 64 bits: np.prod wrapped these around (to 0 for the second, then "cannot reshape").
    (_idx(2051, (0xFFFFFFFF,) * 3, bytes(10)), r"declares 79228162458924105385300197375 data bytes"),
    (_idx(2051, (2**31, 2**31, 4)), r"declares 18446744073709551616 data bytes, the file holds 0$"),
    (_idx(2051, (0, 28, 28)), r"header declares shape \[0, 28, 28\], with a zero dimension"),
    (_idx(2051, (5, 0, 28), bytes(100)), r"header declares shape \[5, 0, 28\], with a zero dimension"),
    (_idx(2049, (0,)), r"header declares shape \[0\], with a zero dimension"),
    # ndim mismatch: an images magic over a labels-style header reads data bytes as dimensions ...
    (_idx(2051, (1,), bytes([1]) * 784), r"header \[1, 16843009, 16843009\] declares 283686952174081 "
                                          r"data bytes, the file holds 776$"),
    # ... and a labels magic over an images payload leaves the rest as trailing bytes.
    (_idx(2049, (3,), bytes(3 * 784)), r"length mismatch \(trailing bytes\): header \[3\] declares 3 "
                                       r"data bytes, the file holds (2352|more)$"),
], ids=["count-2**32-1", "dims-overflow-64-bits", "dims-product-2**64", "zero-count", "zero-rows",
        "zero-labels", "images-magic-labels-header", "labels-magic-images-data"])
def test_untrusted_header(tmp_path, suffix, content, pattern):
    path = tmp_path / f"t10k-images-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(content, mtime=0) if suffix else content)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: .*{pattern}"):
        read_idx(path)


def test_expected_shape_is_checked_before_the_data(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(_idx(2049, (10_000,)))  # a labels header in the images' place, and no data
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: header declares labels of shape "
                                        r"\[10000\], expected images of shape \[10000, 28, 28\]$"):
        read_idx(path, (10_000, 28, 28))


_BOMB = 64 << 20  # bytes of zeros behind a lying header: 64 MiB that gzip shrinks to about 0.3 MB
_PEAK_LIMIT = 8 << 20


def _bomb(path, dims, data_len=_BOMB):
    path.write_bytes(gzip.compress(_idx(2051, dims, bytes(data_len)), compresslevel=1, mtime=0))
    return path


def _peak_while_failing(fn, *args):
    """Run ``fn(*args)``, which must raise DataError; return (error message, peak traced allocation).

    tracemalloc sees every Python allocation (the read buffers, zlib's output, NumPy's arrays), so a
    reader that holds the decompressed data shows a peak of their size.
    """
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        with pytest.raises(DataError) as info:
            fn(*args)
        return str(info.value), tracemalloc.get_traced_memory()[1]
    finally:
        if started:
            tracemalloc.stop()


def test_gzip_bomb_with_huge_count_is_rejected_in_bounded_memory(tmp_path):
    """The issue's file: a small gzip whose header claims 2**32 - 1 images; the gzip trailer disagrees."""
    path = _bomb(tmp_path / "train-images-idx3-ubyte.gz", (0xFFFFFFFF, 28, 28))
    message, peak = _peak_while_failing(read_idx, path)
    assert peak < _PEAK_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    assert message == (f"{path}: length mismatch (truncated): header [4294967295, 28, 28] declares "
                       f"3367254359280 data bytes, the file holds {_BOMB}")


def test_gzip_bomb_matching_the_trailer_mod_2_32_is_rejected_in_bounded_memory(tmp_path):
    """Declared 2**32 + 64 MiB, holding 64 MiB: the 32-bit gzip trailer agrees, yet nothing is kept."""
    path = _bomb(tmp_path / "train-images-idx3-ubyte.gz", (65, 8192, 8192))
    message, peak = _peak_while_failing(read_idx, path)
    assert peak < _PEAK_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    assert message.endswith(f"declares {2**32 + _BOMB} data bytes, the file holds {_BOMB}")


def test_raw_file_with_huge_count_is_rejected_without_reading(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    with open(path, "wb") as f:
        f.write(_idx(2051, (0xFFFFFFFF, 28, 28)))
        f.truncate(16 + _BOMB)  # sparse: 64 MiB of zeros that take no disk
    message, peak = _peak_while_failing(read_idx, path)
    assert peak < _PEAK_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    assert message.endswith(f"declares 3367254359280 data bytes, the file holds {_BOMB}")


def test_load_split_rejects_a_wrong_count_before_reading_the_data(tmp_path):
    """A self-consistent file (header, data and gzip trailer agree) with 85,599 images instead of 60,000."""
    raw = idx.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    write_idx(raw / "train-labels-idx1-ubyte", _labels(60_000))
    path = _bomb(raw / "train-images-idx3-ubyte.gz", (85_599, 28, 28), 85_599 * 784)
    message, peak = _peak_while_failing(load_split, tmp_path, "train")
    assert peak < _PEAK_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    assert message == (f"{path}: header declares images of shape [85599, 28, 28], "
                       f"expected images of shape [60000, 28, 28]")


def test_load_split_rejects_labels_in_the_images_place(tmp_path):
    raw = idx.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", _labels(10_000))
    write_idx(raw / "t10k-labels-idx1-ubyte", _labels(10_000))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: header declares labels of shape \[10000\], "
                                        r"expected images"):
        load_split(tmp_path, "test")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope-ubyte: file not found"):
        read_idx(tmp_path / "nope-ubyte")


# --- split checks ----------------------------------------------------------------------------

def _test_split(n=10_000):
    labels = (np.arange(n) % 10).astype(np.uint8)
    return np.zeros((n, 28, 28), np.uint8), labels


def test_check_split_accepts_valid():
    check_split("test", *_test_split(), "img", "lbl")


@pytest.mark.parametrize("mutate, pattern", [
    (lambda x, y: (x[:-1], y[:-1]), r"lbl: wrong count: 9999 test examples, expected 10000"),
    (lambda x, y: (x[:-1], y), r"img holds 9999 images but lbl holds 10000 labels"),
    (lambda x, y: (x, np.where(np.arange(len(y)) == 7, 10, y).astype(np.uint8)),
     r"lbl: labels out of range 0\.\.9: 1 bad, first 10 at index 7"),
    (lambda x, y: (x, np.where(np.arange(len(y)) == 1, 0, y).astype(np.uint8)),
     r"lbl: class imbalance: per-class counts \[1001, 999, 1000"),
    (lambda x, y: (x[:, :27, :], y), r"img: images are 27x28, expected 28x28"),
    (lambda x, y: (y, y), r"img: holds a labels file"),
    (lambda x, y: (x, x), r"lbl: holds an images file"),
])
def test_check_split_errors(mutate, pattern):
    with pytest.raises(DataError, match=pattern):
        check_split("test", *mutate(*_test_split()), "img", "lbl")


def test_load_split(tmp_path):
    images, labels = _test_split()
    raw = idx.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", images)  # .gz alone is enough
    write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    x, y = load_split(tmp_path, "test")
    assert x.dtype == np.uint8 and x.shape == (10_000, 28, 28) and x.flags.writeable
    assert y.dtype == np.int64 and (y == labels).all()


def test_load_split_names_file_on_bad_labels(tmp_path):
    images, labels = _test_split()
    labels[0] = 11
    raw = idx.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", images)
    write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: labels out of range"):
        load_split(tmp_path, "test")


def test_load_split_missing_gives_hint(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: not found .*"
                                        r"run: python scripts/prepare_data.py --root "):
        load_split(tmp_path, "train")
    with pytest.raises(ValueError):
        load_split(tmp_path, "val")


# --- atomic writes -----------------------------------------------------------------------------

def test_atomic_write_interrupted_by_failing_rename(tmp_path, monkeypatch):
    path = tmp_path / "train-labels-idx1-ubyte"
    write_idx(path, _labels())
    old = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("simulated crash at rename")

    monkeypatch.setattr(idx.os, "replace", broken_replace)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: cannot write "
                                        r"\(simulated crash at rename\)$"):
        write_idx(path, _labels(50))
    assert path.read_bytes() == old
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, OSError])
def test_atomic_write_interrupted_midway(tmp_path, exc):
    path = tmp_path / "x.gz"
    write_idx(path, _images())
    old = path.read_bytes()
    with pytest.raises(exc):
        with atomic_writer(path) as f:
            f.write(b"partial")
            raise exc()
    assert path.read_bytes() == old
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_idx_disk_full(tmp_path, monkeypatch, suffix):
    """ENOSPC where a full disk reports it last (at fsync): a DataError, no temporary file, old file kept."""
    path = tmp_path / f"train-labels-idx1-ubyte{suffix}"
    write_idx(path, _labels())
    old = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(idx.os, "fsync", full)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: cannot write \(the disk is full\)$"):
        write_idx(path, _labels(50))
    assert path.read_bytes() == old
    assert _leftovers(tmp_path) == []


def test_atomic_write_failed_cleanup_keeps_the_original_error(tmp_path, monkeypatch):
    def refuse(path):
        raise PermissionError(errno.EACCES, "simulated", path)

    monkeypatch.setattr(idx.os, "unlink", refuse)
    with pytest.raises(OSError) as info:
        with atomic_writer(tmp_path / "x") as f:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.errno == errno.ENOSPC


def test_atomic_write_new_file_not_created_on_failure(tmp_path):
    path = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with atomic_writer(path) as f:
            f.write(b"partial")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_uses_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_idx(tmp_path / "x", _labels())
    finally:
        os.umask(old)
    assert (tmp_path / "x").stat().st_mode & 0o777 == 0o644

