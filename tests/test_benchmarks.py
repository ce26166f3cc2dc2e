"""The benchmarks on CPU, in tiny settings: ``benchmarks/throughput.py`` (engine: fastfm/throughput.py),
``benchmarks/aug_cost.py`` (engine: fastfm/augment/cost.py) and ``benchmarks/gpu_check.sh``.

Figures here are meaningless (a WRN-10-1 at batch 8, one timed batch); what is checked is that every
row is present and sane, that the JSON carries what a results file must, that the GTX 1060 row is
flagged as computed, that missing backends are reported, that the trace holds the named ranges, and
that bad options give ``error: ...`` without a traceback.  Real data is used when prepared; the
benchmarks fall back to synthetic images otherwise, so nothing here skips.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastfm.perf import gtx1060_ceiling_images_per_sec
from fastfm.throughput import (NATIVE_OP_RANGES, STEP_RANGES, FullIteration, ResidentData, build_single,
                               profiler_ranges, resolve_settings, throughput_report)

REPO = Path(__file__).resolve().parents[1]
DATA = os.environ.get("FASTFM_DATA", str(REPO / "data"))
TINY = dict(device="cpu", model="wrn-10-1", batch_size=8, baseline_batch=8, workers=1, warmup=1,
            iters=1, repeats=1, data_root=DATA)


def _script(name: str):
    """Import benchmarks/<name>.py as a module (its ``main(argv)`` runs in this process)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hide(monkeypatch, backend: str) -> None:
    """Make a backend's optional dependency unimportable for this test."""
    dependency, module = {"kornia": ("kornia", "fastfm.augment.kornia_backend"),
                          "dali": ("nvidia.dali", "fastfm.augment.dali_backend")}[backend]
    monkeypatch.setitem(sys.modules, dependency, None)
    monkeypatch.delitem(sys.modules, module, raising=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Every mode and backend, with a trace."""
    trace = tmp_path_factory.mktemp("trace")
    return throughput_report(resolve_settings(**TINY), trace_dir=trace, trace_steps=2)


def _rows(report, mode):
    return {r["pipeline"]: r for r in report["rows"] if r["mode"] == mode}


# ----------------------------------------------------------------------------- throughput


def test_every_row_is_present_and_sane(report):
    assert set(_rows(report, "aug")) == {"native", "kornia", "dali", "seed"}
    assert set(_rows(report, "full")) == {"native", "kornia", "dali"}
    assert len(_rows(report, "step")) == len(_rows(report, "baseline")) == len(_rows(report, "reference")) == 1
    for r in report["rows"]:
        assert math.isfinite(r["images_per_sec"]) and r["images_per_sec"] > 0, r
        assert r["ms_per_batch"] > 0
        assert r["images_per_sec"] == pytest.approx(r["batch"] * 1000 / r["ms_per_batch"])
        assert isinstance(r["config"], dict) and r["config"]
    for r in report["rows"]:
        if r["mode"] in ("step", "full", "baseline"):
            assert r["achieved_tflops"] > 0 and r["peak_fraction"] > 0
            assert "measured" in r["peak_source"]            # no spec peak for a CPU
            assert r["vs_baseline"] > 0 and r["vs_gtx1060"] > 0
            assert r["config"]["model"] == "wrn-10-1"
    baseline = next(iter(_rows(report, "baseline").values()))
    assert baseline["vs_baseline"] == pytest.approx(1.0)
    assert baseline["config"]["precision"] == "fp32" and not baseline["config"]["channels_last"]
    assert baseline["batch"] == 8 and baseline["config"]["workers"] == 1
    assert _rows(report, "aug")["seed"]["vs_baseline"] == pytest.approx(1.0)
    for name, r in _rows(report, "full").items():
        assert r["config"]["backend"] == name and r["aug_share"] < 1
        assert r["step_ms"] == pytest.approx(next(iter(_rows(report, "step").values()))["ms_per_batch"])


def test_gtx1060_row_is_flagged_as_computed(report):
    (gtx,) = _rows(report, "reference").values()
    assert gtx["computed"] is True
    assert "not a measurement" in gtx["config"]["note"]
    flops = report["flops_per_image"][32]
    assert gtx["flops_per_image"] == flops
    assert gtx["images_per_sec"] == pytest.approx(gtx1060_ceiling_images_per_sec(flops))
    assert gtx["vs_gtx1060"] == pytest.approx(1.0)
    assert "computed ceiling" in report["markdown"] and "not a measurement" in report["markdown"]


def test_json_names_hardware_and_configuration(report):
    data = json.loads(json.dumps({k: v for k, v in report.items() if k != "markdown"}))
    env = data["environment"]
    for key in ("device", "torch", "git_revision", "date_utc", "load_avg_1_5_15"):
        assert env[key], key
    assert env["device"].startswith("CPU") and env["cuda"] is None
    s = data["settings"]
    assert s["config"]["model"]["depth"] == 10 and s["config"]["train"]["batch_size"] == 8
    assert s["scaled_down"]                    # tiny CPU data set is said
    assert data["missing"] == {}


def test_markdown_table_has_every_row(report):
    md = report["markdown"]
    assert "| mode | pipeline |" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + len(report["rows"])
    assert "aug share" in md and "step-only" in md


def test_trace_has_named_ranges_from_the_training_path(report):
    trace = report["trace"]
    expected = {"train_step", "data.next", "aug", *NATIVE_OP_RANGES, *STEP_RANGES.values()}
    assert trace["backend"] == "native" and set(trace["ranges"]) == expected
    events = json.loads(Path(trace["path"]).read_text())["traceEvents"]
    assert expected <= {e.get("name") for e in events}


def test_profiler_ranges_wrap_the_timed_objects_and_restore_them():
    s = resolve_settings(**TINY)
    training = build_single(s.cfg, s.device, steps_per_epoch=4)
    it = FullIteration(training, ResidentData.synthetic(32), "native", 0.286, 0.353)
    model, scaler, aug, batches = training.step.model, training.step.scaler, it.augmenter, it.batches
    assert aug.op_ranges is False
    with profiler_ranges(it):
        assert training.step.model._target is model and training.step.scaler._target is scaler
        assert it.augmenter._target is aug and aug.op_ranges is True
        it()
    assert training.step.model is model and training.step.scaler is scaler
    assert it.augmenter is aug and it.batches is batches
    assert aug.op_ranges is False and "op_ranges" not in aug.__dict__
    it()


def test_missing_backend_is_reported(monkeypatch):
    _hide(monkeypatch, "kornia")
    s = resolve_settings(**{**TINY, "modes": ("aug", "full"), "backends": ("native", "kornia")})
    report = throughput_report(s)
    assert "kornia" in report["missing"] and "kornia" in report["missing"]["kornia"]
    assert {r["pipeline"] for r in report["rows"] if r["mode"] == "full"} == {"native"}
    assert "kornia: missing" in report["markdown"]


def test_cpu_defaults_are_scaled_down_and_said():
    s = resolve_settings(device="cpu", data_root=DATA)
    assert s.cfg.model.depth == 16 and s.cfg.model.width == 4 and s.batch_size == 64
    said = " ".join(s.scaled)
    assert "wrn-16-4" in said and "wrn-40-4" in said and "batch 64" in said
    explicit = resolve_settings(device="cpu", model="wrn-10-2", batch_size=32, warmup=0, iters=2,
                                repeats=2, data_root=DATA)
    assert explicit.cfg.model.width == 2 and not any("model" in x or "batch " in x for x in explicit.scaled)
    preset = resolve_settings(device="cpu", config=str(REPO / "configs" / "fast.yaml"), data_root=DATA)
    assert preset.cfg.model.depth == 16 and preset.cfg.model.width == 8 and preset.cfg.train.compile


@pytest.mark.parametrize("argv, message", [
    (["--backends", "nosuch"], "invalid choice"),
    (["--batch-size", "1"], "--batch-size must be at least 2"),
    (["--model", "nosuchnet"], "model.name"),
    (["--model", "wrn-11-4"], "model.depth"),
    (["--device", "cuda"], "CUDA is not available"),
])
def test_bad_options_give_an_error_line(capsys, argv, message):
    if argv == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is present")
    main = _script("throughput").main
    argv = argv + ["--device", "cpu"] if "--device" not in argv else argv
    try:
        rc = main(argv + ["--mode", "step", "--iters", "1", "--repeats", "1", "--warmup", "0"])
    except SystemExit as exc:                  # argparse: usage + "error: ..." and exit status 2
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and message in err and "Traceback" not in err


def test_cli_writes_json_and_plot(tmp_path):
    """The script as a user runs it (a fresh process): table on stdout, JSON and PNG written."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--device", "cpu", "--model", "wrn-10-1",
         "--mode", "step", "baseline", "--batch-size", "4", "--baseline-batch", "4", "--workers", "0",
         "--warmup", "0", "--iters", "1", "--repeats", "1", "--data", DATA,
         "--json", str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png")],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| step | synthetic input |" in out.stdout and "GTX 1060" in out.stdout
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["step", "baseline", "reference"]
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- aug_cost


def test_aug_cost_rows_and_json(tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "dali")
    path = tmp_path / "aug.json"
    rc = _script("aug_cost").main(["--device", "cpu", "--backends", "native", "kornia", "dali",
                                   "--batch-size", "8", "--iters", "1", "--repeats", "1", "--data", DATA,
                                   "--json", str(path)])
    assert rc == 0
    report = json.loads(path.read_text())
    assert report["environment"]["device"].startswith("CPU")
    assert "dali" in report["missing"] and "dali: missing" in capsys.readouterr().out
    for backend in ("native", "kornia"):
        rows = [r for r in report["rows"] if r["backend"] == backend]
        ops = [r["op"] for r in rows]
        assert ops[0] == "base" and ops[-1] == "stack" and "+autoaugment" in ops and "+cutmix" in ops
        stack = rows[-1]
        assert stack["images_per_sec"] > 0 and stack["vs_seed"] > 0
        assert sum(r["op_ms"] for r in rows[:-1]) == pytest.approx(stack["rung_ms"])
    seed = [r for r in report["rows"] if r["backend"] == "seed"]
    assert len(seed) == 1 and seed[0]["images_per_sec"] > 0 and seed[0]["vs_seed"] == pytest.approx(1.0)


def test_aug_cost_bad_batch_is_an_error_line(capsys):
    rc = _script("aug_cost").main(["--device", "cpu", "--batch-size", "1", "--backends", "native"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "Traceback" not in err


# ----------------------------------------------------------------------------- gpu_check.sh


def test_gpu_check_script_parses_and_dry_runs(tmp_path):
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    out = subprocess.run(["bash", str(script), str(tmp_path), "--dry-run"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    for stage in ("setup", "env", "data", "pytest", "throughput", "aug_cost", "train"):
        assert f"== {stage} (limit" in out.stdout
    assert "pytest -m gpu" in out.stdout and "configs/fast.yaml" in out.stdout
    assert "--trace" in out.stdout and "--device cuda --json" in out.stdout
    bad = subprocess.run(["bash", str(script), str(tmp_path), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr
