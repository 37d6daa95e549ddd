"""``sammed-fast synthetic`` / ``python -m sammed_fast.data.synthetic``: writes the synthetic
six-domain prostate set in the real release's layout (``data.synthetic.ensure_synthetic``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sammed_fast.data.synthetic import REAL_CASE_COUNTS, ensure_synthetic, is_complete

__all__ = ["main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sammed_fast.data.synthetic",
        description="Write the synthetic six-domain prostate set in the real release's layout.")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--full", action="store_true",
                        help="the real slice grids and twice the in-plane matrix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=None,
                        help="cases per domain (default: the real counts, "
                             f"{'/'.join(str(n) for n in REAL_CASE_COUNTS.values())})")
    parser.add_argument("--no-previews", action="store_true")
    args = parser.parse_args(argv)
    done = is_complete(args.out, full=args.full, seed=args.seed, cases_per_domain=args.cases)
    path = ensure_synthetic(args.out, full=args.full, seed=args.seed,
                            cases_per_domain=args.cases, previews=not args.no_previews)
    print(f"{path}: {'already complete, nothing to do' if done else 'written'}")
    return 0
