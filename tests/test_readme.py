"""The README's commands are what users type: each one in the command table starts (``--help``, or
the GPU check's ``--dry-run``) exactly as written, CI installs what the test command installs, and
the README and docs link only to files inside the repository."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import run_script

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _block_after(label: str) -> str:
    """The indented command that follows the paragraph starting with ``**label**``."""
    m = re.search(rf"^\*\*{label}\*\*.*?\n\n    ([^\n]+)", README, re.M | re.S)
    assert m, f"README has no **{label}** command"
    return m.group(1).strip()


def test_the_two_commands_come_first_and_ci_runs_the_test_command():
    train, test = _block_after("Train"), _block_after("Test")
    assert README.index(train) < README.index("## Results") and README.index(test) < README.index("## Results")
    assert train.endswith("python scripts/train.py") and "dali" not in train   # DALI: only when chosen
    assert test.endswith("python -m pytest")
    ci = (REPO / ".ci" / "run").read_text()
    for step in test.split(" && ")[2:]:          # after venv creation and activation
        assert step.replace("pip install", "pip install -q") in ci or step in ci, step


def _table_commands() -> list[str]:
    section = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", section, re.M)]


def test_the_command_table_lists_every_script():
    listed = {c.split()[1] for c in _table_commands() if c.split()[0] in ("python", "bash")}
    shipped = {str(p.relative_to(REPO)) for d in ("scripts", "benchmarks") for p in (REPO / d).glob("*.py")}
    shipped |= {str(p.relative_to(REPO)) for p in (REPO / "benchmarks").glob("*.sh")}
    assert shipped <= listed, f"not in the README's command table: {sorted(shipped - listed)}"


@pytest.mark.parametrize("command", [c for c in _table_commands() if c.split()[0] in ("python", "bash")])
def test_each_documented_command_starts(command, tmp_path):
    words = shlex.split(command.replace("\\|", "|"))
    script = words[1]
    if script.endswith(".sh"):
        r = subprocess.run(["bash", script, str(tmp_path / "out"), "--dry-run"], cwd=REPO, capture_output=True,
                           text=True, timeout=120)
    else:
        r = run_script(script, "--help", timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()


def test_links_stay_inside_the_repository():
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../" not in text, f"{doc.name} points outside the repository"
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if not target.startswith("http"):
                assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"
