#!/usr/bin/env python
"""Train a model on Fashion-MNIST into runs/<name>/.

    python scripts/train.py                                           # configs/fast.yaml with CUDA, else cpu.yaml
    python scripts/train.py --config configs/cpu.yaml                 # one process: CPU or one GPU
    python scripts/train.py --config configs/fast.yaml --epochs 3 --optim.lr 1e-3 --name try
    torchrun --standalone --nproc_per_node=8 scripts/train.py --config configs/fast.yaml

Every config key can be overridden with --section.key VALUE (listed by --help).  The run folder is
runs/<name> (--name: one plain folder name of letters, digits, '.', '_', '-'; default: the preset's
file name); one that holds a run is an error unless --resume (continue from its last.pt) or
--overwrite (start again: fastfm deletes only the files it wrote).  A folder fastfm did not create is
never written into.  One run at a time per folder: a second launch fails, naming the first's pid.

Several nodes: run the same command on every node, with the data and runs/ on a shared file system
(every rank reads the data and last.pt; rank 0 writes).  With torchrun's c10d rendezvous:

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \\
        --rdzv_id=fm-job-1 --max-restarts=3 \\
        scripts/train.py --config configs/fast.yaml --train.resume auto

(HOST: any node reachable by all; or --master_addr/--master_port with --node_rank=0..N-1.)

Preemption and restarts: on SIGTERM or Ctrl-C (SIGINT) every rank stops at the same step (within
train.log_every steps), rank 0 writes last.pt, and the process exits with status 143 (SIGTERM) or
130 (SIGINT); a second Ctrl-C quits at once without saving.  With --train.resume auto a relaunch, by
torchrun --max-restarts or by the job scheduler, continues from last.pt by itself; a frozen rank
fails the others after --train.dist_timeout_s.

Exit status: 0 done; 2 "error: ..." (bad configuration, run folder in use or not fastfm's, missing
data, unwritable or full disk, non-finite loss); 1 "error: ..." for a lost or frozen rank (other
failures keep their traceback); 143 / 130 stopped by SIGTERM / SIGINT with last.pt written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

try:
    import fastfm  # noqa: F401  (only to see whether the package is importable)
except ImportError:
    # Run from a checkout without installing: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastfm.cli import run_script  # noqa: E402
from fastfm.config import Config, arg_parser, default_preset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue runs/<name> from its last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="start runs/<name> again, deleting the files a previous run wrote there")
    args, overrides = parser.parse_known_args(argv)
    if args.resume:
        overrides += ["--train.resume", "yes"]
    cfg = Config.load(args.config, overrides) if args.config else None
    if cfg is None:
        args.config = default_preset()
        if os.environ.get("RANK", "0") == "0":
            why = "CUDA is available" if args.config.stem == "fast" else "no CUDA device"
            print(f"no --config given: using the {args.config.stem} preset ({why})", flush=True)
        cfg = Config.load(args.config, overrides)
    # Imported after the config is read: a mistyped option is reported without loading torch.
    from fastfm.engine.run import train

    train(cfg, overwrite=args.overwrite)
    return 0

if __name__ == "__main__":
    sys.exit(run_script(main))
