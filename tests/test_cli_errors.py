"""Mistakes on the command line end in one ``error: ...`` line and exit status 2, never a traceback,
and write nothing: scripts/evaluate.py, scripts/train.py's ``--model.pretrained``, and the benchmarks.

Every case runs the script in a fresh process, exactly as a user types it.  The checkpoint comes from
the session's shared tiny run, which started from a ``--model.pretrained`` file deleted afterwards:
evaluation must need the checkpoint alone.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from helpers import assert_error, launch, run_script, tiny_args, train, wait_for

from fastfm.config import Config
from fastfm.models import create_model


class Foo:
    """Anything that is not plain weights."""


@pytest.fixture(scope="module")
def trained(tiny_run) -> Path:
    """best.pt of the shared WRN-10-1 run, started from a pretrained file that no longer exists."""
    return tiny_run / "best.pt"


def edited(src: Path, dst: Path, edit) -> Path:
    """A copy of the checkpoint ``src`` at ``dst``, changed by ``edit(state)``."""
    state = torch.load(src, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, dst)
    return dst


def used_weights(state: dict) -> dict:
    """The state dict evaluate.py's ``--weights auto`` evaluates."""
    return state["ema"] if state.get("ema") is not None else state["model"]


# ----------------------------------------------------------------------------- evaluate.py


def test_evaluate_needs_only_the_checkpoint(trained, tmp_path):
    state = torch.load(trained, map_location="cpu", weights_only=True)
    gone = Path(state["config"]["model"]["pretrained"])
    assert gone.name == "start.pt" and not gone.exists()
    out = tmp_path / "res.json"
    r = run_script("scripts/evaluate.py", "--ckpt", trained, "--batch-size", 64, "--json", out)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and json.loads(out.read_text())["test_acc"] > 0


@pytest.mark.slow
def test_evaluate_refuses_nonfinite_weights(trained, tmp_path):
    def poison(state):
        used_weights(state)["fc.weight"][0, 0] = float("nan")

    bad = edited(trained, tmp_path / "nan.pt", poison)
    out = tmp_path / "res.json"
    r = run_script("scripts/evaluate.py", "--ckpt", bad, "--json", out)
    assert_error(r, bad, "NaN or inf", "fc.weight")
    assert "accuracy" not in r.stdout and not out.exists()


@pytest.mark.parametrize("name, edit, message", [
    ("dropped_key", lambda s: used_weights(s).pop("fc.bias"), "fc.bias"),
    ("reshaped", lambda s: used_weights(s).__setitem__("fc.weight", torch.zeros(10, 7)), "fc.weight (10, 7)"),
    ("other_model", lambda s: s["config"]["model"].__setitem__("width", 2), "do not fit"),
    ("no_model", lambda s: (s.pop("model"), s.pop("ema")), "holds no 'model' weights"),
    ("no_norm", lambda s: s.pop("norm"), "'norm'"),
    ("bad_config", lambda s: s["config"]["model"].__setitem__("depth", 11), "model.depth"),
    ("no_config", lambda s: s.pop("config"), "not a fastfm checkpoint"),
])
@pytest.mark.slow
def test_evaluate_refuses_a_foreign_or_incomplete_checkpoint(trained, tmp_path, name, edit, message):
    bad = edited(trained, tmp_path / f"{name}.pt", edit)
    out = tmp_path / "res.json"
    r = run_script("scripts/evaluate.py", "--ckpt", bad, "--json", out)
    assert_error(r, bad, message)
    assert r.stdout == "" and not out.exists()


@pytest.mark.parametrize("args, option", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-5"], "--batch-size"),
    (["--device", "tpu"], "--device"),
])
@pytest.mark.slow
def test_evaluate_bad_option_is_named(trained, tmp_path, args, option):
    out = tmp_path / "res.json"
    r = run_script("scripts/evaluate.py", "--ckpt", trained, *args, "--json", out)
    assert_error(r, option)
    assert r.stdout == "" and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
@pytest.mark.slow
def test_evaluate_cuda_without_cuda(trained):
    assert_error(run_script("scripts/evaluate.py", "--ckpt", trained, "--device", "cuda"), "--device", "CUDA")


@pytest.mark.parametrize("where", ["missing_folder", "under_a_file", "a_folder"])
@pytest.mark.slow
def test_evaluate_unwritable_json_fails_before_anything_is_read(trained, tmp_path, where):
    """--data-root points nowhere: the --json error (not the data error) proves the order."""
    path = {"missing_folder": tmp_path / "nope" / "res.json", "under_a_file": trained / "res.json",
            "a_folder": tmp_path}[where]
    r = run_script("scripts/evaluate.py", "--ckpt", trained, "--data-root", tmp_path / "no_data", "--json", path)
    assert_error(r, "--json", path)
    assert r.stdout == "" and not (tmp_path / "nope").exists()


# ----------------------------------------------------------------------------- train.py --model.pretrained


def _bad_pretrained(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "pickled_object":
        with open(path, "wb") as f:
            pickle.dump(Foo(), f)
    elif kind == "torch_saved_list":
        torch.save([torch.zeros(3)], path)
    elif kind == "other_architecture":          # configs/cpu.yaml trains a WRN-10-1
        torch.save(create_model(Config.from_dict({"model": {"depth": 16, "width": 1}})).state_dict(), path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("pickled_object", "not a plain weights file"),
    ("torch_saved_list", "holds a list"),
    ("other_architecture", "does not fit wrn-10-1"),
])
@pytest.mark.slow
def test_train_refuses_bad_pretrained_file(tmp_path, data_root, kind, message):
    bad = _bad_pretrained(tmp_path, kind)
    out = tmp_path / "runs"
    r = train(tiny_args(data_root, out, "x", "--model.pretrained", bad, epochs=1))
    assert_error(r, "model.pretrained", bad, message, only_line=False)
    assert not (out / "x").exists()


# ----------------------------------------------------------------------------- benchmarks


@pytest.mark.parametrize("script, option", [
    ("benchmarks/aug_cost.py", "--json"),
    ("benchmarks/throughput.py", "--json"),
    ("benchmarks/throughput.py", "--plot"),
    ("benchmarks/throughput.py", "--trace"),
])
@pytest.mark.slow
def test_benchmark_unwritable_output_fails_before_measuring(tmp_path, script, option):
    """Default settings (minutes of measuring on a CPU): an empty stdout within the timeout shows
    that nothing was measured (the table is printed before any file is written)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = run_script(script, "--device", "cpu", option, blocker / "sub" / "out", timeout=60)
    assert_error(r, option, blocker)
    assert r.stdout == "" and blocker.read_text() == ""


@pytest.mark.parametrize("script, args, option", [
    ("benchmarks/aug_cost.py", ["--repeats", "0"], "--repeats"),
    ("benchmarks/aug_cost.py", ["--iters", "0"], "--iters"),
    ("benchmarks/aug_cost.py", ["--device", "tpu"], "--device"),
    ("benchmarks/aug_cost.py", ["--batch-size", "0"], "--batch-size"),
    ("benchmarks/throughput.py", ["--repeats", "0"], "--repeats"),
    ("benchmarks/throughput.py", ["--batch-size", "0"], "--batch-size"),
    ("benchmarks/throughput.py", ["--trace-steps", "0"], "--trace-steps"),
    ("benchmarks/throughput.py", ["--device", "tpu"], "--device"),
    ("benchmarks/throughput.py", ["--matrix", "--matrix-budget-s", "-1"], "--matrix-budget-s"),
])
@pytest.mark.slow
def test_benchmark_bad_count_or_device_is_named(tmp_path, script, args, option):
    out = tmp_path / "out.json"
    r = run_script(script, "--device", "cpu", *args, "--json", out, timeout=60)
    assert_error(r, option)
    assert r.stdout == "" and not out.exists()


@pytest.mark.parametrize("script", ["benchmarks/aug_cost.py", "benchmarks/throughput.py"])
@pytest.mark.slow
def test_ctrl_c_in_a_benchmark_is_one_line_and_keeps_the_finished_rows(tmp_path, script):
    """Ctrl-C (SIGINT) while a benchmark measures: exit 130 with one line and no traceback; the JSON,
    rewritten after every row, holds the rows finished before."""
    import signal
    import time

    out = tmp_path / "rows.json"
    args = ["--device", "cpu", "--repeats", "1", "--json", str(out)]
    if script.endswith("throughput.py"):
        args += ["--model", "wrn-10-1", "--batch-size", "8", "--baseline-batch", "8", "--workers", "1",
                 "--warmup", "1", "--iters", "1"]
    else:
        args += ["--batch-size", "256", "--iters", "2"]
    proc = launch(script, *args)
    try:
        wait_for(proc, "row ", timeout=120)
        deadline = time.monotonic() + 60            # the files follow the row lines of one update
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the benchmark ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: the rows measured so far" in err
    assert len(json.loads(out.read_text())["rows"]) >= 1
