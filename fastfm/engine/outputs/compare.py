"""Several runs side by side: their summaries as one table, their test-accuracy curves in one PNG.

What ``scripts/compare_runs.py`` does, kept here so that the script stays thin.  A run is read from
its folder alone (``summary.json``, ``metrics.jsonl``, ``config.yaml``), never from a checkpoint, so
comparing is instant and never needs the data or a device.

A finished run is shown as its ``summary.json`` says.  A run still in progress (or stopped before the
end) has no ``summary.json`` yet: it is shown from ``metrics.jsonl`` (the latest test accuracy, the
best one and its epoch, the epochs done, the latest wall time), marked ``in progress``.  Accuracy is
what the run itself reports: the EMA weights' when the run keeps an EMA (as ``summary.json``'s
``test_acc`` and ``best.pt`` do), the model's otherwise; the ``weights`` column and the legend say which.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ...files import OutputPathError, atomic_writer, check_writable
from ..folder import MARKER, RunFolderError, read_jsonl
from .plots import _figure, _save
from .summary import median_images_per_sec

# The columns of the table and the keys of the JSON rows; numbers in the JSON are as the run wrote
# them (accuracies as fractions), the table formats them.
KEYS = ("name", "path", "status", "weights", "test_acc", "test_acc_tta", "best_test_acc", "best_epoch",
        "epochs", "epochs_planned", "wall_time_s", "images_per_sec", "device")
# summary.json keys that must be numbers when present: anything else means the file is not what
# fastfm wrote, and a table of wrong numbers is worse than an error.
NUMERIC = ("test_acc", "test_acc_tta", "best_test_acc", "best_epoch", "epochs", "wall_time_s", "images_per_sec")
DONE, IN_PROGRESS = "done", "in progress"


class RunReadError(RunFolderError):
    """A folder given as a run cannot be read as one (missing, not a folder, not a run, corrupt).

    A :class:`RunFolderError`, so the scripts report it as a user error (one line, exit status 2)."""


@dataclass
class RunView:
    """What one run folder says about its run."""

    path: Path
    summary: dict | None                  # None: no summary.json (in progress, or stopped early)
    records: list[dict] = field(default_factory=list)    # metrics.jsonl, one per epoch
    epochs_planned: int | None = None     # train.epochs of config.yaml, when readable

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def acc_key(self) -> str:
        """The per-epoch accuracy the run reports: the EMA's when it evaluated one."""
        return "test_acc_ema" if any(_number(r.get("test_acc_ema")) for r in self.records) else "test_acc"

    def curve(self) -> tuple[list[int], list[float]]:
        """(epochs, accuracies) of the epochs that were evaluated (``eval.every`` may skip some)."""
        key = self.acc_key
        pts = [(r["epoch"], r[key]) for r in self.records if _number(r.get(key)) and _number(r.get("epoch"))]
        return [p[0] for p in pts], [p[1] for p in pts]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- reading runs


def load_run(folder: str | Path, warn=None) -> RunView:
    """Read one run folder; :class:`RunReadError` naming the path when it is not a readable run.

    A folder is a run when it holds ``summary.json`` or ``metrics.jsonl``, or fastfm's marker (a run
    launched but not yet through its first epoch).  ``warn``: told about a cut-short metrics line.
    """
    path = Path(folder)
    if not path.exists():
        raise RunReadError(f"{path} does not exist")
    if not path.is_dir():
        raise RunReadError(f"{path} is not a folder (give a run folder, e.g. runs/NAME)")
    summary_file, metrics_file = path / "summary.json", path / "metrics.jsonl"
    if not (summary_file.exists() or metrics_file.exists() or (path / MARKER).exists()):
        raise RunReadError(f"{path} is not a fastfm run folder: it holds neither summary.json nor metrics.jsonl")
    summary = _read_summary(summary_file) if summary_file.exists() else None
    try:
        records = read_jsonl(metrics_file, warn)
    except OSError as e:
        raise RunReadError(f"cannot read {metrics_file}: {e.strerror or e}") from None
    return RunView(path, summary, records, _planned_epochs(path / "config.yaml"))


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text())
    except OSError as e:
        raise RunReadError(f"cannot read {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunReadError(f"{path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(summary, dict):
        raise RunReadError(f"{path} is corrupt (not a JSON object)")
    for key in NUMERIC:
        v = summary.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise RunReadError(f"{path} is corrupt ({key} is {v!r}, not a number)")
    return summary


def _planned_epochs(path: Path) -> int | None:
    """train.epochs of the run's resolved config: shown as "done/planned" for a run in progress.
    Only a nicety, so any problem with the file just leaves it out."""
    import yaml

    with contextlib.suppress(Exception):
        epochs = yaml.safe_load(path.read_text())["train"]["epochs"]
        if isinstance(epochs, int) and not isinstance(epochs, bool):
            return epochs
    return None


# ----------------------------------------------------------------------------- the table


def summary_row(run: RunView) -> dict:
    """One row (the keys of :data:`KEYS`): from summary.json when the run finished, from its
    metrics otherwise; a value nobody recorded is None."""
    row = dict.fromkeys(KEYS)
    row.update(name=run.name, path=str(run.path), epochs_planned=run.epochs_planned)
    if run.summary is not None:
        s = run.summary
        row.update({k: s.get(k) for k in ("test_acc", "test_acc_tta", "best_test_acc", "best_epoch", "epochs",
                                         "wall_time_s", "images_per_sec", "device")},
                   status=DONE, weights=s.get("final_weights"))
        if not s.get("best_epoch"):        # (-1, 0): a resumed run that never saw its best.pt
            row.update(best_test_acc=None, best_epoch=None)
        return row
    epochs, accs = run.curve()
    walls = [r["wall_time_s"] for r in run.records if _number(r.get("wall_time_s"))]
    row.update(status=IN_PROGRESS, epochs=run.records[-1]["epoch"] if run.records else 0,
               weights="ema" if run.acc_key == "test_acc_ema" else "model",
               images_per_sec=median_images_per_sec(run.records),   # as summary.json computes it
               wall_time_s=walls[-1] if walls else None)
    if accs:
        best = max(range(len(accs)), key=accs.__getitem__)      # the first of equals, as the run keeps
        row.update(test_acc=accs[-1], best_test_acc=accs[best], best_epoch=epochs[best])
    return row


COLUMNS = ("run", "status", "weights", "test acc", "TTA acc", "best acc @ epoch", "epochs", "wall time",
           "img/s", "device")
RIGHT = {"test acc", "TTA acc", "best acc @ epoch", "epochs", "wall time", "img/s"}   # numbers


def format_pct(v) -> str:
    return f"{100 * v:.2f}%" if _number(v) else "-"


def format_duration(s) -> str:
    if not _number(s):
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    m = int(round(s)) // 60
    return f"{m}m {int(round(s)) % 60:02d}s" if m < 60 else f"{m // 60}h {m % 60:02d}m"


def _cells(row: dict) -> list[str]:
    best = (f"{format_pct(row['best_test_acc'])} @ {row['best_epoch']}"
            if _number(row["best_test_acc"]) and row["best_epoch"] else "-")
    epochs = "-" if row["epochs"] is None else str(row["epochs"])
    if row["status"] == IN_PROGRESS and row["epochs_planned"]:
        epochs += f"/{row['epochs_planned']}"
    rate = f"{row['images_per_sec']:,.0f}" if _number(row["images_per_sec"]) else "-"
    return [row["name"], row["status"], {"ema": "EMA", None: "-"}.get(row["weights"], row["weights"]),
            format_pct(row["test_acc"]), format_pct(row["test_acc_tta"]), best, epochs,
            format_duration(row["wall_time_s"]), rate, row["device"] or "-"]


def format_table(rows: list[dict]) -> str:
    """Plain text, one line per run, columns aligned (numbers to the right), "-" for a missing value."""
    table = [list(COLUMNS)] + [_cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(c.rjust(w) if h in RIGHT else c.ljust(w) for c, w, h in zip(line, widths, COLUMNS)).rstrip()
        for line in table)


# ----------------------------------------------------------------------------- output files


def check_outputs(outputs: dict[str, str | Path | None], force: bool) -> None:
    """Before any run is read: each output (``{option: path}``) can be written, is not one of the
    others, and is not an existing file (which only ``--force`` replaces: the default name is
    generic and someone's figure may sit there) -- except a PNG an earlier comparison wrote."""
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        check_writable(path, option, create_parents=False)
        key = Path(path).resolve()
        if key in seen:
            raise OutputPathError(f"{option} and {seen[key]} name the same file {path}")
        seen[key] = option
        if Path(path).exists() and not force and not (option == "--plot" and is_our_plot(path)):
            raise OutputPathError(f"{option}: {path} exists and was not written by compare_runs; "
                                  f"pass --force to replace it (or choose another file with {option})")


# The PNG's tEXt "Software" entry: a comparison made earlier is replaced without --force (running the
# same command twice just works), anything else at that path only with --force.
STAMP = "fastfm compare_runs"


def is_our_plot(path: str | Path) -> bool:
    """Whether ``path`` is a PNG that :func:`plot_runs` wrote (it carries :data:`STAMP`)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)              # matplotlib writes its tEXt chunks before the pixels
    except OSError:
        return False
    return head.startswith(b"\x89PNG\r\n\x1a\n") and b"Software\x00" + STAMP.encode() in head


def plot_runs(runs: list[RunView], path: str | Path) -> None:
    """One PNG, written atomically: every run's test accuracy (%) against epochs, overlaid.

    The legend names each run, its weights (EMA or model) and whether it is still in progress (also
    drawn dashed); a dot marks each run's best epoch.
    """
    from matplotlib.ticker import MaxNLocator

    fig = _figure(8, 5)
    ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))     # whole epochs
    last = max((e for run in runs for e in run.curve()[0]), default=None)
    if last is not None:
        ax.set_xlim(0.5, last + 0.5)
    for run in runs:
        epochs, accs = run.curve()
        if not epochs:
            continue
        label = run.name + (" (EMA)" if run.acc_key == "test_acc_ema" else " (model)")
        if run.summary is None:
            label += ", in progress"
        (line,) = ax.plot(epochs, [100 * a for a in accs], label=label, marker="." if len(epochs) <= 60 else None,
                          linestyle="--" if run.summary is None else "-")
        best = max(range(len(accs)), key=accs.__getitem__)
        ax.plot([epochs[best]], [100 * accs[best]], "o", color=line.get_color(), markersize=7, alpha=0.6)
    ax.set_title("test accuracy per epoch (dot: best epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no evaluated epoch yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    _write(path, "--plot", lambda: _save(fig, path, metadata={"Software": STAMP}))


def write_json(rows: list[dict], path: str | Path) -> None:
    """The table's rows as a JSON list, written atomically; numbers as the runs wrote them."""
    def write():
        with atomic_writer(path) as f:
            f.write((json.dumps(rows, indent=2) + "\n").encode())
    _write(path, "--json", write)


def _write(path, option: str, write) -> None:
    """An OSError while writing (a full disk, the folder gone) becomes a user error naming the option."""
    try:
        write()
    except OSError as e:
        raise OutputPathError(f"{option}: cannot write {path}: {e.strerror or e}") from None
