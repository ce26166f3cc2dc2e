"""scripts/preview_augment.py: writes a real PNG grid; bad options give a clear error."""

from __future__ import annotations

import pytest
from helpers import run_script
from PIL import Image


def _run(*args):
    return run_script("scripts/preview_augment.py", *args)


@pytest.mark.slow
def test_preview_writes_png_grid(data_root, tmp_path):
    out = tmp_path / "grid.png"
    r = _run("--backend", "native", "--out", str(out), "--data", str(data_root), "--n", "4",
             "--rows", "2", "--aug.autoaugment", "imagenet")
    assert r.returncode == 0, r.stderr
    assert "native: ok" in r.stdout
    img = Image.open(out)
    assert img.format == "PNG" and img.width > 200 and img.height > 100
    # Not a blank canvas: real images were drawn.
    lo, hi = img.convert("L").getextrema()
    assert hi - lo > 100


@pytest.mark.slow
def test_preview_bad_option_is_named(data_root, tmp_path):
    r = _run("--backend", "native", "--out", str(tmp_path / "g.png"), "--data", str(data_root),
             "--aug.erasing_p", "2")
    assert r.returncode == 2
    assert "aug.erasing_p" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "g.png").exists()


@pytest.mark.slow
def test_preview_missing_data_is_a_clear_error(tmp_path):
    r = _run("--backend", "native", "--out", str(tmp_path / "g.png"), "--data", str(tmp_path))
    assert r.returncode == 2
    assert "prepare_data.py" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, option", [
    (["--n", "0"], "--n"),
    (["--n", "-3"], "--n"),
    (["--rows", "0"], "--rows"),
    (["--device", "tpu"], "--device"),
])
@pytest.mark.slow
def test_preview_bad_count_or_device_is_named(data_root, tmp_path, args, option):
    r = _run("--backend", "native", "--out", str(tmp_path / "g.png"), "--data", str(data_root), *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {option}:") and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "g.png").exists()


def test_preview_unwritable_out_fails_before_reading_data(tmp_path):
    """--data points nowhere: the --out error (not the data error) shows it was checked first."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = _run("--backend", "native", "--out", str(blocker / "g.png"), "--data", str(tmp_path / "no_data"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --out:") and str(blocker) in r.stderr and len(r.stderr.splitlines()) == 1
