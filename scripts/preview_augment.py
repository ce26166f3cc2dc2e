"""Look at what the augmentation does: a PNG grid of real images before and after, per backend.

    python scripts/preview_augment.py [--backend native kornia dali] [--out grid.png]
                                      [--config configs/X.yaml] [--aug.KEY VALUE ...]

The augmentation is the default recipe, or the ``aug`` section of ``--config``, changed by any
``--aug.KEY VALUE`` override (the same keys as scripts/train.py: :class:`fastfm.config.AugConfig`).
A backend whose dependency is missing is reported and left out of the grid.  Bad options (--n or
--rows below 1, an unknown or absent --device, an --out that cannot be written, a bad --aug.KEY)
give one ``error: ...`` line and exit status 2 before any image is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    from fastfm.config import BACKENDS, Config, ConfigError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Other --aug.KEY VALUE options override the augmentation.")
    p.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    p.add_argument("--out", type=Path, default=Path("grid.png"))
    p.add_argument("--config", type=Path, default=None, help="take the aug section of this preset")
    p.add_argument("--data", default="data", help="dataset root (default ./data)")
    p.add_argument("--n", type=int, default=8, help="images per row")
    p.add_argument("--rows", type=int, default=4, help="augmented draws per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    args, overrides = p.parse_known_args(argv)

    from fastfm.augment.preview import preview

    if any(tok.startswith("--") and not tok.startswith("--aug.") for tok in overrides):
        raise ConfigError(f"only --aug.KEY overrides are accepted here, got {overrides}")
    aug = Config.load(args.config, overrides).aug
    status = preview(args.out, backends=args.backend, data_root=args.data, n=args.n,
                     rows=args.rows, seed=args.seed, device=args.device, aug=aug)
    for name, s in status.items():
        print(f"{name}: {s}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from fastfm.cli import run_script

    sys.exit(run_script(main))
