"""The benchmarks on CPU, in tiny settings: ``benchmarks/throughput.py`` and ``benchmarks/aug_cost.py``
(engines in ``fastfm/bench/``) and ``benchmarks/gpu_check.sh``.

Figures here are meaningless (a WRN-10-1 at batch 8, one timed batch); what is checked is what can
break: every row is present, in the one row format, and named as documented (``baseline``, never
``seed``); the op ladder covers every op of the configuration, one op per rung; the full rows run
the engine's own hot path and the trace leaves it as it was; a missing or failing backend is
reported in its own rows while the others are measured; the JSON carries the environment from
``fastfm.runinfo``; bad options give ``error: ...`` without a traceback.  Real data is used when
prepared; the benchmarks fall back to synthetic images otherwise, so nothing here skips.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, run_script

import fastfm.runinfo
from fastfm.augment import AugConfig
from fastfm.augment import create_augmenter as real_create_augmenter
from fastfm.bench import aug_cost, hot_path
from fastfm.bench.aug_cost import OPS, aug_cost_report, op_ladder
from fastfm.bench.flops import gtx1060_ceiling_images_per_sec
from fastfm.bench.hot_path import (
    build_single,
    iteration_fn,
    native_config,
    with_backend,
)
from fastfm.bench.report import Row, report_json, write_report_json
from fastfm.bench.throughput import resolve_settings, throughput_report
from fastfm.bench.trace import write_trace
from fastfm.data.resident import ResidentData

DATA = os.environ.get("FASTFM_DATA", str(REPO / "data"))
TINY = dict(device="cpu", model="wrn-10-1", batch_size=8, baseline_batch=8, workers=1, warmup=1,
            iters=1, repeats=1, data_root=DATA)
ROW_KEYS = {f.name for f in dataclasses.fields(Row)} | {"images_per_sec"}


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


def _break(monkeypatch, backend: str) -> None:
    """Make creating ``backend``'s augmenter raise, wherever the benchmarks create one."""

    def create(cfg, *args, **kwargs):
        if cfg.backend == backend:
            raise RuntimeError(f"{backend} broke on purpose")
        return real_create_augmenter(cfg, *args, **kwargs)

    for module in (aug_cost, hot_path):
        monkeypatch.setattr(module, "create_augmenter", create)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Every mode and backend, with a trace."""
    trace = tmp_path_factory.mktemp("trace")
    return throughput_report(resolve_settings(**TINY), trace_dir=trace, trace_steps=2)


def _rows(report, mode):
    return {r.pipeline: r for r in report["rows"] if r.mode == mode}


# ----------------------------------------------------------------------------- throughput


@pytest.mark.slow
def test_every_row_is_present_and_sane(report):
    assert set(_rows(report, "aug")) == {"native", "kornia", "dali", "baseline"}
    assert set(_rows(report, "full")) == {"native", "kornia", "dali"}
    assert set(_rows(report, "step")) == {"synthetic input"}
    assert set(_rows(report, "baseline")) == {"baseline"}
    assert len(_rows(report, "reference")) == 1
    for r in report["rows"]:
        assert r.ok and r.error is None, r
        assert math.isfinite(r.images_per_sec) and r.images_per_sec > 0, r
        assert r.images_per_sec == pytest.approx(r.batch * 1000 / r.ms_per_batch)
        assert isinstance(r.config, dict) and r.config
    for r in report["rows"]:
        if r.mode in ("step", "full", "baseline"):
            assert r.achieved_tflops > 0 and r.peak_fraction > 0
            assert "measured" in r.peak_source            # no spec peak for a CPU
            assert r.vs_baseline > 0 and r.vs_gtx1060 > 0
            assert r.config["model"] == "wrn-10-1"
    base = _rows(report, "baseline")["baseline"]
    assert base.vs_baseline == pytest.approx(1.0)
    assert base.precision == "fp32" and base.config["precision"] == "fp32" and not base.config["channels_last"]
    assert base.batch == 8 and base.config["workers"] == 1
    assert _rows(report, "aug")["baseline"].vs_baseline == pytest.approx(1.0)
    step = _rows(report, "step")["synthetic input"]
    for name, r in _rows(report, "full").items():
        assert r.config["backend"] == name and r.aug_share < 1
        assert r.step_ms == step.ms_per_batch


@pytest.mark.slow
def test_baseline_is_named_baseline_everywhere(report):
    """One name for the original pipeline: ``seed`` may only ever be a random seed (``train.seed``)."""
    data = report_json(report)
    assert ("aug", "baseline") in {(r["mode"], r["pipeline"]) for r in data["rows"]}
    assert ("baseline", "baseline") in {(r["mode"], r["pipeline"]) for r in data["rows"]}
    rows_text = json.dumps(data["rows"]).lower()
    assert "seed" not in rows_text and "seed" not in report["markdown"].lower()


@pytest.mark.slow
def test_gtx1060_row_is_flagged_as_computed(report):
    (gtx,) = _rows(report, "reference").values()
    assert gtx.computed is True
    assert "not a measurement" in gtx.config["note"]
    flops = report["flops_per_image"][32]
    assert gtx.flops_per_image == flops
    assert gtx.images_per_sec == pytest.approx(gtx1060_ceiling_images_per_sec(flops))
    assert gtx.vs_gtx1060 == pytest.approx(1.0)
    assert "computed ceiling" in report["markdown"] and "not a measurement" in report["markdown"]


@pytest.mark.slow
def test_json_holds_settings_and_one_row_format(report, tmp_path):
    path = tmp_path / "t.json"
    write_report_json(report, path)
    data = json.loads(path.read_text())
    env = data["environment"]
    assert set(fastfm.runinfo.environment(torch.device("cpu"))) <= set(env)
    assert env["device"] == fastfm.runinfo.device_name(torch.device("cpu")) and env["cuda"] is None
    assert env["git_revision"] == fastfm.runinfo.git_revision() and env["load_avg_1_5_15"]["after"]
    s = data["settings"]
    assert s["config"]["model"]["depth"] == 10 and s["config"]["train"]["batch_size"] == 8
    assert s["scaled_down"]                    # tiny CPU data set is said
    assert data["missing"] == {} and "markdown" not in data
    for r in data["rows"]:
        assert set(r) == ROW_KEYS


@pytest.mark.slow
def test_markdown_table_has_every_row(report):
    md = report["markdown"]
    assert "| mode | pipeline |" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + len(report["rows"])
    assert "aug share" in md and "step-only" in md


@pytest.mark.slow
def test_trace_has_named_ranges_from_the_training_path(report):
    trace = report["trace"]
    assert trace["backend"] == "native" and trace["steps"] == 2
    ranges = set(trace["ranges"])
    assert {"train_step", "data.next", "autograd::engine::evaluate_function: *"} <= ranges
    assert any(r.startswith("Optimizer.step#") for r in ranges)
    assert len([r for r in ranges if r.startswith("aug.")]) >= 3     # the augmenter's own op ranges
    names = {e.get("name") for e in json.loads(Path(trace["path"]).read_text())["traceEvents"]}
    assert {"train_step", "data.next"} <= names and any(str(n).startswith("aug.") for n in names)


def _tiny_hot_path(**train):
    s = resolve_settings(**TINY)
    data = ResidentData.synthetic(32)
    return build_single(native_config(s.cfg, train=train), s.device, data, 0.286, 0.353)


@pytest.mark.slow
def test_full_rows_run_the_engines_hot_path_unpatched(tmp_path):
    """The timed function is the engine's own ``HotPath.iteration`` (its device-side statistics
    count every call); another backend's row shares the model and optimizer through a new object;
    tracing changes none of the hot path's attributes."""
    hot = _tiny_hot_path()
    attributes = dict(vars(hot))
    run = iteration_fn(hot)
    for _ in range(5):                          # 4 batches per epoch: crosses an epoch boundary
        run()
    assert hot.stats.finite.item() == 5 and hot.loader.epoch == 1
    kornia = with_backend(hot, "kornia", 0.286, 0.353)
    assert kornia is not hot and kornia.augmenter.name == "kornia" and hot.augmenter.name == "native"
    assert kornia.model is hot.model and kornia.optimizer_step is hot.optimizer_step and kornia.optimizer is hot.optimizer
    assert with_backend(hot, "native", 0.286, 0.353) is hot
    write_trace(hot, ("native",), 0.286, 0.353, tmp_path, steps=1)
    assert all(getattr(hot, k) is v for k, v in attributes.items()) and vars(hot).keys() == attributes.keys()
    assert hot.augmenter.op_ranges is False and "op_ranges" not in vars(hot.augmenter)


@pytest.mark.slow
def test_missing_and_failing_backends_are_reported_in_their_rows(monkeypatch):
    """A missing dependency and a backend that raises each mark their own rows; the rest is measured."""
    _hide(monkeypatch, "dali")
    _break(monkeypatch, "kornia")
    s = resolve_settings(**{**TINY, "modes": ("aug", "full"), "backends": ("native", "kornia", "dali")})
    report = throughput_report(s)
    rows = {(r.mode, r.pipeline): r for r in report["rows"]}
    for mode in ("aug", "full"):
        assert rows[mode, "native"].ok and rows[mode, "native"].images_per_sec > 0
        assert rows[mode, "kornia"].status == "failed" and "broke on purpose" in rows[mode, "kornia"].error
        assert rows[mode, "dali"].status == "missing" and "nvidia" in rows[mode, "dali"].error
        assert rows[mode, "kornia"].images_per_sec is None and rows[mode, "dali"].vs_baseline is None
    assert rows["aug", "baseline"].ok
    assert set(report["missing"]) == {"dali"}
    assert "dali (aug, full): missing" in report["markdown"]
    assert "kornia (aug, full): failed — RuntimeError: kornia broke on purpose" in report["markdown"]


def test_cpu_defaults_are_scaled_down_and_said():
    s = resolve_settings(device="cpu", data_root=DATA)
    assert s.cfg.model.depth == 16 and s.cfg.model.width == 4 and s.batch_size == 64
    said = " ".join(s.scaled)
    assert "wrn-16-4" in said and "wrn-40-4" in said and "batch 64" in said
    explicit = resolve_settings(device="cpu", model="wrn-10-2", batch_size=32, warmup=0, iters=2,
                                repeats=2, data_root=DATA)
    assert explicit.cfg.model.width == 2 and not any("model" in x or "batch " in x for x in explicit.scaled)
    preset = resolve_settings(device="cpu", config=str(REPO / "configs" / "fast.yaml"), data_root=DATA)
    assert preset.cfg.model.depth == 16 and preset.cfg.model.width == 8 and preset.cfg.train.compile_mode != "none"


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


@pytest.mark.slow
def test_cli_writes_json_and_plot(tmp_path):
    """The script as a user runs it (a fresh process): table on stdout, JSON and PNG written."""
    out = run_script(
        REPO / "benchmarks" / "throughput.py", "--device", "cpu", "--model", "wrn-10-1",
        "--mode", "step", "baseline", "--batch-size", "4", "--baseline-batch", "4", "--workers", "0",
        "--warmup", "0", "--iters", "1", "--repeats", "1", "--data", DATA,
        "--json", tmp_path / "t.json", "--plot", tmp_path / "t.png", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| step | synthetic input |" in out.stdout and "| baseline | baseline |" in out.stdout
    assert "GTX 1060" in out.stdout
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [(r["mode"], r["pipeline"]) for r in rows][:2] == [("step", "synthetic input"), ("baseline", "baseline")]
    assert rows[2]["mode"] == "reference" and rows[2]["computed"]
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- aug_cost


FULL = AugConfig(backend="kornia", resize=40, crop=30, flip_p=0.3, autoaugment="imagenet", erasing_p=0.2,
                 erasing_value=0.5, cutmix_p=0.4, mixup_p=0.3, mixup_alpha=0.4, channels=3,
                 channels_last=False, num_classes=7)


def test_op_ladder_switches_on_one_op_per_rung_in_the_documented_order():
    ladder = op_ladder(FULL)
    names = [name for name, _ in ladder]
    assert names == ["base", "resize", "crop", "flip", "autoaugment", "erasing", "cutmix", "mixup"]
    assert ladder[-1][1] == FULL                # the top rung is the whole configuration, nothing lost
    fields = [f.name for f in dataclasses.fields(AugConfig)]
    for (_, below), (name, cfg) in zip(ladder, ladder[1:]):
        changed = [f for f in fields if getattr(cfg, f) != getattr(below, f)]
        assert changed == [dict(OPS)[name]], (name, changed)
        assert getattr(cfg, changed[0]) == getattr(FULL, changed[0])
        cfg.validate()
    # the base rung has every op off that AugConfig.off() switches off, and nothing else changed
    off = AugConfig.off(resize=0, crop=0)
    switched = {f for f in fields if getattr(off, f) != getattr(AugConfig(), f)}
    assert switched <= set(dict(OPS).values()), f"ops the ladder does not know: {switched - set(dict(OPS).values())}"
    base = ladder[0][1]
    for f in fields:
        assert getattr(base, f) == (getattr(off, f) if f in dict(OPS).values() else getattr(FULL, f)), f


def test_op_ladder_skips_ops_that_are_off():
    ladder = op_ladder(AugConfig(autoaugment="none", erasing_p=0.0))
    assert [name for name, _ in ladder] == ["base", "resize", "crop", "flip", "cutmix"]
    assert ladder[-1][1] == AugConfig(autoaugment="none", erasing_p=0.0)


def test_aug_cost_rows_and_json(tmp_path, monkeypatch, capsys):
    _hide(monkeypatch, "dali")
    monkeypatch.setattr(fastfm.runinfo, "git_revision", lambda: "rev-from-runinfo")
    path = tmp_path / "aug.json"
    rc = _script("aug_cost").main(["--device", "cpu", "--backends", "native", "kornia", "dali",
                                   "--batch-size", "8", "--iters", "1", "--repeats", "1", "--data", DATA,
                                   "--json", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["environment"]["device"].startswith("CPU")
    assert report["environment"]["git_revision"] == "rev-from-runinfo"
    assert "dali" in report["missing"] and "dali (aug): missing" in out
    for r in report["rows"]:
        assert set(r) == ROW_KEYS
    for backend in ("native", "kornia"):
        rows = [r for r in report["rows"] if r["pipeline"] == backend]
        assert [r["op"] for r in rows[:-1]] == ["base", "+resize", "+crop", "+flip", "+autoaugment",
                                                "+erasing", "+cutmix"]
        assert all(r["mode"] == "op" for r in rows[:-1])
        stack = rows[-1]
        full = dataclasses.asdict(AugConfig(backend=backend))
        assert stack["mode"] == "aug" and stack["config"]["aug"] == json.loads(json.dumps(full))
        assert stack["ms_per_batch"] == rows[-2]["ms_per_batch"] and stack["vs_baseline"] > 0
    (base,) = [r for r in report["rows"] if r["pipeline"] == "baseline"]
    assert base["mode"] == "aug" and base["images_per_sec"] > 0 and base["vs_baseline"] == pytest.approx(1.0)
    assert "seed" not in json.dumps(report["rows"]).lower() and "seed" not in out.lower()


def test_aug_cost_failing_backend_keeps_the_others_and_exits_1(monkeypatch, capsys):
    _break(monkeypatch, "kornia")
    rc = _script("aug_cost").main(["--device", "cpu", "--backends", "kornia", "native", "--batch-size", "8",
                                   "--iters", "1", "--repeats", "1", "--data", DATA, "--no-baseline"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "kornia (aug): failed — RuntimeError: kornia broke on purpose" in captured.out
    assert "| native | aug |" in captured.out and "| baseline |" not in captured.out
    assert "Traceback" in captured.err                  # the fault's traceback is kept for the log


def test_aug_cost_report_rows_are_rows():
    report = aug_cost_report(device="cpu", backends=("native",), batch_size=4, data_root=DATA, repeats=1,
                             iters=1, include_baseline=False, full=AugConfig.off())
    assert all(isinstance(r, Row) for r in report["rows"])
    assert [(r.mode, r.op) for r in report["rows"]] == [("op", "base"), ("op", "+resize"), ("op", "+crop"),
                                                        ("aug", None)]


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
    assert "--trace" in out.stdout and "--device cuda --repeats 3 --json" in out.stdout
    bad = subprocess.run(["bash", str(script), str(tmp_path), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr


# ----------------------------------------------------------------------------- fault isolation

# The kornia augmenter broken, patched before a benchmark script starts (so the script itself is run
# unmodified, as on the GPU machine).
BREAK_KORNIA = """
import fastfm.bench.aug_cost as aug_cost, fastfm.bench.hot_path as hot_path
real = hot_path.create_augmenter
def create(cfg, *args, **kwargs):
    if cfg.backend == "kornia":
        raise RuntimeError("kornia broke on purpose")
    return real(cfg, *args, **kwargs)
hot_path.create_augmenter = aug_cost.create_augmenter = create
"""


@pytest.mark.slow
def test_a_broken_backend_fails_only_its_rows_and_every_other_figure_is_written(tmp_path):
    """The script, with one backend raising: every other row is in the JSON and the markdown, the
    trace is written, the exit status is 1 and the failed rows are named on stderr."""
    out = run_script(
        REPO / "benchmarks" / "throughput.py", "--device", "cpu",
        "--model", "wrn-10-1", "--batch-size", "8", "--baseline-batch", "8", "--workers", "1", "--warmup", "1",
        "--iters", "1", "--repeats", "1", "--mode", "aug", "step", "full", "--backends", "native", "kornia",
        "--data", DATA, "--json", tmp_path / "t.json", "--markdown", tmp_path / "t.md",
        "--trace", tmp_path / "trace", "--trace-steps", "1",
        prelude=BREAK_KORNIA, env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 1, out.stderr[-3000:]
    assert "failed: aug/kornia, full/kornia" in out.stderr and "broke on purpose" in out.stderr
    data = json.loads((tmp_path / "t.json").read_text())
    rows = {(r["mode"], r["pipeline"]): r for r in data["rows"]}
    for key in (("aug", "native"), ("aug", "baseline"), ("step", "synthetic input"), ("full", "native")):
        assert rows[key]["status"] == "ok" and rows[key]["images_per_sec"] > 0, key
    for key in (("aug", "kornia"), ("full", "kornia")):
        assert rows[key]["status"] == "failed" and "kornia broke on purpose" in rows[key]["error"]
    assert data["trace"]["backend"] == "native" and Path(data["trace"]["path"]).is_file()
    assert "| full | kornia |" in (tmp_path / "t.md").read_text()
    assert out.stdout.count("\nrow ") + out.stdout.startswith("row ") == len(data["rows"])  # one line per row


@pytest.mark.slow
def test_json_is_rewritten_after_every_row_and_a_failed_trace_is_its_own_failure(monkeypatch):
    """``on_update`` sees the report grow one row (or one backend's rows) at a time; a trace that
    raises is reported as failed, after every row was measured."""
    from fastfm.bench import throughput
    from fastfm.bench.report import failures

    def broken_trace(*args, **kwargs):
        raise RuntimeError("trace broke on purpose")

    monkeypatch.setattr(throughput, "write_trace", broken_trace)
    seen = []
    s = resolve_settings(**{**TINY, "modes": ("aug", "step"), "backends": ("native",)})
    report = throughput_report(s, trace_dir="unused", trace_steps=1,
                               on_update=lambda r: seen.append([(x.mode, x.pipeline) for x in r["rows"]]))
    counts = [len(rows) for rows in seen]
    assert counts[0] == 1 and counts == sorted(counts) and seen[-1] == seen[-2]   # the last call: the end
    assert all(r.ok for r in report["rows"]) and ("step", "synthetic input") in seen[-1]
    assert report["trace"] == dict(status="failed", error="RuntimeError: trace broke on purpose")
    assert failures(report) == ["trace"] and "trace: failed" in report["markdown"]


# ----------------------------------------------------------------------------- peaks


@pytest.mark.parametrize("name, precision, tf32, tflops, source", [
    ("NVIDIA H100 80GB HBM3", "bf16", True, 989.0, "spec bf16 dense H100 SXM"),
    ("NVIDIA H100 80GB HBM3", "fp32", True, 494.5, "spec tf32 dense H100 SXM"),
    ("NVIDIA H100 80GB HBM3", "fp32", False, 67.0, "spec fp32 dense H100 SXM"),
    ("NVIDIA H100 PCIe", "bf16", True, 756.0, "spec bf16 dense H100 PCIe"),
    ("NVIDIA H100 PCIe", "fp32", True, 378.0, "spec tf32 dense H100 PCIe"),
    ("NVIDIA H100 PCIe", "fp32", False, 51.0, "spec fp32 dense H100 PCIe"),
    ("NVIDIA H100 NVL", "fp16", False, 835.0, "spec fp16 dense H100 NVL"),
    ("NVIDIA H200", "bf16", False, 989.0, "spec bf16 dense H200 SXM"),
    ("NVIDIA H200", "fp32", True, 494.5, "spec tf32 dense H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "bf16", True, 312.0, "spec bf16 dense A100"),
    ("NVIDIA A100-SXM4-80GB", "fp32", True, 156.0, "spec tf32 dense A100"),
    ("NVIDIA A100-SXM4-80GB", "fp32", False, 19.5, "spec fp32 dense A100"),
])
def test_spec_peak_follows_device_name_precision_and_tf32(name, precision, tf32, tflops, source):
    from fastfm.bench.flops import spec_peak
    peak, why = spec_peak(name, precision, tf32)
    assert peak == tflops and why.startswith(source)


def test_no_spec_peak_for_unknown_devices_or_math_modes():
    from fastfm.bench.flops import spec_peak
    assert spec_peak("Some Future GPU", "bf16", True) is None
    assert spec_peak("Tesla V100-SXM2-16GB", "bf16", False) is None     # no bf16 on Volta
    assert spec_peak("Tesla V100-SXM2-16GB", "fp32", True) is None      # no TF32 either


@pytest.mark.slow
def test_cpu_rows_give_both_fractions_against_the_measured_ceiling(report):
    for r in report["rows"]:
        if r.mode in ("step", "full", "baseline"):
            assert r.peak_tflops > 0 and r.measured_peak_fraction == pytest.approx(r.peak_fraction)
            assert "measured" in r.measured_peak_source and r.clock == "wall"


# ----------------------------------------------------------------------------- the matrix


@pytest.mark.slow
def test_matrix_rows_carry_variant_and_operator_calls_eager_and_compiled():
    """The matrix on the CPU (eager and compiled, one small batch): a step and a full row per cell,
    each naming what ran, with positive ATen operator counts for the augmenter and the step."""
    s = resolve_settings(**{**TINY, "modes": ("step",), "backends": ("native",)})
    report = throughput_report(s, matrix=dict(batches=(4,), compile_modes=("none", "default")))
    cells = [r for r in report["rows"] if r.variant]
    assert [(r.mode, r.variant) for r in cells] == [
        ("step", "eager, batch 4"), ("full", "eager, batch 4"),
        ("step", "compiled, batch 4"), ("full", "compiled, batch 4")]
    for r in cells:
        assert r.ok and r.batch == 4 and r.images_per_sec > 0 and r.peak_fraction > 0, r
        assert r.config["compile_mode"] in ("none", "default") and r.config["cuda_graphs"] is False
        assert r.config["augmenter_compiled"] is False      # eager on the CPU, whatever the mode
        assert r.op_calls["step"]["aten_ops"] > 0 and r.op_calls["augmenter"]["aten_ops"] > 0
    assert "| eager, batch 4 |" in report["markdown"]


def test_matrix_never_names_cuda_graphs_on_the_cpu():
    from fastfm.bench.throughput import matrix_variant
    assert "CUDA graphs" not in matrix_variant("reduce-overhead", 8, torch.device("cpu")).replace(
        "without CUDA graphs", "")
    assert matrix_variant("reduce-overhead", 512, torch.device("cuda")) == "compiled + CUDA graphs, batch 512"


@pytest.mark.slow
def test_matrix_budget_skips_the_cells_left_and_the_trace_still_runs(tmp_path):
    """``benchmarks/throughput.py --matrix --matrix-budget-s 0`` as the GPU check would cap it:
    every matrix cell is a ``skipped`` row naming the option (two per cell, with its variant), the
    other rows are measured, the trace after the matrix is written, and skipped is not failed."""
    out = tmp_path / "t.json"
    r = run_script("benchmarks/throughput.py", "--device", "cpu", "--model", "wrn-10-1",
                   "--batch-size", "8", "--baseline-batch", "8", "--workers", "1", "--warmup", "1",
                   "--iters", "1", "--repeats", "1", "--mode", "step", "--backends", "native",
                   "--data", DATA, "--matrix", "--matrix-batches", "8", "--matrix-modes", "none", "default",
                   "--matrix-budget-s", "0", "--trace", tmp_path / "trace", "--trace-steps", "1",
                   "--json", out)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    cells = [x for x in report["rows"] if x["variant"]]
    assert [(x["mode"], x["variant"], x["status"]) for x in cells] == [
        ("step", "eager, batch 8", "skipped"), ("full", "eager, batch 8", "skipped"),
        ("step", "compiled, batch 8", "skipped"), ("full", "compiled, batch 8", "skipped")]
    assert all("--matrix-budget-s" in x["error"] for x in cells)
    assert [x["status"] for x in report["rows"] if not x["variant"] and x["mode"] == "step"] == ["ok"]
    assert report["trace"]["backend"] == "native" and Path(report["trace"]["path"]).exists()
    assert "skipped — skipped: --matrix-budget-s spent" in r.stdout          # the markdown notes
