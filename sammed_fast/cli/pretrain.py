"""``sammed-fast pretrain`` / ``python -m sammed_fast.pretrain``: pretrains the compact SAM on
procedural shapes (``experiment.pretraining``)."""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch

from sammed_fast.cache import CACHE_ENV
from sammed_fast.files import sha256_file
from sammed_fast.cli import command
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.pretraining import (WEIGHTS_DIR, PretrainConfig,
                                                format_heldout, pretrain_compact_sam, shipped_checkpoint_path)
from sammed_fast.models.sam_registry import compact_config
from sammed_fast.options import add_options, option_values

__all__ = ["SUMMARY", "build_parser", "config_from_args", "main"]

SUMMARY = "Pretrain the compact stand-in SAM on procedural shapes."


def build_parser(prog: str = "python -m sammed_fast.pretrain") -> argparse.ArgumentParser:
    """PretrainConfig's options, then those of the run itself."""
    parser = argparse.ArgumentParser(prog=prog, description=SUMMARY)
    add_options(parser, PretrainConfig)
    parser.add_argument("--resume", action="store_true", help="continue from the resume checkpoint of --out")
    parser.add_argument("--init", type=Path, default=None,
                        help="warm start from these finished compact-SAM weights (their sidecar must vouch for them)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"checkpoint file (default: the cache, ${CACHE_ENV} or ~/.cache/sammed_fast); "
                             f"{shipped_checkpoint_path(64).relative_to(WEIGHTS_DIR.parents[1])} rebuilds "
                             "the shipped weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The recipe of parsed arguments; a bad value raises ConfigError naming its option."""
    try:
        compact_config(2 * args.tile_size)
    except ValueError as error:
        raise ConfigError(f"--tile-size: {error}") from None
    for name in ("steps", "targets_per_image", "checkpoint_every", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ConfigError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.warmup_steps < 0:
        raise ConfigError("--warmup-steps must be at least 0")
    if args.init is not None and not args.init.is_file():
        raise ConfigError(f"--init {args.init}: no such file")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available on this machine")
    return PretrainConfig(**option_values(args, PretrainConfig),
                          init_sha256=None if args.init is None else sha256_file(args.init))


@command(resumable=True)
def main(argv: Sequence[str] | None = None, prog: str = "python -m sammed_fast.pretrain") -> int:
    """Prints the saved checkpoint and its held-out table."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(prog).parse_args(argv)
    config = config_from_args(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = pretrain_compact_sam(config=config, out=args.out, progress=not args.no_progress, device=args.device,
                                  resume=args.resume, command=shlex.join([*shlex.split(prog), *argv]),
                                  init=args.init)
    print(f"saved {result.path} ({result.seconds:.0f} s); final loss {result.final_loss:.3f}")
    print(format_heldout(result.heldout))
    return 0
