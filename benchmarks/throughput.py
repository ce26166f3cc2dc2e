"""Training images/sec of fastfm's real training path, beside the original pipeline on this machine.

    python benchmarks/throughput.py [--device auto|cpu|cuda] [--mode aug step full baseline]
        [--backends native kornia dali] [--config configs/X.yaml] [--model wrn-40-4|TIMM_NAME]
        [--batch-size N] [--precision auto|fp32|bf16|fp16] [--[no-]channels-last] [--[no-]compile]
        [--compile-mode none|default|reduce-overhead|max-autotune]
        [--workers N] [--json F] [--markdown F.md] [--plot F.png] [--trace DIR]
        [--matrix [--matrix-modes ...] [--matrix-batches ...] [--matrix-budget-s S]]

Rows (fastfm/bench/throughput.py says exactly what each times): ``aug`` each backend's whole
augmentation stack (and the baseline's, the original per-sample pipeline); ``step`` forward +
backward + optimizer on synthetic input; ``full`` resident data -> augmentation -> step per backend,
the engine's own hot path; ``baseline`` the original report's DataLoader pipeline feeding the same
model (fp32, NCHW, batch 128); and the GTX 1060 6GB ceiling, computed from FLOPs, not measured.  On
CUDA the defaults are WRN-40-4 at batch 512; on a CPU a smaller model, batch and run count (the
output says which).  Prints a markdown table; --json adds device, versions, git revision and every
row's configuration.  A backend whose dependency is missing is reported as missing in its rows; one
that fails is reported as failed there (traceback on stderr), the other rows are still measured, and
the exit status is 1 with the failed rows named on stderr.  --json and --markdown are rewritten
(atomically) after every row, so a run cut short keeps what it measured; the trace runs last, in a
guard of its own.  Bad options: ``error: ...``, exit 2, before anything is measured (output paths
included: --json, --plot, --trace).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastfm.config import BACKENDS  # noqa: E402
from fastfm.cli import run_script  # noqa: E402
from fastfm.bench.report import exit_status, progress, write_plot, writer  # noqa: E402
from fastfm.bench.throughput import MATRIX_BATCHES, MATRIX_MODES, MODES  # noqa: E402
from fastfm.bench.throughput import resolve_settings, throughput_report  # noqa: E402
from fastfm.config import COMPILE_MODES  # noqa: E402
from fastfm.distributed import parse_device  # noqa: E402
from fastfm.files import check_writable  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--mode", nargs="+", default=list(MODES), choices=MODES, help="rows to time (default: all)")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--config", metavar="FILE", help="YAML preset to take model, augmentation, optimizer, "
                   "batch, precision and compile from (default: the built-in defaults)")
    p.add_argument("--model", help="wrn-DEPTH-WIDTH or a timm model name (default: wrn-40-4 on CUDA, "
                   "wrn-16-4 on CPU)")
    p.add_argument("--batch-size", type=int, help="training batch (default: 512 on CUDA, 64 on CPU)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="default auto: bf16 on CUDA where supported, fp32 on CPU")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last model and batches (default: on)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model, mode default (default: off; --compile-mode wins)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="train.compile_mode (default: none, or "
                   "the --config's)")
    p.add_argument("--workers", type=int, help="baseline DataLoader workers (default: min(4, CPUs))")
    p.add_argument("--baseline-batch", type=int, default=128, help="baseline batch (the report's 128)")
    p.add_argument("--warmup", type=int, help="untimed calls per row (default: 5 on CUDA, 1 on CPU)")
    p.add_argument("--iters", type=int, help="batches per timed run (default: 20 on CUDA, 2 on CPU)")
    p.add_argument("--repeats", type=int, help="timed runs per row, median reported (default: 5)")
    p.add_argument("--data", default="data", help="dataset root (synthetic images if absent)")
    p.add_argument("--json", type=Path, help="write environment, settings and rows to this JSON file")
    p.add_argument("--markdown", type=Path, help="write the markdown table to this file (rewritten after every row)")
    p.add_argument("--plot", type=Path, help="write a bar chart of images/sec (PNG, log scale)")
    p.add_argument("--trace", type=Path, metavar="DIR", help="write a torch.profiler Chrome trace of a "
                   "few full iterations, with named ranges per augmentation op and forward/backward")
    p.add_argument("--trace-steps", type=int, default=3, help="full iterations in the trace")
    p.add_argument("--matrix", action="store_true", help="also the throughput matrix: step and full "
                   "iteration of the native hot path for each --matrix-modes x --matrix-batches, with "
                   "operator calls per call of the augmenter and the step")
    p.add_argument("--matrix-modes", nargs="+", choices=list(MATRIX_MODES),
                   default=["none", "default", "reduce-overhead"],
                   help="train.compile_mode of each matrix column (reduce-overhead: CUDA graphs on CUDA)")
    p.add_argument("--matrix-batches", nargs="+", type=int, default=list(MATRIX_BATCHES),
                   help="batches of the matrix (default: 128 512)")
    p.add_argument("--matrix-budget-s", type=float, metavar="S",
                   help="start no matrix cell later than S seconds after the start (the cells left are "
                        "'skipped' rows); keeps time for the trace under a caller's time cap")
    args = p.parse_args(argv)
    try:
        parse_device(args.device)
        # Checked here too: the config's own check would otherwise name train.batch_size first.
        if args.batch_size is not None and args.batch_size < 2:
            raise ValueError(f"--batch-size must be at least 2 (CutMix pairs samples, BatchNorm needs 2), "
                             f"got {args.batch_size}")
        if args.matrix_budget_s is not None and args.matrix_budget_s < 0:
            raise ValueError(f"--matrix-budget-s: must be >= 0, got {args.matrix_budget_s:g}")
        if min(args.matrix_batches) < 2:
            raise ValueError(f"--matrix-batches must be at least 2, got {args.matrix_batches}")
        if args.trace_steps < 1:
            raise ValueError(f"--trace-steps: must be >= 1, got {args.trace_steps}")
        for option, path in (("--json", args.json), ("--markdown", args.markdown), ("--plot", args.plot)):
            if path:
                check_writable(path, option)
        if args.trace:
            check_writable(args.trace / "trace.json", "--trace")
        settings = resolve_settings(
            device=args.device, config=args.config, model=args.model, batch_size=args.batch_size,
            precision=args.precision, channels_last=args.channels_last, compile=args.compile,
            compile_mode=args.compile_mode,
            modes=tuple(args.mode), backends=tuple(args.backends), workers=args.workers,
            warmup=args.warmup, iters=args.iters, repeats=args.repeats,
            baseline_batch=args.baseline_batch, data_root=args.data)
        report = throughput_report(settings, trace_dir=args.trace, trace_steps=args.trace_steps,
                                   on_update=progress(writer(args.json, args.markdown)),
                                   matrix=dict(batches=tuple(args.matrix_batches),
                                               compile_modes=tuple(args.matrix_modes)) if args.matrix else None,
                                   matrix_budget_s=args.matrix_budget_s)
    except ValueError as exc:   # ConfigError, DeviceError, OutputPathError: unknown model, bad value, no CUDA
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report["markdown"])
    for path in (args.json, args.markdown):
        if path:
            print(f"wrote {path}")
    if args.plot:
        write_plot(report, args.plot)
        print(f"wrote {args.plot}")
    return exit_status(report)


if __name__ == "__main__":
    # Ctrl-C: one line and exit 130, no traceback; the rows finished so far are already in the files
    # (rewritten after every row).  Option errors are handled in main() (exit 2).
    sys.exit(run_script(main, interrupted="interrupted: the rows measured so far are in the --json / "
                                          "--markdown files, if given"))
