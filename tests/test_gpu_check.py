"""benchmarks/gpu_check.sh's plan and what comes back from the GPU machine (fastfm/bench/outputs.py),
on the CPU, and the whole ``--cpu-smoke`` (about a minute) with a fault injected into one backend."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers import REPO, run_script

from fastfm.bench.outputs import MAX_BYTES, check_outputs, pack_traces

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_dry_run_prints_every_stage_budget_and_a_total_within_7_minutes(tmp_path):
    out = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "--dry-run"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    budget = re.search(r"budget \(s\): (.*)total (\d+) \+ (\d+) kill slack = (\d+) s", out.stdout)
    stages = dict(re.findall(r"(\w+) (\d+), ", budget.group(1)))
    assert set(stages) == {"setup", "env", "data", "pytest", "throughput", "aug_cost", "train", "pack"}
    assert sum(map(int, stages.values())) == int(budget.group(2))
    assert int(budget.group(4)) <= 7 * 60
    for name, limit in stages.items():                    # the limits the stages really run under
        assert f"== {name} (limit {limit} s)" in out.stdout
    assert "--matrix --matrix-batches 512 128" in out.stdout
    # no matrix cell starts in the throughput stage's last 60 s: the trace after it keeps its time
    assert f"--matrix-budget-s {int(stages['throughput']) - 60} " in out.stdout
    assert "traces.tar.gz" in out.stdout and not list(tmp_path.iterdir())   # a dry run writes nothing


def test_train_stage_signals_only_the_trainer_and_inductor_cache_is_under_tmp():
    text = SCRIPT.read_text()
    assert "timeout --foreground -s TERM" in text
    assert "TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/" in text
    assert "--train.compile_mode none" in text and "--compile-mode none --matrix-modes none" in text


def _trace(path: Path, events: int) -> None:
    path.write_text(json.dumps({"traceEvents": [{"name": f"aten::op{i}", "ph": "X", "ts": i, "dur": 1,
                                                  "args": {"pad": f"{i:08x}" * 8}} for i in range(events)]}))


@pytest.mark.slow
def test_traces_are_packed_into_one_archive_and_cut_when_too_big(tmp_path):
    traces = tmp_path / "trace"
    traces.mkdir()
    for name in ("trace-native.json", "trace-kornia.json", "trace-dali.json"):
        _trace(traces / name, 20_000)
    whole = tmp_path / "whole.tar.gz"
    notes = pack_traces(traces, whole)
    assert len(notes) == 1 and "3 trace(s)" in notes[0]
    with tarfile.open(whole) as tar:
        assert sorted(tar.getnames()) == ["trace-dali.json", "trace-kornia.json", "trace-native.json"]
    cut = tmp_path / "cut.tar.gz"
    limit = whole.stat().st_size // 3                      # as if the traces were three times the limit
    notes = pack_traces(traces, cut, limit=limit)
    assert cut.stat().st_size <= limit and "cut to their first" in notes[-1]
    with tarfile.open(cut) as tar:
        trace = json.loads(tar.extractfile("trace-native.json").read())
    assert 0 < len(trace["traceEvents"]) < 20_000 and "of 20000 events kept" in trace["fastfm_truncated"]


def test_output_check_names_too_many_too_big_and_too_deep(tmp_path):
    for i in range(8):
        (tmp_path / f"f{i}.json").write_text("{}")
    assert check_outputs(tmp_path) == []
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.json").write_text("{}")
    with open(tmp_path / "f0.json", "wb") as f:
        f.truncate(MAX_BYTES + 1)
    problems = "\n".join(check_outputs(tmp_path))
    assert "9 files, at most 8" in problems and "f0.json: " in problems and "deeper than" in problems


@pytest.mark.parametrize("argv, rc", [(["check"], 2), (["pack", "x"], 2)])
def test_outputs_cli_usage(argv, rc):
    out = run_script("-m", "fastfm.bench.outputs", *argv)
    assert out.returncode == rc and "usage" in out.stderr


@pytest.mark.slow
def test_cpu_smoke_with_a_failing_backend_still_returns_every_other_figure(tmp_path, data_root):
    """``bash benchmarks/gpu_check.sh OUT --cpu-smoke`` with the Kornia backend failing at its first
    batch (tests/fault_kornia/sitecustomize.py, on the caller's PYTHONPATH, which the check keeps):
    the Kornia rows say why they failed, every other row, the matrix and the trace are there, the
    stages that lost a row are named, and OUT keeps to the GPU machine's limits."""
    import os

    out = tmp_path / "out"
    env = dict(os.environ, FASTFM_INJECT_FAULT="kornia", PYTHONPATH=str(REPO / "tests" / "fault_kornia"),
               PYTHON=sys.executable)        # as the README writes it: PYTHON=.venv/bin/python
    r = subprocess.run(["bash", str(SCRIPT), str(out), "--cpu-smoke"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert "FAILED: throughput aug_cost" in r.stdout
    assert "8 entries, within the GPU machine's limits" in r.stdout
    report = json.loads((out / "throughput.json").read_text())
    rows = {(x["mode"], x["pipeline"], x.get("variant")): x for x in report["rows"]}
    for key in (("aug", "kornia", None), ("full", "kornia", None)):
        assert rows[key]["status"] == "failed" and "injected fault" in rows[key]["error"]
    ok = [k for k, x in rows.items() if x["status"] == "ok"]
    for key in (("aug", "native", None), ("aug", "dali", None), ("aug", "baseline", None),
                ("full", "native", None), ("full", "dali", None), ("baseline", "baseline", None),
                ("step", "synthetic input", None)):
        assert key in ok, (key, rows.get(key))
    matrix = [x for x in report["rows"] if x.get("variant")]
    assert len(matrix) == 4 and all(x["status"] == "ok" and x["op_calls"] for x in matrix)
    assert report["trace"]["backend"] == "native"
    costs = json.loads((out / "aug_cost.json").read_text())["rows"]
    assert any(x["status"] == "failed" for x in costs) and sum(x["status"] == "ok" for x in costs) >= 10
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["gpu_check.log", "throughput.json", "throughput.png", "traces.tar.gz", "aug_cost.json",
         "metrics.jsonl", "curves.png", "summary.json"])
