"""The typed configuration: presets, CLI overrides, and clear errors for bad keys and values."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO, train

from fastfm.config import Config, ConfigError
from fastfm.configio import MAX_FILE_BYTES, all_keys, build, keys_help, opt, parse_overrides, section, set_dotted

PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def test_presets_exist():
    names = {p.stem for p in PRESETS}
    assert {"wrn40_4_adam", "wrn40_4_mish_ranger", "fast", "cpu"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_and_validates(path):
    cfg = Config.load(path)
    assert cfg.name == path.stem
    assert Config.from_dict(cfg.to_dict()) == cfg       # resolved config round-trips


def test_report_recipes():
    adam = Config.load(REPO / "configs/wrn40_4_adam.yaml")
    ranger = Config.load(REPO / "configs/wrn40_4_mish_ranger.yaml")
    for cfg in (adam, ranger):
        assert (cfg.model.name, cfg.model.depth, cfg.model.width) == ("wrn", 40, 4)
        assert (cfg.train.batch_size, cfg.train.epochs) == (128, 400)
        assert (cfg.aug.resize, cfg.aug.crop, cfg.aug.autoaugment) == (36, 32, "cifar10")
        assert cfg.aug.flip_p > 0 and cfg.aug.erasing_p > 0 and cfg.aug.cutmix_p > 0
        assert cfg.eval.tta
    assert (adam.optim.name, adam.optim.lr, adam.optim.weight_decay) == ("adam", 3e-4, 5e-4)
    assert adam.sched.warmup_epochs == 10 and adam.sched.start_factor == pytest.approx(0.01)
    assert (ranger.optim.name, ranger.optim.lr, ranger.model.act) == ("ranger", 4e-3, "mish")


def test_overrides_dotted_bare_and_equals():
    cfg = Config.load(REPO / "configs/cpu.yaml", ["--epochs", "3", "--optim.lr", "1e-3", "--aug.backend", "kornia",
                                                 "--train.compile_mode=reduce-overhead", "--aug.erasing_scale", "0.1,0.2",
                                                 "--name", "123"])
    assert cfg.train.epochs == 3 and cfg.optim.lr == 1e-3 and cfg.aug.backend == "kornia"
    assert cfg.train.compile_mode == "reduce-overhead" and cfg.aug.erasing_scale == (0.1, 0.2) and cfg.name == "123"


def test_yaml_numbers_without_dot(tmp_path):
    # PyYAML reads "3e-4" as a string; numeric keys must still accept it.
    p = tmp_path / "c.yaml"
    p.write_text("optim: {lr: 3e-4}\ntrain: {epochs: 1e1}\n")
    cfg = Config.load(p)
    assert cfg.optim.lr == 3e-4 and cfg.train.epochs == 10


def test_save_and_reload(tmp_path):
    cfg = Config.load(REPO / "configs/fast.yaml", ["--epochs", "7"])
    cfg.save(tmp_path / "config.yaml")
    assert Config.load(tmp_path / "config.yaml", ["--name", "fast"]) == cfg


@pytest.mark.parametrize("overrides, message", [
    (["--optim.lrr", "1"], "optim.lrr: unknown key (did you mean 'optim.lr'?)"),
    (["--nosuch", "1"], "nosuch: unknown key"),
    (["--batch_size", "64"], "batch_size: ambiguous"),
    (["--epochs", "many"], "train.epochs: expected an integer"),
    (["--epochs", "2.5"], "train.epochs: expected an integer"),
    (["--optim.lr", "fast"], "optim.lr: expected a number"),
    (["--train.progress", "maybe"], "train.progress: expected true or false"),
    (["--train.compile_mode", "fast"], "train.compile_mode: 'fast' is not one of"),
    (["--optim.betas", "0.9"], "optim.betas: expected a list of 2 values"),
    (["--optim.name", "lamb"], "optim.name: 'lamb' is not one of"),
    (["--optim.lr", "-1"], "optim.lr: must be > 0"),
    (["--model.depth", "11"], "model.depth: WRN depth must be 6n + 4"),
    (["--aug.crop", "40"], "aug.crop: must be in 0..28"),
    (["--train.precision", "fp8"], "train.precision: 'fp8' is not one of"),
    (["--train.resume", "maybe"], "train.resume: 'maybe' is not one of"),
    (["--epochs"], "train.epochs: missing value"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        Config.load(REPO / "configs/cpu.yaml", overrides)
    assert message in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("optim: {lr: 0.1, nesterov: true}\n", "optim.nesterov: unknown key"),
    ("trian: {epochs: 1}\n", "trian: unknown key (did you mean 'train'?)"),
    ("train: 5\n", "train: must be a mapping"),
    ("aug: {flip_p: 2.0}\n", "aug.flip_p: probability 2.0 is outside [0, 1]"),
    ("- a\n- b\n", "must hold a mapping"),
    ("train: {epochs: [1\n", "not valid YAML"),
])
def test_bad_yaml_names_the_key(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        Config.load(p)
    assert message in str(e.value)


def test_help_lists_every_section():
    text = keys_help(Config)
    for key in ("--train.epochs", "--optim.lr", "--aug.backend", "--ema.decay", "--eval.tta_shift"):
        assert key in text


def test_train_help_prints_help_for_every_key():
    r = train(["--help"], timeout=120)
    assert r.returncode == 0, r.stderr
    keys = all_keys(Config)
    assert {k.split(".")[0] for k in keys} >= {"data", "model", "aug", "optim", "sched", "train", "ema", "eval", "log"}
    no_help = [k for k in keys
               if not re.search(rf"^  --{re.escape(k)} \S+ \(default: .*?\)  \S", r.stdout, re.MULTILINE)]
    assert not no_help, f"keys without a help line in --help: {no_help}"


@dataclass
class Inner:
    n: int = opt(1, "a count")


@dataclass
class Outer:
    tag: str = opt("x", "a tag")
    inner: Inner = section(Inner)


def test_configio_reads_any_schema():
    """configio knows no fastfm section: a schema of its own gets the same keys, coercion and errors."""
    d = {}
    for key, value in parse_overrides(Outer, ["--n", "3", "--tag=y"]):
        set_dotted(d, key, value)
    assert build(Outer, d) == Outer(tag="y", inner=Inner(n=3))
    assert "--inner.n INT (default: 1)  a count" in keys_help(Outer)
    with pytest.raises(ConfigError, match=r"inner.m: unknown key \(did you mean 'inner.n'\?\)"):
        build(Outer, {"inner": {"m": 1}})


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/cpu.yaml", "--optim.lrr", "1"], "optim.lrr: unknown key"),
    (["--config", "configs/cpu.yaml", "--train.epochs", "zero"], "train.epochs: expected an integer"),
    (["--config", "configs/nosuch.yaml"], "nosuch.yaml: not found"),
])
def test_train_script_exits_with_error_line(args, message):
    r = train(args, timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert "Traceback" not in r.stderr


def _not_a_config(tmp_path: Path, kind: str) -> Path:
    if kind == "fifo":
        os.mkfifo(tmp_path / "pipe.yaml")          # opening it for reading would wait for a writer
        return tmp_path / "pipe.yaml"
    if kind == "dev_zero":
        if not Path("/dev/zero").exists():
            pytest.skip("no /dev/zero")
        return Path("/dev/zero")                 # endless: reading it all would fill memory
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * MAX_FILE_BYTES + b"\n")
    return path


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
@pytest.mark.parametrize("kind, message", [
    ("fifo", "is a named pipe, not a regular file"),
    ("dev_zero", "is a device, not a regular file"),
    ("oversize", f"is larger than {MAX_FILE_BYTES} bytes, too large for a config file"),
])
def test_config_must_be_a_small_regular_file(tmp_path, kind, message):
    """One error line naming the file, promptly: the timeout turns a hang into a failure."""
    path = _not_a_config(tmp_path, kind)
    r = train(["--config", path], timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"error: config file {path}: {message}", r.stderr


def test_default_preset_follows_the_device():
    import torch

    from fastfm.config import default_preset

    assert default_preset() == REPO / "fastfm" / "configs" / ("fast.yaml" if torch.cuda.is_available() else "cpu.yaml")
