#!/usr/bin/env python
"""Compare runs: their summaries as one table, their test-accuracy curves overlaid in one PNG.

    python scripts/compare_runs.py runs/cpu runs/fast [--plot compare.png] [--json FILE] [--force]

One row per RUN_DIR: test accuracy, TTA accuracy, best accuracy @ epoch, epochs, wall time, images/sec
and device, as the run's summary.json says; "-" where the run recorded nothing.  A run still in
progress (metrics.jsonl but no summary.json yet) is shown from its metrics and marked "in progress".
Accuracies are the EMA weights' when the run keeps an EMA, as the run itself reports them (the
"weights" column and the legend say which).  The PNG (default compare.png in the current folder)
and the --json file are written atomically; an existing file is replaced only with --force, except a
PNG that compare_runs itself wrote (stamped in its metadata), so the same command can be run again.
Exit status: 0, or 2 with one "error: ..." line: an output that exists (without --force; see above) or cannot be
written (checked before any run is read), a RUN_DIR that does not exist, is not a folder or not a
run folder, a corrupt summary.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import fastfm  # noqa: F401  (only to see whether the package is importable)
except ImportError:
    # Run from a checkout without installing: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastfm.cli import run_script  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, e.g. runs/cpu runs/fast")
    parser.add_argument("--plot", default="compare.png", metavar="FILE",
                        help="the PNG of the accuracy curves (default: compare.png)")
    parser.add_argument("--json", metavar="FILE", help="also write the table as JSON (a list of rows)")
    parser.add_argument("--force", action="store_true", help="replace --plot / --json files that exist")
    args = parser.parse_args(argv)

    from fastfm.engine.outputs import compare   # after parsing: --help and usage errors need no torch

    compare.check_outputs({"--plot": args.plot, "--json": args.json}, args.force)
    runs = [compare.load_run(d, warn=lambda msg: print(msg, file=sys.stderr)) for d in args.runs]
    rows = [compare.summary_row(r) for r in runs]
    print(compare.format_table(rows))
    compare.plot_runs(runs, args.plot)
    print(f"wrote {args.plot}")
    if args.json:
        compare.write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
