"""What each augmentation op costs, per backend, beside the original per-sample pipeline.

    python benchmarks/aug_cost.py [--device cpu|cuda] [--backends native kornia dali]
                                  [--batch-size 512] [--json F] [--markdown F.md]

Prints a markdown table: ms per batch of each op (cumulative ladder in the documented op order, see
fastfm/bench/aug_cost.py), its share of the whole stack, and images/sec of each backend's stack and
of the ``baseline`` row (the original report's per-sample PIL pipeline, one process, CPU).  Figures
are medians of repeated runs after warm-up, device-synchronised.  A backend whose dependency is
missing is reported as missing in its row, not silently dropped; one that fails is reported as failed
there (traceback on stderr), the other backends are still measured, and the exit status is 1 with the
failed rows named on stderr; --json and --markdown are rewritten (atomically) after every backend.
On CUDA the figures are device time (CUDA events), on the CPU wall time; the JSON's ``clock`` says.  Bad
options (counts below 1, an unknown or absent device, a --json file that cannot be written) give
``error: ...`` and exit status 2 before anything is measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastfm.config import BACKENDS  # noqa: E402
from fastfm.cli import run_script  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--data", default="data", help="dataset root (synthetic images if absent)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row (median reported)")
    p.add_argument("--iters", type=int, default=None, help="batches per timed run (default: 10)")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline row (the original pipeline)")
    p.add_argument("--json", type=Path, help="also write rows and environment to this JSON file")
    p.add_argument("--markdown", type=Path, help="write the markdown table to this file")
    args = p.parse_args(argv)

    from fastfm.bench.aug_cost import aug_cost_report
    from fastfm.bench.report import exit_status, progress, writer
    from fastfm.distributed import parse_device
    from fastfm.files import check_writable

    try:
        for name, value in (("--repeats", args.repeats), ("--iters", args.iters)):
            if value is not None and value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")
        parse_device(args.device)
        for option, path in (("--json", args.json), ("--markdown", args.markdown)):
            if path:
                check_writable(path, option)
        report = aug_cost_report(device=args.device, backends=args.backends,
                                 batch_size=args.batch_size, data_root=args.data,
                                 repeats=args.repeats, iters=args.iters,
                                 include_baseline=not args.no_baseline,
                                 on_update=progress(writer(args.json, args.markdown)))
    except ValueError as exc:   # ConfigError, DeviceError, OutputPathError: a bad option, named
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report["markdown"])
    for path in (args.json, args.markdown):
        if path:
            print(f"wrote {path}")
    return exit_status(report)


if __name__ == "__main__":
    # Ctrl-C: one line and exit 130, no traceback; the rows finished so far are already in the files
    # (rewritten after every row).  Option errors are handled in main() (exit 2).
    sys.exit(run_script(main, interrupted="interrupted: the rows measured so far are in the --json / "
                                          "--markdown files, if given"))
