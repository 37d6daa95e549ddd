"""``sammed-fast synthetic`` / ``python -m sammed_fast.data.synthetic``: writes a synthetic data set.

``--variant prostate`` (default): the six-domain prostate set in the real release's layout
(``data.synthetic.ensure_synthetic``), the main job's default data. ``--variant multilabel``: a
three-site NIfTI set with two structures and a manifest.json; ``--variant 2d``: a three-camera set
of RGB fundus-like PNGs (disc, cup) with a manifest.csv (``data.synthetic_manifest``). Both are
dataset descriptions for ``train --data``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from sammed_fast.cli import command
from sammed_fast.data.synthetic import REAL_CASE_COUNTS, ensure_synthetic, synthetic_set_is_written
from sammed_fast.data.synthetic_manifest import write_synthetic_2d, write_synthetic_multilabel
from sammed_fast.errors import ConfigError

__all__ = ["SUMMARY", "main"]

SUMMARY = "Write a synthetic data set: the six-domain prostate set (the default data) or a described one."
#: --variant -> the writer of a described set; "prostate" is the six-domain set.
DESCRIBED_VARIANTS = {"multilabel": write_synthetic_multilabel, "2d": write_synthetic_2d}
DESCRIBED_CASES = 8  # cases per domain of a described variant by default


@command()
def main(argv: Sequence[str] | None = None, prog: str = "python -m sammed_fast.data.synthetic") -> int:
    """Prints one line: the folder, and whether it was written or already complete."""
    parser = argparse.ArgumentParser(prog=prog, description=SUMMARY)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--variant", choices=("prostate", *DESCRIBED_VARIANTS), default="prostate",
                        help="prostate: the six-domain set; multilabel: 3D, two structures; 2d: RGB PNGs "
                             "(default: %(default)s)")
    parser.add_argument("--full", action="store_true",
                        help="the real slice grids and twice the in-plane matrix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=None,
                        help="cases per domain (default: the real counts, "
                             f"{'/'.join(str(n) for n in REAL_CASE_COUNTS.values())}, for prostate; "
                             f"{DESCRIBED_CASES} for the others)")
    parser.add_argument("--no-previews", action="store_true")
    args = parser.parse_args(argv)
    if args.cases is not None and args.cases < 1:
        raise ConfigError(f"--cases must be at least 1, got {args.cases}")
    if args.variant in DESCRIBED_VARIANTS:
        manifest = DESCRIBED_VARIANTS[args.variant](args.out, cases_per_domain=args.cases or DESCRIBED_CASES,
                                                    seed=args.seed)
        print(f"{manifest}: written (train with --data {manifest})")
        return 0
    done = synthetic_set_is_written(args.out, full=args.full, seed=args.seed, cases_per_domain=args.cases)
    try:
        path = ensure_synthetic(args.out, full=args.full, seed=args.seed,
                                cases_per_domain=args.cases, previews=not args.no_previews)
    except FileExistsError as error:  # --out holds something else; the message says what
        raise ConfigError(str(error)) from None
    print(f"{path}: {'already complete, nothing to do' if done else 'written'}")
    return 0
