"""Pretrains the compact SAM as a generic box-promptable segmenter on procedural shapes.

``python -m sammed_fast.pretrain [--tile-size 64] [--out FILE]`` trains the whole compact SAM
(image encoder, prompt encoder, mask decoder) through the same 2x2 tiled path used at run time
(4 procedural images per canvas, each with its own box) and saves an ordinary SAM state dict plus a
JSON sidecar. It stands in for real SAM weights, which cannot be downloaded here; it never sees
prostate or any target-domain data. ``ensure_compact_sam`` returns the cached file, pretraining it
first when missing or stale.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sammed_fast.atomic import save_torch_atomic, write_text_atomic
from sammed_fast.sam.procedural import ellipse_in_boxes, generate
from sammed_fast.sam.registry import compact_config, sam_from_config
from sammed_fast.sam.tiled import TiledSam

CACHE_ENV = "SAMMED_FAST_CACHE"
FORMAT = 2  # bump when the checkpoint/sidecar layout or the procedural recipe changes


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Recipe of the compact-SAM pretraining (defaults: about 3-4 minutes on 2 CPU cores)."""

    tile_size: int = 64
    steps: int = 2000
    canvases_per_step: int = 4  # 4 tiles each, so 16 boxes per step
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    seed: int = 0
    heldout_slices: int = 512


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    path: Path
    final_loss: float  # mean Dice + BCE over the last 10% of steps
    heldout_dice: float  # mean per-image Dice at logit 0 on held-out procedural images
    baseline_dice: dict  # the same Dice for masks that only use the box (box fill, inscribed ellipse)
    seconds: float


def default_cache_dir() -> Path:
    """$SAMMED_FAST_CACHE, else ~/.cache/sammed_fast."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sammed_fast")


def compact_checkpoint_path(tile_size: int, cache_dir: str | os.PathLike | None = None) -> Path:
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / f"compact_sam_tile{tile_size}.pth"


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean soft Dice loss per image plus mean BCE; logits and target (B,1,h,w)."""
    probs = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    dice = (2 * (probs * flat).sum(1) + 1) / (probs.sum(1) + flat.sum(1) + 1)
    return (1 - dice).mean() + F.binary_cross_entropy_with_logits(logits, target)


def hard_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,1,h,w) binary masks -> (B,) Dice; 1 when both are empty."""
    pred, target = pred.flatten(1).float(), target.flatten(1).float()
    total = pred.sum(1) + target.sum(1)
    return torch.where(total > 0, 2 * (pred * target).sum(1) / total.clamp_min(1), torch.ones_like(total))


def _lr_factor(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate_procedural(model: TiledSam, *, slices: int, seed: int, batch: int = 64) -> tuple[float, dict]:
    """Held-out Dice of the box-prompted model and of box-only baselines on fresh procedural data."""
    generator = torch.Generator().manual_seed(seed)
    data = generate(slices, model.tile_size, generator=generator)
    model.eval()
    device = model.sam.device
    preds = torch.cat([
        model(data.images[i : i + batch].to(device), data.boxes[i : i + batch].to(device)).cpu() > 0
        for i in range(0, slices, batch)
    ])
    box_fill = torch.zeros_like(data.masks)
    for i, (x0, y0, x1, y1) in enumerate(data.boxes.round().long().tolist()):
        box_fill[i, 0, y0 : y1 + 1, x0 : x1 + 1] = 1
    baselines = {
        "box_fill": hard_dice(box_fill, data.masks).mean().item(),
        "ellipse_in_box": hard_dice(ellipse_in_boxes(data.boxes, model.tile_size), data.masks).mean().item(),
    }
    return hard_dice(preds, data.masks).mean().item(), baselines


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pretrain_compact_sam(
    *,
    config: PretrainConfig = PretrainConfig(),
    out: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> PretrainResult:
    """Pretrains the compact SAM for ``config.tile_size`` and saves it (state dict + JSON sidecar).

    out: checkpoint file; default the cache path for this tile size. The procedural data is drawn on
    the CPU, so the data (not the arithmetic) is the same on every device; on the CPU the run is
    deterministic from config.seed for a given thread count.
    """
    start = time.perf_counter()
    path = Path(out) if out is not None else compact_checkpoint_path(config.tile_size)
    sam_config = compact_config(2 * config.tile_size)
    torch.manual_seed(config.seed)
    sam = sam_from_config(sam_config).to(device).train()
    model = TiledSam(sam=sam, tile_size=config.tile_size, grid=2, trainable_encoder=True)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    generator = torch.Generator().manual_seed(config.seed)
    tiles = config.canvases_per_step * model.tiles_per_canvas
    losses = []
    bar = tqdm(range(config.steps), desc="pretraining compact SAM", disable=not progress, unit="step")
    for _ in bar:
        data = generate(tiles, config.tile_size, generator=generator)
        images, boxes, masks = (x.to(device) for x in (data.images, data.boxes, data.masks))
        loss = dice_bce_loss(model(images, boxes), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    tail = losses[-max(1, len(losses) // 10) :]
    final_loss = sum(tail) / len(tail) if tail else float("nan")
    # Held-out images come from a seed stream the training never draws from.
    dice, baselines = evaluate_procedural(model, slices=config.heldout_slices, seed=config.seed + 1_000_003)
    state = {key: value.cpu() for key, value in sam.eval().state_dict().items()}
    save_torch_atomic(path, state)
    seconds = time.perf_counter() - start
    sidecar = {
        "format": FORMAT,
        "variant": "compact",
        "tile_size": config.tile_size,
        "canvas_size": sam_config.canvas_size,
        "sam_config": sam_config.to_json(),
        "pretrain_config": dataclasses.asdict(config),
        "steps": config.steps,
        "final_loss": final_loss,
        "heldout_dice": dice,
        "heldout_baseline_dice": baselines,
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "sha256": _sha256(path),
        "note": "procedural shapes only; a stand-in for real SAM weights",
    }
    # The sidecar goes last: a checkpoint counts as complete only when its sidecar vouches for it.
    write_text_atomic(sidecar_path(path), json.dumps(sidecar, indent=2))
    return PretrainResult(path, final_loss, dice, baselines, seconds)


def is_complete(path: Path, tile_size: int) -> bool:
    """True when ``path`` holds a finished compact SAM for this tile size made by this code version."""
    sidecar = sidecar_path(path)
    if not path.is_file() or not sidecar.is_file():
        return False
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("format") == FORMAT
        and meta.get("tile_size") == tile_size
        and meta.get("sam_config") == json.loads(json.dumps(compact_config(2 * tile_size).to_json()))
        and meta.get("sha256") == _sha256(path)
    )


def ensure_compact_sam(
    *, tile_size: int, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """The cached compact-SAM checkpoint for ``tile_size``, pretraining it first if missing or stale.

    Load it with ``build_sam('compact', checkpoint=path, canvas_size=2 * tile_size)``.
    """
    compact_config(2 * tile_size)  # validates the tile size before any work
    path = compact_checkpoint_path(tile_size, cache_dir)
    if not is_complete(path, tile_size):
        if progress:
            print(f"No pretrained compact SAM for tile size {tile_size} at {path}; pretraining it once "
                  "on procedural shapes (a stand-in for real SAM weights).")
        pretrain_compact_sam(config=PretrainConfig(tile_size=tile_size), out=path, progress=progress)
    return path


def main(argv: Sequence[str] | None = None) -> PretrainResult:
    parser = argparse.ArgumentParser(prog="python -m sammed_fast.pretrain", description=__doc__.split("\n")[0])
    defaults = PretrainConfig()
    parser.add_argument("--tile-size", type=int, default=defaults.tile_size, help="slice side in pixels (canvas = 2x)")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"checkpoint file (default: the cache, ${CACHE_ENV} or ~/.cache/sammed_fast)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        compact_config(2 * args.tile_size)
    except ValueError as error:
        parser.error(f"--tile-size: {error}")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    config = dataclasses.replace(defaults, tile_size=args.tile_size, steps=args.steps, seed=args.seed)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    result = pretrain_compact_sam(config=config, out=args.out, progress=not args.no_progress, device=args.device)
    print(f"saved {result.path} ({result.seconds:.0f} s); held-out box-prompted Dice {result.heldout_dice:.3f} "
          f"(box fill {result.baseline_dice['box_fill']:.3f}, "
          f"inscribed ellipse {result.baseline_dice['ellipse_in_box']:.3f}); final loss {result.final_loss:.3f}")
    return result


if __name__ == "__main__":
    main()
