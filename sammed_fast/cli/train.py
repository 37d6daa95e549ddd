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
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from sammed_fast.errors import ConfigError
from sammed_fast.experiment import distributed
from sammed_fast.experiment.config import SAM_CHOICES, SAM_SCALINGS, STAGES, TrainConfig
from sammed_fast.experiment.jobs import finished, train
from sammed_fast.method.prompts import PROMPT_KINDS
from sammed_fast.models import SEGMENTERS
from sammed_fast.models.tiled_sam import PRECISIONS

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m sammed_fast.train",
        description="Train and evaluate the two-stage SAM pipeline (coarse segmenter -> filtered box "
                    "-> SAM) on one source domain; evaluate on every unseen domain.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, default=None,
                   help="root of the six-site prostate release (folders ISBI, ISBI_1.5, I2CVB, UCL, "
                        "BIDMC, HK); default: the built-in synthetic set, written to the cache if missing")
    g.add_argument("--source", default=d.source, help="source domain letter (A..F)")
    g.add_argument("--targets", default=None, help="target domain letters, e.g. BCD (default: all others)")
    g.add_argument("--all-sources", action="store_true",
                   help="one run per source domain and their average (the paper's Table 1)")
    g.add_argument("--tile-size", type=int, default=None,
                   help="slice side in pixels; the SAM canvas is 2x2 tiles (default 64 for the compact "
                        "SAM, 512 for vit_*)")
    g.add_argument("--cache-dir", type=Path, default=None,
                   help="cache of the synthetic set and the compact SAM (default $SAMMED_FAST_CACHE or "
                        "~/.cache/sammed_fast)")
    g.add_argument("--synthetic-cases", type=int, default=None,
                   help="cases per domain of a smaller synthetic set (quick checks)")
    g = p.add_argument_group("stage 1: segmenter")
    g.add_argument("--segmenter", default=None, choices=sorted(SEGMENTERS),
                   help="default: deeplabv3_resnet50 (the paper's) on a GPU, resnet18_lite on the CPU")
    g.add_argument("--segmenter-weights", type=Path, default=None, help="local initial weights file")
    g.add_argument("--segmenter-epochs", type=int, default=None,
                   help="default: 60 on the synthetic set, 100 on real data")
    g.add_argument("--segmenter-batch", type=int, default=d.segmenter_batch)
    g.add_argument("--segmenter-lr", type=float, default=d.segmenter_lr)
    g = p.add_argument_group("stage 2: boxes")
    g.add_argument("--theta1", type=float, default=d.theta1, help="coarse-mask threshold")
    g.add_argument("--filter-cells", type=int, default=d.filter_cells,
                   help="the box filter area-downscales each coarse map to at least this many cells "
                        "per tile side before its largest component (the paper: 512 px / 4 = 128), so "
                        "the filter's geometry is the same at every tile size")
    g.add_argument("--downscale", type=int, default=None,
                   help="explicit area-downscale factor, overriding --filter-cells (1 = exact; "
                        "default: tile size // filter cells, at least 1: 4 at 512 px, 1 at 64 px)")
    g.add_argument("--empty-box", default=d.empty_box, choices=("skip", "full"),
                   help="slice without a coarse box: 'skip' -> empty mask, 'full' -> whole-image box")
    g = p.add_argument_group("stages 3-4: SAM")
    g.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="the frozen SAM image encoder on a GPU: bf16 autocast or fp32 (the CPU "
                        "always runs fp32)")
    g.add_argument("--compile", action="store_true",
                   help="run SAM's image encoder and per-box mask decoding under torch.compile "
                        "(inductor): faster epochs on a GPU after a one-off compile (about 40 s per "
                        "shape for the compact SAM on a 2-core CPU, where it gains little)")
    g.add_argument("--sam", default=d.sam, choices=SAM_CHOICES,
                   help="'compact' is a small stand-in pretrained on procedural shapes; real "
                        "conclusions need vit_b/l/h with --sam-checkpoint")
    g.add_argument("--sam-checkpoint", type=Path, default=None, help="SAM state dict (.pth)")
    g.add_argument("--sam-scaling", default=None, choices=SAM_SCALINGS,
                   help="how slices are scaled for the image encoder: 'sam' (SAM's pixel mean/std; the "
                        "published SAM checkpoints) or 'medsam' (each slice min-max scaled to 0..1; "
                        "MedSAM's vit_b checkpoint). Default sam; a checkpoint named like MedSAM's "
                        "must say which")
    g.add_argument("--decoder-epochs", type=int, default=None,
                   help="default: 40 on the synthetic set, 200 on real data")
    g.add_argument("--decoder-batch", type=int, default=d.decoder_batch)
    g.add_argument("--decoder-lr", type=float, default=d.decoder_lr)
    g.add_argument("--decoder-prompts", default=d.decoder_prompts, choices=PROMPT_KINDS,
                   help="boxes the decoder is fine-tuned and selected with: 'filtered' is the method; "
                        "'gt', 'whole', 'unfiltered' give the paper's Table 3 ablation rows; "
                        "'crossfit': filtered boxes of the training slices from segmenters that did "
                        "not train on them (--crossfit-folds), like the boxes met at test time")
    g.add_argument("--crossfit-folds", type=int, default=d.crossfit_folds,
                   help="with --decoder-prompts crossfit: folds of the source training volumes (one "
                        "extra segmenter per fold)")
    g.add_argument("--box-jitter", type=int, default=d.box_jitter,
                   help="training only: move each box side 0..N px outward")
    g.add_argument("--box-noise", type=float, default=d.box_noise,
                   help="training only: move each box side by a random fraction in [-F, F] of the "
                        "box's extent (shift, shrink, grow; SAM was trained with about 0.1)")
    g.add_argument("--embedding-cache", default=d.embedding_cache, choices=("disk", "memory"))
    g.add_argument("--theta2", type=float, default=d.theta2, help="SAM mask threshold")
    g.add_argument("--compact-pretrain-steps", type=int, default=None,
                   help="testing: pretrain the compact SAM for this many steps into the run folder "
                        "(0 = random weights) instead of using the cached one")
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, default=None,
                   help="run folder (default runs/sammed_fast_<source>, or runs/sammed_fast_all)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out: finished stages are not redone")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="one run per seed (out/seed_<n>) and results.md with the mean and standard "
                        "deviation of every row over the seeds, e.g. --seeds 0 1 2")
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    g.add_argument("--threads", type=int, default=d.threads,
                   help="torch CPU threads; 0 = auto: 1 when training on the CPU (small models gain "
                        "little from more, and lose badly on a shared machine), torch's default on a GPU")
    g.add_argument("--stop-after", default=None, choices=STAGES, help="stop after this stage")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are off anyway when stderr is not a terminal: a "
                        "redirected run logs one line per stage and per epoch instead)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["progress"] = not args.no_progress and sys.stderr.isatty()
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        out = train(config)
    except ConfigError as error:
        if not distributed.is_main():  # rank 0 prints the message for every rank
            raise SystemExit(2) from None
        parser.error(str(error))
    except KeyboardInterrupt:
        print("\ninterrupted; continue with the same command plus --resume", file=sys.stderr)
        raise SystemExit(130)
    if not distributed.is_main():
        return 0
    if finished(config):
        print()
        print((out / "results.md").read_text())
        print(f"run folder: {out}")
    else:
        print(f"stopped after stage {config.stop_after}; run folder: {out}")
    return 0
