"""``sammed-fast evaluate`` / ``python -m sammed_fast.evaluate --run DIR``: re-evaluates a finished
run folder with its stored config, segmenter predictions, boxes and selected decoder, through the
same evaluation as the training command; rewrites results.json, results.md, cases.csv and
figure.png and prints the results table. Evaluation is deterministic: the numbers match the run's.
Under ``torchrun --nproc_per_node=N -m sammed_fast.evaluate --run-dir DIR`` the N processes share
the work and give the same numbers; rank 0 writes and prints.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from sammed_fast.cli import command
from sammed_fast.experiment import distributed
from sammed_fast.experiment.jobs import evaluate
from sammed_fast.experiment.run_folder import RunPaths

__all__ = ["SUMMARY", "main"]

SUMMARY = "Re-evaluate a finished run folder and print its results table."


@command()
def main(argv: Sequence[str] | None = None, prog: str = "python -m sammed_fast.evaluate") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=SUMMARY)
    parser.add_argument("--run", "--run-dir", dest="run", type=Path, required=True,
                        help="run folder written by sammed_fast.train (spell it --run-dir after "
                             "torchrun, whose parser mistakes --run for its own --run-path)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    evaluate(args.run, device=args.device, progress=not args.no_progress and sys.stderr.isatty())
    if distributed.is_main():
        print(RunPaths(args.run).results_md.read_text())
    return 0
