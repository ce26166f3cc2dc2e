"""scripts/preview_augment.py: writes a real PNG grid; bad options give a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _run(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "preview_augment.py"), *args],
                          capture_output=True, text=True, timeout=300)


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


def test_preview_bad_option_is_named(data_root, tmp_path):
    r = _run("--backend", "native", "--out", str(tmp_path / "g.png"), "--data", str(data_root),
             "--aug.erasing_p", "2")
    assert r.returncode == 2
    assert "aug.erasing_p" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "g.png").exists()


def test_preview_missing_data_is_a_clear_error(tmp_path):
    r = _run("--backend", "native", "--out", str(tmp_path / "g.png"), "--data", str(tmp_path))
    assert r.returncode == 2
    assert "prepare_data.py" in r.stderr and "Traceback" not in r.stderr
