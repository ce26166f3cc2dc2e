#!/usr/bin/env python
"""Evaluate a checkpoint on the Fashion-MNIST test set: test loss and accuracy.

    python scripts/evaluate.py --ckpt runs/cpu/best.pt [--tta]
    torchrun --standalone --nproc_per_node=2 scripts/evaluate.py --ckpt runs/fast/best.pt --tta

The checkpoint holds the resolved config and every weight, so the model and the test transform are
rebuilt from it alone (a --model.pretrained file the run started from is not needed).
Prints the figures (and per-class accuracy); --json writes them to a file as well, with the keys of
a run's summary.json (the test figures of this evaluation; the training run's figures from the
checkpoint and the metrics.jsonl beside it, null where neither has them: see
fastfm/engine/outputs/summary.py).
Exit status: 0, or 2 with one "error: ..." line: a bad option (--batch-size < 1, an unknown or absent
--device, a --json file that cannot be written: all checked before anything is read), a missing,
unreadable or incomplete checkpoint, weights that do not fit its config or hold NaN/inf, missing data.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

try:
    import fastfm  # noqa: F401  (only to see whether the package is importable)
except ImportError:
    # Run from a checkout without installing: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastfm.cli import run_script  # noqa: E402
from fastfm.distributed import cleanup  # noqa: E402
from fastfm.engine.checkpoint import evaluate_checkpoint  # noqa: E402
from fastfm.files import OutputPathError, check_writable  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True, help="runs/<name>/best.pt or last.pt")
    parser.add_argument("--tta", action="store_true", help="also report test-time augmentation")
    parser.add_argument("--weights", choices=("auto", "model", "ema"), default="auto",
                        help="auto: the EMA weights when the run kept them (its reported result)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--data-root", help="data folder (default: the checkpoint's data.root)")
    parser.add_argument("--batch-size", type=int, help="per rank (default: the checkpoint's eval.batch_size)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON, with summary.json's keys")
    args = parser.parse_args(argv)
    primary = os.environ.get("RANK", "0") == "0"          # under torchrun, rank 0 alone prints
    try:
        if args.json and primary:
            check_writable(args.json, "--json", create_parents=False)
        res = evaluate_checkpoint(args.ckpt, tta=args.tta, weights=args.weights, device=args.device,
                                  data_root=args.data_root, batch_size=args.batch_size)
    except BaseException:
        # No barrier on the way out (a peer may have failed too and would never arrive), and a
        # failing teardown must not add a traceback to the error reported by run_script.
        with contextlib.suppress(Exception):
            cleanup(sync=False)
        raise
    cleanup()
    if not primary:
        return 0
    print(f"{args.ckpt} ({res['final_weights']} weights): test loss {res['test_loss']:.4f}  "
          f"accuracy {100 * res['test_acc']:.2f}%")
    if args.tta:
        print(f"with TTA ({res['tta_views']} views): test loss {res['test_loss_tta']:.4f}  "
              f"accuracy {100 * res['test_acc_tta']:.2f}%")
    for name, acc in res["per_class_acc"].items():
        print(f"  {name:<12} {100 * acc:6.2f}%")
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        except OSError as e:        # the folder went away while evaluating
            raise OutputPathError(f"--json: cannot write {args.json}: {e.strerror}") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
