"""``sammed-fast synthetic`` / ``python -m sammed_fast.data.synthetic``: writes the synthetic
six-domain prostate set in the real release's layout (``data.synthetic.ensure_synthetic``)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from sammed_fast.cli import command
from sammed_fast.data.synthetic import REAL_CASE_COUNTS, ensure_synthetic, synthetic_set_is_written
from sammed_fast.errors import ConfigError

__all__ = ["SUMMARY", "main"]

SUMMARY = "Write the synthetic six-domain prostate set (the default data)."


@command()
def main(argv: Sequence[str] | None = None, prog: str = "python -m sammed_fast.data.synthetic") -> int:
    """Prints one line: the folder, and whether it was written or already complete."""
    parser = argparse.ArgumentParser(prog=prog, description=SUMMARY)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--full", action="store_true",
                        help="the real slice grids and twice the in-plane matrix")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=None,
                        help="cases per domain (default: the real counts, "
                             f"{'/'.join(str(n) for n in REAL_CASE_COUNTS.values())})")
    parser.add_argument("--no-previews", action="store_true")
    args = parser.parse_args(argv)
    if args.cases is not None and args.cases < 1:
        raise ConfigError(f"--cases must be at least 1, got {args.cases}")
    done = synthetic_set_is_written(args.out, full=args.full, seed=args.seed, cases_per_domain=args.cases)
    try:
        path = ensure_synthetic(args.out, full=args.full, seed=args.seed,
                                cases_per_domain=args.cases, previews=not args.no_previews)
    except FileExistsError as error:  # --out holds something else; the message says what
        raise ConfigError(str(error)) from None
    print(f"{path}: {'already complete, nothing to do' if done else 'written'}")
    return 0
