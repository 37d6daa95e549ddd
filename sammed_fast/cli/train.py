"""``sammed-fast train`` / ``python -m sammed_fast.train``: the main job. Train the coarse segmenter
on one source domain, derive box prompts, fine-tune SAM's mask decoder on them, and evaluate on the
source test split and every unseen domain.

    python -m sammed_fast.train                      # synthetic set, source A, compact SAM, CPU
    python -m sammed_fast.train --data PATH --sam vit_b --sam-checkpoint sam_vit_b_01ec64.pth \\
        --tile-size 512 --source B
    python -m sammed_fast.train --all-sources        # six runs and their average (Table 1)
    python -m sammed_fast.train --out DIR --resume   # continue an interrupted run
    torchrun --nproc_per_node=N -m sammed_fast.train ...   # N processes (GPUs), rank 0 writes

The command parses its arguments into a :class:`TrainConfig` and calls
:func:`sammed_fast.experiment.jobs.train`, the same function Python users call.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from sammed_fast.cli import command
from sammed_fast.experiment import distributed
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.experiment.jobs import finished, train
from sammed_fast.experiment.run_folder import RunPaths
from sammed_fast.options import add_options, option_values

__all__ = ["SUMMARY", "build_parser", "config_from_args", "main"]

SUMMARY = "Train the method on one source domain and evaluate it on the unseen ones."


def build_parser(prog: str = "python -m sammed_fast.train") -> argparse.ArgumentParser:
    """The options of TrainConfig's fields, in its groups."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Train the two-stage SAM pipeline (coarse segmenter -> filtered box -> SAM) "
                               "on one source domain; evaluate on every unseen domain.")
    add_options(parser, TrainConfig)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed arguments; progress bars only when stderr is a terminal."""
    values = option_values(args, TrainConfig)
    values["progress"] = values["progress"] and sys.stderr.isatty()
    return TrainConfig(**values)


@command(resumable=True)
def main(argv: Sequence[str] | None = None, prog: str = "python -m sammed_fast.train") -> int:
    config = config_from_args(build_parser(prog).parse_args(argv))
    out = train(config)
    if not distributed.is_main():
        return 0
    if finished(config):
        print()
        print(RunPaths(out).results_md.read_text())
        print(f"run folder: {out}")
    else:
        print(f"stopped after stage {config.stop_after}; run folder: {out}")
    return 0
