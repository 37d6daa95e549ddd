"""``sammed-fast pretrain`` / ``python -m sammed_fast.pretrain``: pretrains the compact SAM on
procedural shapes (``experiment.pretraining``)."""
from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
from pathlib import Path
from typing import Sequence

import torch

from sammed_fast.cache import CACHE_ENV
from sammed_fast.experiment.pretraining import (WEIGHTS_DIR, PretrainConfig, _sha256,
                                                format_heldout, pretrain_compact_sam, shipped_checkpoint_path)
from sammed_fast.models.sam_registry import compact_config

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sammed_fast.pretrain", description=__doc__.split("\n")[0])
    defaults = PretrainConfig()
    parser.add_argument("--tile-size", type=int, default=defaults.tile_size, help="slice side in pixels (canvas = 2x)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                        help="steps between resume checkpoints (FILE with suffix .resume.pt)")
    parser.add_argument("--resume", action="store_true", help="continue from the resume checkpoint of --out")
    parser.add_argument("--init", type=Path, default=None,
                        help="warm start from these finished compact-SAM weights (their sidecar must vouch for them)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"checkpoint file (default: the cache, ${CACHE_ENV} or ~/.cache/sammed_fast); "
                             f"{shipped_checkpoint_path(64).relative_to(WEIGHTS_DIR.parents[1])} rebuilds "
                             "the shipped weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        compact_config(2 * args.tile_size)
    except ValueError as error:
        parser.error(f"--tile-size: {error}")
    for name in ("steps", "checkpoint_every", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr must be a finite number > 0, got {args.lr}")
    if args.warmup_steps < 0:
        parser.error("--warmup-steps must be at least 0")
    if args.init is not None and not args.init.is_file():
        parser.error(f"--init {args.init}: no such file")
    config = dataclasses.replace(defaults, tile_size=args.tile_size, steps=args.steps, seed=args.seed,
                                 checkpoint_every=args.checkpoint_every, lr=args.lr,
                                 warmup_steps=args.warmup_steps,
                                 init_sha256=None if args.init is None else _sha256(args.init))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = shlex.join(["python", "-m", "sammed_fast.pretrain", *(sys.argv[1:] if argv is None else argv)])
    result = pretrain_compact_sam(config=config, out=args.out, progress=not args.no_progress, device=args.device,
                                  resume=args.resume, command=command, init=args.init)
    print(f"saved {result.path} ({result.seconds:.0f} s); final loss {result.final_loss:.3f}")
    print(format_heldout(result.heldout))
    return 0
