"""The layout is the architecture: these tests keep it so.

* Dependencies point down: data -> augment -> engine -> bench (and the scripts' cli on top); the
  neutral modules (config, configio, files, runinfo, distributed) import none of the layers.
* Reading and validating a config needs no torch.
* The presets ship as package data: a non-editable install finds them by name from any folder.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_script

PACKAGE = REPO / "fastfm"

# For each part of the package: the parts it must never import.  (Everything may import the
# neutral modules.)
NEUTRAL = ("fastfm.config", "fastfm.configio", "fastfm.files", "fastfm.runinfo", "fastfm.distributed")
FORBIDDEN = {
    "fastfm.data": ("fastfm.augment", "fastfm.models", "fastfm.engine", "fastfm.bench", "fastfm.cli"),
    "fastfm.augment": ("fastfm.models", "fastfm.engine", "fastfm.bench", "fastfm.cli"),
    "fastfm.models": ("fastfm.data", "fastfm.augment", "fastfm.engine", "fastfm.bench", "fastfm.cli"),
    "fastfm.engine": ("fastfm.bench", "fastfm.cli"),
    "fastfm.bench": ("fastfm.cli",),
    # The neutral modules sit below every layer.
    **{m: ("fastfm.data", "fastfm.augment", "fastfm.models", "fastfm.engine", "fastfm.bench", "fastfm.cli")
       for m in NEUTRAL},
}
# configio reads any schema of dataclasses and knows none of fastfm's: config imports it, never the reverse.
FORBIDDEN["fastfm.configio"] += ("fastfm.config",)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_in(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every fastfm module that module ``name`` (whose code is ``source``) imports, absolute or
    relative, at any depth in the file (imports inside functions count too)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)   # "from . import x" imports x
    return {m for m in found if m == "fastfm" or m.startswith("fastfm.")}


def layer_of(name: str) -> str | None:
    for layer in sorted(FORBIDDEN, key=len, reverse=True):
        if name == layer or name.startswith(layer + "."):
            return layer
    return None


def violations(name: str, imported: set[str]) -> list[str]:
    layer = layer_of(name)
    if layer is None:
        return []
    wrong = []
    for target in sorted(imported):
        for bad in FORBIDDEN[layer]:
            if target == bad or target.startswith(bad + "."):
                wrong.append(f"{name} imports {target}")
    return wrong


def test_dependencies_point_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        wrong += violations(name, imports_in(path.read_text(), name, path.name == "__init__.py"))
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


@pytest.mark.parametrize("name, source, bad", [
    ("fastfm.engine.step", "from ..bench.timing import time_fn", "fastfm.bench.timing"),
    ("fastfm.engine.step", "def f():\n    from fastfm.cli import run_script", "fastfm.cli"),
    ("fastfm.data.resident", "from ..augment.base import normalise", "fastfm.augment.base"),
    ("fastfm.augment", "from ..engine import run", "fastfm.engine"),
    ("fastfm.config", "from .augment.base import Augmenter", "fastfm.augment.base"),
    ("fastfm.configio", "from .engine.run import train", "fastfm.engine.run"),
    ("fastfm.configio", "from .config import Config", "fastfm.config"),
])
def test_the_rule_catches_an_upward_import(name, source, bad):
    is_package = name == "fastfm.augment"
    assert f"{name} imports {bad}" in violations(name, imports_in(source, name, is_package))


NO_TORCH = "import sys; sys.modules['torch'] = None\n"     # as on a machine without torch


def _without_torch(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` with ``import torch`` made to fail."""
    return run_script("-c", NO_TORCH + code, timeout=120)


def test_reading_a_config_needs_no_torch():
    r = _without_torch("from fastfm.config import Config\n"
                       "cfg = Config.load('fast', ['--epochs', '3', '--aug.backend', 'kornia'])\n"
                       "assert cfg.train.epochs == 3 and cfg.name == 'fast'\n"
                       "print(Config.from_dict(cfg.to_dict()) == cfg)")
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr


def test_a_mistyped_option_is_reported_without_torch():
    r = run_script("scripts/train.py", "--config", "cpu", "--optim.lrr", "1", prelude=NO_TORCH, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "error: optim.lrr: unknown key (did you mean 'optim.lr'?)"


@pytest.mark.slow
def test_presets_ship_with_a_non_editable_install(tmp_path, data_root):
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "fastfm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (site / "fastfm" / "configs" / "fast.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}
    check = run_script("-c", "import fastfm.config as c; print(c.PRESETS)", cwd=elsewhere, env=env, timeout=60)
    assert check.stdout.strip() == str(site / "fastfm" / "configs"), check.stderr
    r = run_script(REPO / "scripts" / "train.py", "--config", "fast",
                   "--train.device", "cpu", "--train.compile_mode", "none", "--train.precision", "fp32",
                   "--model.depth", "10", "--model.width", "1", "--aug.autoaugment", "none",
                   "--epochs", "1", "--train.batch_size", "128", "--data.root", data_root,
                   "--data.train_limit", "256", "--data.test_limit", "100", "--eval.tta", "false",
                   "--train.progress", "false", "--out_dir", "runs", cwd=elsewhere, env=env)
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "runs" / "fast" / "summary.json").is_file()
