"""Shared fixtures.  Tests run on CPU by default; tests marked ``gpu`` run only where CUDA is present.

Real Fashion-MNIST is looked up in ``$FASTFM_DATA`` (default ``./data``), as written by
``python scripts/prepare_data.py``.  Where it is missing, tests that need it are skipped, except when
``FASTFM_REQUIRE_DATA=1`` (set by ``.ci/run``), where a missing dataset is an error: CI must not go
green by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ.get("FASTFM_DATA", REPO / "data"))
    raw = root / "FashionMNIST" / "raw"
    # The .gz files alone are enough (load_split reads either): that is what travels to a GPU machine.
    if not any((raw / name).exists() for name in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz")):
        msg = f"Fashion-MNIST not found under {raw}; run: python scripts/prepare_data.py --root {root}"
        if os.environ.get("FASTFM_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def real_images(data_root):
    """A fixed, class-mixed sample of 2048 real training images: uint8 (2048, 1, 28, 28) and int64 labels."""
    from fastfm.data.idx import load_split

    images, labels = load_split(data_root, "train")
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))[:2048]
    x = torch.from_numpy(images)[idx].unsqueeze(1).contiguous()
    y = torch.from_numpy(labels)[idx].long()
    return x, y


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """For modules of thousands of small tensor ops (``pytestmark = usefixtures(...)``): on a 2-core
    machine busy with anything else, intra-op thread barriers make each op many times slower; one
    thread keeps them fast and steady."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_root) -> Path:
    """One finished run folder, trained once per session by ``scripts/train.py`` as a user types it
    (``helpers.tiny_args``: 2 epochs of 4 steps, flip TTA, TensorBoard), for the tests that only read
    a finished run.  It started from a ``--model.pretrained`` file deleted afterwards: whatever reads
    the run must need its folder alone.  What the command printed is in ``output.txt`` beside it.

    Read it, or copy it and change the copy: a test that changes it is an error at the session's end
    (the tests after it would have read another run)."""
    from helpers import tiny_args, train

    from fastfm.config import Config
    from fastfm.models import create_model

    out = tmp_path_factory.mktemp("tiny_run")
    start = out / "start.pt"
    torch.save(create_model(Config.load("cpu")).state_dict(), start)
    r = train(tiny_args(data_root, out, "tiny", "--model.pretrained", start), timeout=300)
    assert r.returncode == 0, r.stderr
    (out / "output.txt").write_text(r.stdout + r.stderr)
    start.unlink()
    run = out / "tiny"
    before = _stamp(run)
    yield run
    assert _stamp(run) == before, f"a test changed the shared run {run}"


def _stamp(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and modification time (but the lock file's)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}
