"""The one row format of every benchmark (:class:`Row`), and what is made of rows: the speed-up over
the baseline, the markdown table, the JSON file and the bar chart.

A row is keyed by ``(mode, pipeline)``.  ``mode`` says what was timed, ``pipeline`` which
implementation: an augmentation backend (``native``, ``kornia``, ``dali``), ``baseline`` (the
original report's pipeline, :mod:`fastfm.bench.baseline`), ``synthetic input`` or the computed
``GTX 1060 6GB ceiling``.  Modes:

* ``op``: one rung of an augmentation backend's op ladder (:mod:`fastfm.bench.aug_cost`);
* ``aug``: a whole augmentation stack on one resident batch;
* ``step``: forward, backward and optimizer on a synthetic batch;
* ``full``: the engine's training iteration (data, augmentation, step);
* ``baseline``: the baseline end to end (DataLoader workers, PIL transforms, CutMix, the same model);
* ``reference``: a computed figure, not a measurement (``computed`` is True).

A row that could not be measured keeps its place: ``status`` is ``missing`` (the backend's optional
dependency is not installed) or ``failed`` (it raised), ``error`` says why, and its figures are None.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..augment import BackendUnavailable
from ..files import atomic_writer
from ..runinfo import environment
from .timing import Timing

TRAINING_MODES = ("step", "full", "baseline")   # rows that train the model: FLOPs, % of peak


@dataclass
class Row:
    """One measured (or computed) line of a benchmark; units in the field names."""

    mode: str
    pipeline: str
    batch: int                              # images per timed call
    variant: str | None = None              # matrix rows: "eager" | "compiled" | "compiled + CUDA graphs"
    ms_per_batch: float | None = None       # median over ``repeats`` runs of ``iters`` calls
    ms_min: float | None = None
    ms_max: float | None = None
    iters: int | None = None
    repeats: int | None = None
    clock: str | None = None                # "cuda events" (device time) or "wall" (CPU), see time_fn
    precision: str | None = None            # training rows: fp32 | bf16 | fp16
    config: dict = field(default_factory=dict)   # what was timed, in enough detail to repeat it
    status: str = "ok"                      # ok | missing | failed | skipped (a time budget ran out)
    error: str | None = None
    # op rows: the rung (``base``, ``+resize``, ...); ms_per_batch is the cumulative stack up to it,
    # op_ms the difference to the rung below, op_share that difference over the whole stack.
    op: str | None = None
    op_ms: float | None = None
    op_share: float | None = None
    # full rows: the step-only ms of the same configuration, and 1 - step_ms / ms_per_batch.
    step_ms: float | None = None
    aug_share: float | None = None
    # training rows: FLOPs per training image (fwd + bwd) x images/s, against the device's peak.
    flops_per_image: float | None = None
    achieved_tflops: float | None = None
    peak_tflops: float | None = None        # the peak peak_fraction is against, and why that one
    peak_fraction: float | None = None
    peak_source: str | None = None
    measured_peak_fraction: float | None = None   # against the measured matrix-product ceiling
    measured_peak_source: str | None = None
    # matrix rows: ATen operator calls in one call of the augmenter and of the step, counted by the
    # profiler (nested calls included); a compiled step shows the few ops left outside its kernels.
    op_calls: dict | None = None
    vs_baseline: float | None = None        # images/s over the baseline row of the same kind
    vs_gtx1060: float | None = None         # images/s over the GTX 1060's computed ceiling
    computed: bool = False                  # a computed ceiling, not a measurement

    @classmethod
    def timed(cls, mode: str, pipeline: str, batch: int, t: Timing, **fields) -> Row:
        return cls(mode, pipeline, batch, ms_per_batch=t.ms_median, ms_min=t.ms_min, ms_max=t.ms_max,
                   iters=t.iters, repeats=t.repeats, clock=t.clock, **fields)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def images_per_sec(self) -> float | None:
        return self.batch * 1000.0 / self.ms_per_batch if self.ms_per_batch else None

    def to_dict(self) -> dict:
        return dict(asdict(self), images_per_sec=self.images_per_sec)


def attempt(measure: Callable[[], Row | list[Row]], *, mode: str, pipeline: str, batch: int) -> list[Row]:
    """``measure()``'s row(s), or one row saying why there are none: one backend's fault must not
    cost the other rows their figures.  A missing optional dependency gives ``status="missing"``;
    any other exception ``status="failed"``, with its traceback on stderr."""
    try:
        rows = measure()
    except BackendUnavailable as exc:
        return [Row(mode, pipeline, batch, status="missing", error=str(exc))]
    except Exception as exc:        # noqa: BLE001 - reported in the row, and the script exits 1
        traceback.print_exc()
        return [Row(mode, pipeline, batch, status="failed", error=f"{type(exc).__name__}: {exc}")]
    return rows if isinstance(rows, list) else [rows]


class RowLog(list):
    """The rows of a report in the making: :meth:`attempt` measures one row (or one backend's rows)
    in its own guard (:func:`attempt`), appends what came back and calls ``on_row(self)``, so a
    script can rewrite its JSON after every row: a run cut short (a time cap, a crash further on)
    still leaves every row measured so far on disk."""

    def __init__(self, on_row: Callable[[list[Row]], None] | None = None):
        super().__init__()
        self.on_row = on_row

    def add(self, rows: list[Row]) -> list[Row]:
        self.extend(rows)
        if self.on_row is not None:
            self.on_row(self)
        return rows

    def attempt(self, measure: Callable[[], Row | list[Row]], *, mode: str, pipeline: str,
                batch: int) -> list[Row]:
        return self.add(attempt(measure, mode=mode, pipeline=pipeline, batch=batch))


def guarded(what: str, fn: Callable[[], object], reraise: tuple[type[BaseException], ...] = ()
            ) -> tuple[object, str | None]:
    """``(fn(), None)``, or ``(None, error)`` with the traceback on stderr: for the parts of a
    report that are not rows (the trace) but must not cost the rows their figures either.
    ``reraise``: exceptions that mean a bad option rather than a fault (they end the script with an
    ``error:`` line)."""
    try:
        return fn(), None
    except reraise:
        raise
    except Exception as exc:        # noqa: BLE001 - reported in the report, and the script exits 1
        print(f"{what} failed:", file=sys.stderr)
        traceback.print_exc()
        return None, f"{type(exc).__name__}: {exc}"


def compare_to_baseline(rows: list[Row]) -> None:
    """Set ``vs_baseline`` in place: ``aug`` rows against the baseline's augmentation alone (the
    ``aug``/``baseline`` row), training and reference rows against the baseline end to end (the
    ``baseline``/``baseline`` row).  None where that row is absent; op rows have none."""
    base = {r.mode: r.images_per_sec for r in rows if r.pipeline == "baseline" and r.ok}
    for r in rows:
        ref = base.get("aug") if r.mode == "aug" else (
            base.get("baseline") if r.mode in (*TRAINING_MODES, "reference") else None)
        r.vs_baseline = r.images_per_sec / ref if ref and r.ok else None


def measured_environment(device: torch.device, load_before: tuple[float, float, float]) -> dict:
    """:func:`fastfm.runinfo.environment` and the load average before and after the measuring (other
    processes on the machine slow every figure)."""
    env = environment(device)
    env["load_avg_1_5_15"] = dict(before=list(load_before), after=list(os.getloadavg()))
    return env


def markdown_table(rows: list[Row], columns: list[tuple[str, str, str]]) -> str:
    """``columns``: (row attribute, header, format spec); a missing value prints as an em dash."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---:" if f else ":---" for _, _, f in columns) + "|"
    lines = [head, rule]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            v = getattr(row, key)
            cells.append("—" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def problem_notes(rows: list[Row]) -> list[str]:
    """One line per pipeline and reason for the rows that were not measured:
    ``kornia (aug, full): missing — <why>``."""
    seen: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        if not r.ok:
            seen.setdefault((r.pipeline, r.status, r.error), []).append(r.mode)
    return [f"{pipeline} ({', '.join(modes)}): {status} — {why}"
            for (pipeline, status, why), modes in seen.items()]


def missing(rows: list[Row]) -> dict[str, str]:
    """Pipeline -> why, for the rows whose backend's dependency is not installed."""
    return {r.pipeline: r.error for r in rows if r.status == "missing"}


def failed(rows: list[Row]) -> bool:
    """Whether any of ``rows`` raised while being measured (the scripts then exit 1)."""
    return any(r.status == "failed" for r in rows)


def progress(write: Callable[[dict], None]) -> Callable[[dict], None]:
    """A report's ``on_update``: one line per newly finished row on stdout (the GPU check's log
    shows how far a run got), then ``write(report)`` (:func:`writer`)."""
    seen = [0]

    def update(report: dict) -> None:
        for r in report["rows"][seen[0]:]:
            figure = f"{r.images_per_sec:,.0f} images/s" if r.images_per_sec else r.error
            print(f"row {r.mode}/{r.pipeline}{'/' + r.op if r.op else ''}: {r.status}, {figure}", flush=True)
        seen[0] = len(report["rows"])
        write(report)

    return update


def exit_status(report: dict) -> int:
    """A script's exit status: 0, or 1 with what failed named on stderr (:func:`failures`)."""
    names = failures(report)
    if names:
        print(f"failed: {', '.join(names)}", file=sys.stderr)
    return 1 if names else 0


def failures(report: dict) -> list[str]:
    """What failed in ``report``, one name each: ``mode/pipeline`` per failed row, and ``trace``
    when the trace was asked for and raised (the scripts name them on stderr and exit 1)."""
    names = [f"{r.mode}/{r.pipeline}" for r in report["rows"] if r.status == "failed"]
    trace = report.get("trace")
    if isinstance(trace, dict) and trace.get("status") == "failed":
        names.append("trace")
    return names


def write_markdown(report: dict, path) -> None:
    """``report["markdown"]`` at ``path``, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        f.write((report["markdown"] + "\n").encode())


def writer(json_path=None, markdown_path=None) -> Callable[[dict], None]:
    """``write(report)``: the report's JSON and markdown files (those given), rewritten atomically;
    called after every row, and once more at the end."""

    def write(report: dict) -> None:
        if json_path:
            write_report_json(report, json_path)
        if markdown_path:
            write_markdown(report, markdown_path)

    return write


def report_json(report: dict) -> dict:
    """``report`` as plain JSON data: rows as dicts (with ``images_per_sec``), without the markdown."""
    return {k: ([r.to_dict() for r in v] if k == "rows" else v) for k, v in report.items()
            if k != "markdown"}


def write_report_json(report: dict, path) -> None:
    """:func:`report_json` at ``path``, written atomically (a reader sees the old file or the new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as f:
        f.write(json.dumps(report_json(report), indent=2).encode())


PLOT_COLOURS = {"aug": "tab:green", "step": "tab:blue", "full": "tab:orange", "baseline": "tab:red",
                "reference": "lightgrey", "op": "tab:olive"}


def write_plot(report: dict, path: str | Path) -> None:
    """Bar chart of images/sec per measured row of ``report`` (log scale), titled with the device,
    model and git revision; the computed GTX 1060 ceiling is hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.ok]
    labels = [f"{r.mode}: {r.pipeline}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    bars = ax.barh(labels, [r.images_per_sec for r in rows], color=[PLOT_COLOURS[r.mode] for r in rows],
                   edgecolor="black")
    for bar, r in zip(bars, rows):
        if r.computed:
            bar.set_hatch("//")
    ax.set_xscale("log")
    ax.invert_yaxis()
    env = report["environment"]
    ax.set_title(f"{env['device']}, {report['settings']['model']}, git {env['git_revision']}", fontsize=9)
    ax.set_xlabel("images / s (log scale); hatched: computed ceiling, not measured")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
