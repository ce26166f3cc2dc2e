"""The typed configuration: presets, CLI overrides, and clear errors for bad keys and values."""

from __future__ import annotations

import pytest
from helpers import REPO, train

from fastfm.config import Config, ConfigError, keys_help

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
    text = keys_help()
    for key in ("--train.epochs", "--optim.lr", "--aug.backend", "--ema.decay", "--eval.tta_shift"):
        assert key in text


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


def test_default_preset_follows_the_device():
    import torch

    from fastfm.config import default_preset

    assert default_preset() == REPO / "fastfm" / "configs" / ("fast.yaml" if torch.cuda.is_available() else "cpu.yaml")
