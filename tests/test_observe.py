"""What a run shows while and after it trains: TensorBoard event files (``log.tensorboard``), the
live plots, ``augment.png``, and ``scripts/evaluate.py --json`` with the keys of ``summary.json``.

Every run here is ``scripts/train.py`` in a fresh process, as a user types it: the tiny run of
``helpers.tiny_args`` (the cpu preset's WRN-10-1 on 256 training images, batch 64: 4 steps per epoch,
a refresh every 2 steps), the finished one being the session's shared ``tiny_run``.  Event
files are read back with TensorBoard's own reader (``EventAccumulator``: what ``tensorboard`` shows,
after its purging of steps a resumed run rewrote).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from helpers import run_script, tiny_args, train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from fastfm.engine.outputs.summary import SUMMARY_KEYS  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
STEPS = 4         # per epoch: 256 images / batch 64


def base(data_root: Path, out: Path, name: str, *more: str) -> list[str]:
    """The command line of the shared ``tiny_run`` (but its pretrained start), in ``out`` under ``name``."""
    return tiny_args(data_root, out, name, *more)


def events(tb: Path) -> EventAccumulator:
    ea = EventAccumulator(str(tb), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def scalars(ea: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in ea.Scalars(tag)]


def assert_no_duplicate_steps(ea: EventAccumulator) -> None:
    for tag in ea.Tags()["scalars"]:
        steps = [e.step for e in ea.Scalars(tag)]
        assert steps == sorted(set(steps)), (tag, steps)
    for tag in ea.Tags()["tensors"]:
        steps = [e.step for e in ea.Tensors(tag)]
        assert steps == sorted(set(steps)), (tag, steps)


def assert_png(path: Path) -> None:
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG, path
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100, path
        lo, hi = img.convert("L").getextrema()
        assert hi - lo > 100, path            # something was drawn


@pytest.fixture(scope="module")
def fresh(tiny_run) -> Path:
    """The shared finished two-epoch run (TensorBoard on, the preset's default); read it, never change it."""
    assert "log.tensorboard" not in (tiny_run.parent / "output.txt").read_text()
    return tiny_run


# ---------------------------------------------------------------------- TensorBoard


def test_tensorboard_curves_on_one_step_axis(fresh):
    ea = events(fresh / "tb")
    records = [json.loads(line) for line in (fresh / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((fresh / "summary.json").read_text())
    assert_no_duplicate_steps(ea)
    # every refresh, at the global step reached
    for tag in ("train/loss", "train/lr", "train/images_per_sec"):
        assert [s for s, _ in scalars(ea, tag)] == [2, 4, 6, 8], tag
    assert scalars(ea, "train/lr")[-1][1] == pytest.approx(records[-1]["lr"])
    # every epoch, at the step where it ended; the same figures as metrics.jsonl
    assert scalars(ea, "epoch/epoch") == [(STEPS, 1.0), (2 * STEPS, 2.0)]
    for tag, key in (("epoch/train_loss", "train_loss"), ("epoch/test_acc", "test_acc"),
                     ("epoch/test_loss", "test_loss"), ("epoch/time_s", "epoch_time_s"),
                     ("epoch/skipped_steps", "skipped_steps")):
        assert [s for s, _ in scalars(ea, tag)] == [STEPS, 2 * STEPS], tag
        assert [v for _, v in scalars(ea, tag)] == pytest.approx([r[key] for r in records]), tag
    # the end, one step past the last; per-class accuracies with tag-safe names
    final = 2 * STEPS + 1
    for key in ("test_acc", "test_loss", "test_acc_tta", "test_loss_tta"):
        assert scalars(ea, f"final/{key}") == [(final, pytest.approx(summary[key]))], key
    per_class = {t for t in ea.Tags()["scalars"] if t.startswith("final/per_class_acc/")}
    assert len(per_class) == 10 and "final/per_class_acc/T-shirt_top" in per_class
    # the resolved config, as text, at step 0
    (text,) = ea.Tensors("config/text_summary")
    assert text.step == 0
    shown = text.tensor_proto.string_val[0].decode()
    assert [line.strip() for line in shown.splitlines()] == \
           [line.strip() for line in (fresh / "config.yaml").read_text().splitlines()]


def test_tensorboard_inspect_reads_the_run(fresh):
    """``tensorboard --logdir runs`` (here its --inspect mode, which reads and lists without serving)."""
    r = run_script("-m", "tensorboard.main", "--inspect", "--logdir", fresh.parent, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "train/loss" in r.stdout and "epoch/test_acc" in r.stdout and "final/test_acc_tta" in r.stdout


@pytest.mark.slow
def test_resume_after_a_crash_continues_the_curves_without_duplicates(tmp_path, data_root):
    """Killed (as by SIGKILL) just before epoch 2's last.pt is published: its epoch-2 events are on
    disk, beyond the checkpoint (end of epoch 1).  The resumed run purges them and writes its own:
    every (tag, step) once, the values from the resumed run."""
    args = base(data_root, tmp_path, "crashed", "--eval.every", "0")   # writes: last, best, last
    r = run_script("tests/crash_train.py", *args, env={"CRASH_AT": "3", "CRASH_WHEN": "before"})
    assert r.returncode == 137, r.stderr
    run = tmp_path / "crashed"
    # the live plots are there before the run's end: curves.png came with epoch 2's evaluation
    assert not (run / "summary.json").exists()
    assert_png(run / "curves.png")
    assert_png(run / "confusion.png")
    (killed_file,) = (run / "tb").iterdir()
    killed = events(run / "tb")
    assert [s for s, _ in scalars(killed, "train/loss")] == [2, 4, 6, 8]      # past the checkpoint (4)
    killed_rates = dict(scalars(killed, "train/images_per_sec"))

    r = train([*args, "--resume"])
    assert r.returncode == 0, r.stderr
    assert len(list((run / "tb").iterdir())) == 2          # one event file per process
    ea = events(run / "tb")
    assert_no_duplicate_steps(ea)
    assert [s for s, _ in scalars(ea, "train/loss")] == [2, 4, 6, 8]
    assert [s for s, _ in scalars(ea, "epoch/epoch")] == [STEPS, 2 * STEPS]
    rates = dict(scalars(ea, "train/images_per_sec"))
    assert rates[2] == killed_rates[2] and rates[4] == killed_rates[4]      # up to the checkpoint: kept
    resumed = EventAccumulator(str(sorted((run / "tb").iterdir())[-1]), size_guidance={"scalars": 0})
    resumed.Reload()
    assert rates[8] == dict(scalars(resumed, "train/images_per_sec"))[8]     # after it: the resumed run's
    # the config is shown again where the resumed run started
    assert [t.step for t in ea.Tensors("config/text_summary")] == [0, STEPS + 1]
    assert killed_file.exists()


@pytest.mark.slow
def test_resume_of_a_finished_run_replaces_its_final_figures(fresh, tmp_path, data_root):
    """--epochs 2 done, resumed to 3: the two-epoch run's final points (step 9, after its
    checkpoint) are purged; only the three-epoch run's (step 13) remain.  augment.png is kept."""
    run = tmp_path / fresh.name
    shutil.copytree(fresh, run)
    augment = (run / "augment.png").stat().st_mtime_ns
    r = train(base(data_root, tmp_path, fresh.name, "--epochs", "3", "--resume"))
    assert r.returncode == 0, r.stderr
    assert (run / "augment.png").stat().st_mtime_ns == augment          # not redrawn on resume
    ea = events(run / "tb")
    assert_no_duplicate_steps(ea)
    assert [s for s, _ in scalars(ea, "final/test_acc")] == [3 * STEPS + 1]
    assert [s for s, _ in scalars(ea, "epoch/epoch")] == [STEPS, 2 * STEPS, 3 * STEPS]
    assert [s for s, _ in scalars(ea, "train/loss")] == list(range(2, 3 * STEPS + 1, 2))


@pytest.mark.slow
def test_missing_tensorboard_is_one_warning_and_the_run_finishes(tmp_path, data_root):
    r = train(base(data_root, tmp_path, "no_tb", "--epochs", "1"),
              prelude="import sys; sys.modules['torch.utils.tensorboard'] = None")
    assert r.returncode == 0, r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if "log.tensorboard" in line]
    assert lines == [f"warning: log.tensorboard: the tensorboard package is not installed (pip install "
                     f"'fastfm[tb]' or set --log.tensorboard false); not writing {tmp_path / 'no_tb' / 'tb'}"]
    assert not (tmp_path / "no_tb" / "tb").exists()
    assert (tmp_path / "no_tb" / "summary.json").is_file()


def test_a_failing_event_write_is_one_warning_then_silence(tmp_path):
    from fastfm.engine.outputs.tensorboard import TensorBoardLog

    class Full:
        calls = 0

        def add_scalar(self, *a):
            Full.calls += 1
            raise OSError(28, "No space left on device")

        def close(self):
            raise OSError(28, "No space left on device")

    said = []
    log = TensorBoardLog(Full(), tmp_path / "tb", said.append)
    log.refresh(2, 1.0, 0.1, 100.0)
    log.epoch(4, {"epoch": 1, "train_loss": 1.0})
    log.final(5, {"test_acc": 0.5})
    log.close()
    assert Full.calls == 1 and len(said) == 1
    assert said[0].startswith(f"warning: log.tensorboard: writing {tmp_path / 'tb'} failed (OSError")


# ---------------------------------------------------------------------- plots and augment.png


def test_plots_and_augment_png(fresh):
    for name in ("augment.png", "curves.png", "confusion.png"):
        assert_png(fresh / name)


@pytest.mark.slow
def test_plots_are_rewritten_at_each_evaluation(tmp_path, data_root):
    """Every file published (atomic writes end in os.replace), counted: curves.png and
    confusion.png at each evaluation (epochs 2 and 3 with --eval.every 2), augment.png once at the
    start; --log.tensorboard false writes no tb/."""
    log = tmp_path / "published.log"
    prelude = ("import os\n_replace = os.replace\n"
               "def _logged(src, dst, *a, **k):\n"
               f"    with open({str(log)!r}, 'a') as f: f.write(os.path.basename(str(dst)) + '\\n')\n"
               "    return _replace(src, dst, *a, **k)\n"
               "os.replace = _logged\n")
    r = train(base(data_root, tmp_path, "live", "--epochs", "3", "--eval.every", "2",
                   "--log.tensorboard", "false"), prelude=prelude)
    assert r.returncode == 0, r.stderr
    published = Counter(log.read_text().split())
    assert published["curves.png"] == 2 and published["confusion.png"] == 2, published
    assert published["augment.png"] == 1 and published["summary.json"] == 1, published
    assert not (tmp_path / "live" / "tb").exists()


@pytest.mark.slow
def test_overwrite_clears_tb_but_keeps_a_foreign_file(fresh, tmp_path, data_root):
    """--overwrite deletes fastfm's files, tb/'s event files among them; a foreign file in tb/ is
    kept (and so tb/), and named in the warning, like any foreign file of the folder."""
    run = tmp_path / fresh.name
    shutil.copytree(fresh, run)
    (run / "tb" / "notes.txt").write_text("mine")
    old_events = {p.name for p in (run / "tb").iterdir() if p.name.startswith("events.")}
    r = train(base(data_root, tmp_path, fresh.name, "--epochs", "1", "--overwrite"))
    assert r.returncode == 0, r.stderr
    assert "tb/notes.txt" in r.stdout and "kept" in r.stdout
    left = {p.name for p in (run / "tb").iterdir()}
    assert "notes.txt" in left and not (left & old_events) and len(left) == 2
    assert_png(run / "augment.png")


# ---------------------------------------------------------------------- evaluate.py --json


@pytest.mark.slow
def test_evaluate_json_has_the_keys_of_summary_json(fresh, tmp_path):
    out = tmp_path / "eval.json"
    r = run_script("scripts/evaluate.py", "--ckpt", fresh / "last.pt", "--tta", "--json", out)
    assert r.returncode == 0, r.stderr
    summary = json.loads((fresh / "summary.json").read_text())
    ev = json.loads(out.read_text())
    assert list(summary) == list(SUMMARY_KEYS) and set(ev) == set(summary)
    # the same weights and test set: the same figures; the training figures from the checkpoint
    # and the metrics.jsonl beside it
    for key in ("test_acc", "test_loss", "test_acc_tta", "test_loss_tta", "tta_views", "per_class_acc",
                "best_test_acc", "best_epoch", "final_weights", "images_per_sec", "epochs", "world_size",
                "precision", "device", "test_acc_model", "test_loss_model"):
        assert ev[key] == summary[key], key
    assert 0 < ev["wall_time_s"] <= summary["wall_time_s"]


def test_a_one_epoch_curve_is_visible(tmp_path):
    """curves.png is rewritten after the first evaluation: a single point must show (a line through
    one point draws nothing), in the first colour of the cycle."""
    import matplotlib.image

    from fastfm.engine.outputs.plots import plot_curves

    path = tmp_path / "curves.png"
    plot_curves([{"epoch": 1, "train_loss": 1.1, "test_loss": 0.45, "test_acc": 0.87, "lr": 0.1}], path)
    rgb = matplotlib.image.imread(str(path))[..., :3]
    blue = (abs(rgb[..., 0] - 0x1F / 255) < 0.05) & (abs(rgb[..., 1] - 0x77 / 255) < 0.05) & \
        (abs(rgb[..., 2] - 0xB4 / 255) < 0.05)
    # the legend's sample line is blue too: more blue pixels than two legends' lines alone
    legend_only = tmp_path / "legend.png"
    plot_curves([{"epoch": 1, "train_loss": 1.1, "test_loss": 0.45, "test_acc": 0.87}], legend_only)
    rgb0 = matplotlib.image.imread(str(legend_only))[..., :3]
    blue0 = (abs(rgb0[..., 0] - 0x1F / 255) < 0.05) & (abs(rgb0[..., 1] - 0x77 / 255) < 0.05) & \
        (abs(rgb0[..., 2] - 0xB4 / 255) < 0.05)
    assert blue.sum() > blue0.sum() > 0             # the lr point adds blue: points are drawn
