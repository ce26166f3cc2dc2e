"""scripts/compare_runs.py, run exactly as a user types it, on two real tiny runs.

The runs come from scripts/train.py in subprocesses: ``a`` (the session's shared ``tiny_run``) keeps
no EMA and reports TTA; ``b``, trained once for the module, keeps an EMA and no TTA (so its TTA cell
is "-").  Every check reads the figures the runs wrote themselves (summary.json, metrics.jsonl), so
the table is compared with the truth, not with a copy of the script's logic.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO, assert_error, run_script, tiny_args, train

from fastfm.engine.outputs.compare import format_pct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def compare(*args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return run_script(REPO / "scripts" / "compare_runs.py", *args, cwd=cwd, timeout=120)


def row_of(stdout: str, name: str) -> str:
    """The table line of run ``name``."""
    lines = [line for line in stdout.splitlines() if line.split(maxsplit=1)[:1] == [name]]
    assert len(lines) == 1, stdout
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root, tiny_run) -> Path:
    """A folder with two finished runs, ``a`` (a copy of ``tiny_run``: 2 epochs, TTA) and ``b``
    (3 epochs, EMA, no TTA)."""
    out = tmp_path_factory.mktemp("compare")
    shutil.copytree(tiny_run, out / "a")
    r = train(tiny_args(data_root, out, "b", "--epochs", "3", "--ema.enabled", "true", "--eval.tta", "false"))
    assert r.returncode == 0, r.stderr
    return out


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_table_plot_and_json(runs, tmp_path):
    plot, js = tmp_path / "cmp.png", tmp_path / "cmp.json"
    r = compare(runs / "a", runs / "b", "--plot", plot, "--json", js)
    assert r.returncode == 0, r.stderr
    a, b = summary(runs / "a"), summary(runs / "b")
    line_a, line_b = row_of(r.stdout, "a"), row_of(r.stdout, "b")
    assert "done" in line_a and "model" in line_a
    assert format_pct(a["test_acc"]) in line_a and format_pct(a["test_acc_tta"]) in line_a
    assert f"{format_pct(a['best_test_acc'])} @ {a['best_epoch']}" in line_a
    assert "done" in line_b and "EMA" in line_b and b["final_weights"] == "ema"
    assert format_pct(b["test_acc"]) in line_b and b.get("test_acc_tta") is None
    assert line_b.split()[4] == "-"                        # its TTA cell
    assert f"{format_pct(b['best_test_acc'])} @ {b['best_epoch']}" in line_b
    assert b["device"] in line_b
    # The header names the columns the README promises.
    header = r.stdout.splitlines()[0]
    for column in ("test acc", "TTA acc", "best acc @ epoch", "epochs", "wall time", "img/s", "device"):
        assert column in header, header

    data = plot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    from matplotlib.image import imread

    image = imread(plot)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.01                     # not a blank canvas
    assert not list(tmp_path.glob(".*.tmp"))               # the atomic writer left nothing behind

    rows = json.loads(js.read_text())
    assert [row["name"] for row in rows] == ["a", "b"]
    for row, s in zip(rows, (a, b)):
        assert row["status"] == "done"
        for key in ("test_acc", "best_test_acc", "best_epoch", "epochs", "wall_time_s", "images_per_sec", "device"):
            assert row[key] == s[key], key
        assert row["test_acc_tta"] == s.get("test_acc_tta")
    assert rows[1]["test_acc_tta"] is None and rows[1]["weights"] == "ema"


@pytest.mark.slow
def test_a_run_in_progress_is_shown_from_its_metrics(runs, tmp_path):
    """No summary.json yet, two of three epochs in metrics.jsonl: the latest and best EMA accuracy."""
    run = tmp_path / "c"
    shutil.copytree(runs / "b", run)
    (run / "summary.json").unlink()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][:2]
    (run / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in records))
    # A run launched a moment ago: fastfm's marker and config, no epoch done yet.
    fresh = tmp_path / "d"
    fresh.mkdir()
    for name in (".fastfm-run", "config.yaml"):
        shutil.copy(runs / "b" / name, fresh / name)

    js = tmp_path / "cmp.json"
    r = compare(runs / "a", run, fresh, "--plot", tmp_path / "cmp.png", "--json", js)
    assert r.returncode == 0, r.stderr
    line = row_of(r.stdout, "c")
    assert "in progress" in line and " 2/3 " in line and "EMA" in line
    assert format_pct(records[-1]["test_acc_ema"]) in line
    best = max(records, key=lambda rec: rec["test_acc_ema"])
    assert f"{format_pct(best['test_acc_ema'])} @ {best['epoch']}" in line
    assert "in progress" in row_of(r.stdout, "d") and " 0/3 " in row_of(r.stdout, "d")
    assert "in progress" not in row_of(r.stdout, "a")
    rows = {row["name"]: row for row in json.loads(js.read_text())}
    c = rows["c"]
    assert c["status"] == "in progress" and c["epochs"] == 2 and c["epochs_planned"] == 3
    assert c["test_acc"] == records[-1]["test_acc_ema"] and c["wall_time_s"] == records[-1]["wall_time_s"]
    assert c["test_acc_tta"] is None and c["device"] is None
    assert rows["d"]["epochs"] == 0 and rows["d"]["test_acc"] is None


def _missing(tmp: Path) -> Path:
    return tmp / "nope"


def _a_file(tmp: Path) -> Path:
    (tmp / "file.txt").write_text("not a run\n")
    return tmp / "file.txt"


def _not_a_run(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("x\n")
    return tmp / "empty"


@pytest.mark.parametrize("make, says", [
    (_missing, "does not exist"),
    (_a_file, "is not a folder"),
    (_not_a_run, "neither summary.json nor metrics.jsonl"),
])
@pytest.mark.slow
def test_a_bad_run_dir_is_named(runs, tmp_path, make, says):
    bad, plot = make(tmp_path), tmp_path / "cmp.png"
    line = assert_error(compare(runs / "a", bad, "--plot", plot), bad, says)
    assert not plot.exists(), line


@pytest.mark.parametrize("content", ['{"test_acc": 0.5', "[1, 2]", '{"test_acc": "high"}', "\xff\xfe"])
@pytest.mark.slow
def test_a_corrupt_summary_is_named(runs, tmp_path, content):
    run = tmp_path / "broken"
    shutil.copytree(runs / "a", run)
    (run / "summary.json").write_text(content, encoding="latin-1")
    plot = tmp_path / "cmp.png"
    assert_error(compare(run, runs / "b", "--plot", plot), run / "summary.json", "corrupt")
    assert not plot.exists()


@pytest.mark.slow
def test_an_existing_plot_is_replaced_only_with_force(runs, tmp_path):
    plot = tmp_path / "figure.png"
    plot.write_bytes(b"someone's figure")
    # Refused before any run is read: the bad RUN_DIR is not what the error is about.
    assert_error(compare(runs / "a", tmp_path / "nope", "--plot", plot), plot, "--force")
    assert plot.read_bytes() == b"someone's figure"
    js = tmp_path / "rows.json"
    js.write_text("keep\n")
    assert_error(compare(runs / "a", "--plot", tmp_path / "new.png", "--json", js), js, "--force")
    assert js.read_text() == "keep\n" and not (tmp_path / "new.png").exists()

    r = compare(runs / "a", "--plot", plot, "--force")
    assert r.returncode == 0, r.stderr
    assert plot.read_bytes().startswith(PNG_SIGNATURE)


@pytest.mark.slow
def test_the_default_plot_is_compare_png_in_the_current_folder(runs, tmp_path):
    r = compare(runs / "a", runs / "b", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "compare.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "wrote compare.png" in r.stdout
    # the same command again replaces its own earlier figure (stamped in the PNG), nothing else
    before = (tmp_path / "compare.png").read_bytes()
    r = compare(runs / "a", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "compare.png").read_bytes() != before
    (tmp_path / "compare.png").write_bytes(before.replace(b"fastfm compare_runs", b"someone else's!!!!!"))
    assert_error(compare(runs / "a", cwd=tmp_path), "compare.png", "--force")


@pytest.mark.parametrize("option", ["--plot", "--json"])
@pytest.mark.slow
def test_an_unwritable_output_is_refused_before_reading_runs(runs, tmp_path, option):
    target = tmp_path / "no_such_folder" / "out.file"
    args = [option, target] + (["--plot", tmp_path / "cmp.png"] if option == "--json" else [])
    assert_error(compare(tmp_path / "nope", *args), option, target)
    assert_error(compare(runs / "a", "--plot", tmp_path), "--plot", "is a folder")


def test_no_run_dir_is_a_usage_error(tmp_path):
    r = compare(cwd=tmp_path)
    assert r.returncode == 2 and "usage:" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "compare.png").exists()
