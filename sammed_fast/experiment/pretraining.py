"""Pretrains the compact SAM as a generic box-promptable segmenter on procedural shapes.

``python -m sammed_fast.pretrain [--tile-size 64] [--out FILE] [--resume]`` trains the whole compact
SAM (image encoder, prompt encoder, mask decoder) through the same 2x2 tiled path used at run time
(4 procedural images per canvas from ``data.procedural``; each image prompted for
``targets_per_image`` of its objects, three by default, each with its own noised box, so one
encoder pass serves several masks as in SAM's own training) and saves an ordinary SAM state
dict in float16 plus a JSON sidecar (recipe, seed, steps, sha256, held-out scores). It stands in
for real SAM weights, which cannot be downloaded here; it never sees prostate or any target-domain
data.

The run saves a resume checkpoint (model, optimizer, scheduler, data generator, step, losses) next
to the output every ``checkpoint_every`` steps; ``--resume`` continues from it, so an interrupted run
loses at most that many steps.

The package ships the tile-64 weights (``sammed_fast/weights/compact_sam_tile64.pth``, rebuilt by
``python -m sammed_fast.pretrain --out sammed_fast/weights/compact_sam_tile64.pth``);
``ensure_compact_sam`` returns them, and for other tile sizes the cached file, pretraining it first
when missing or stale.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from sammed_fast.atomic import save_torch_atomic, write_text_atomic
from sammed_fast.cache import default_cache_dir
from sammed_fast.errors import ConfigError
from sammed_fast.files import load_torch_file, sha256_file
from sammed_fast.metrics import dice as _dice
from sammed_fast.method.losses import dice_bce_loss
from sammed_fast.data import procedural
from sammed_fast.data.procedural import BoxNoise, ShapeBatch, generate, perturb_boxes
from sammed_fast.method.prompts import ellipse_in_boxes
from sammed_fast.models.sam_registry import compact_config, sam_from_config
from sammed_fast.models.tiled_sam import TiledSam
from sammed_fast.options import option

FORMAT = 4  # bump when the checkpoint/sidecar layout, the architecture or the procedural recipe changes
WEIGHTS_DIR = Path(__file__).parents[1] / "weights"  # weights shipped with the package
HELDOUT_SEED_OFFSET = 1_000_003  # held-out training-family images: seed + this (never drawn in training)
EVAL_BOX_CHANGE = 0.1  # held-out boxes loosened / shifted by this fraction of their side


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Recipe of the compact-SAM pretraining (defaults: the shipped weights, about an hour on one
    CPU thread). The fields declared with an option are options of ``sammed-fast pretrain``."""

    tile_size: int = option(64, "slice side in pixels (canvas = 2x)")
    steps: int = option(4000, "training steps")
    canvases_per_step: int = 4  # 4 tiles each, so 16 images per step
    targets_per_image: int = option(3, "objects prompted per training image (one encoder pass serves "
                                       "them all, as in SAM's own training)")
    lr: float = option(1e-3, "peak learning rate")
    weight_decay: float = 1e-4
    warmup_steps: int = option(200, "steps of linear learning-rate warm-up (then cosine decay)")
    seed: int = option(0, "seed of the initial weights and the procedural data")
    heldout_slices: int = 512
    checkpoint_every: int = option(200, "steps between resume checkpoints (the --out file with suffix .resume.pt)")
    box_noise: BoxNoise = BoxNoise()
    init_sha256: str | None = None  # warm start: sha256 of the compact-SAM weights training starts from

    def to_json(self) -> dict:
        """The recipe as JSON; ``init_sha256`` only for a warm start (so from-scratch recipes read
        as before it existed)."""
        recipe = json.loads(json.dumps(dataclasses.asdict(self)))
        if recipe["init_sha256"] is None:
            del recipe["init_sha256"]
        return recipe


@dataclasses.dataclass(frozen=True)
class PretrainResult:
    path: Path
    final_loss: float  # mean Dice + BCE over the last 10% of steps
    heldout_dice: float  # mean per-image Dice at logit 0, held-out training family, exact tight boxes
    baseline_dice: dict  # the same Dice for masks that only use the box (box fill, inscribed ellipse)
    seconds: float
    heldout: dict = dataclasses.field(default_factory=dict)  # evaluate_heldout's full table


def compact_checkpoint_path(tile_size: int, cache_dir: str | os.PathLike | None = None) -> Path:
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / f"compact_sam_tile{tile_size}.pth"


def shipped_checkpoint_path(tile_size: int) -> Path:
    """Where the package's own weights for this tile size are (the file may not exist)."""
    return WEIGHTS_DIR / f"compact_sam_tile{tile_size}.pth"


def sidecar_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def resume_path(checkpoint: Path) -> Path:
    """The resume checkpoint of a run that writes ``checkpoint``."""
    return checkpoint.with_suffix(".resume.pt")


def _mean_dice(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-image Dice of (B,1,h,w) binary masks (1 when both are empty). The float32 per-image
    scores equal the float32 ratio the recorded held-out numbers were made with, so the mean is the same."""
    return _dice(pred, target).float().mean().item()


def _lr_factor(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def evaluation_boxes(tight: torch.Tensor, size: int) -> dict[str, torch.Tensor]:
    """The exact (never random) box sets of the held-out evaluation, from (N,4) tight boxes:
    'gt' the tight box; 'loosened' every side out by 10% of the box side; 'shifted' the box moved
    by 10% of its width and height, diagonally, the four diagonals in turn (box i: direction i % 4)."""
    signs = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])[torch.arange(len(tight)) % 4]
    extent = tight[:, 2:] - tight[:, :2] + 1
    shifted = perturb_boxes(tight + (EVAL_BOX_CHANGE * signs * extent).repeat(1, 2), size)
    return {"gt": tight, "loosened": perturb_boxes(tight, size, loosen=EVAL_BOX_CHANGE), "shifted": shifted}


HELDOUT_FAMILIES: dict[str, Callable[..., ShapeBatch]] = {
    # The training family at a seed pretraining never draws, with exact tight boxes.
    "training_family": lambda n, size, generator: procedural.generate(
        n, size, generator=generator, box_noise=procedural.NO_BOX_NOISE),
    # A family pretraining never sees.
    "polygons_and_blobs": lambda n, size, generator: procedural.generate_polygons_and_blobs(
        n, size, generator=generator),
}


def box_baselines(boxes: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    """Mean Dice of masks made from the box alone: the filled box and its inscribed ellipse."""
    size = masks.shape[-1]
    fill = torch.zeros_like(masks)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
        fill[i, 0, y0 : y1 + 1, x0 : x1 + 1] = 1
    return {"box_fill": _mean_dice(fill, masks), "ellipse_in_box": _mean_dice(ellipse_in_boxes(boxes, size), masks)}


@torch.no_grad()
def evaluate_boxes(model: TiledSam, images: torch.Tensor, masks: torch.Tensor,
                   box_sets: dict[str, torch.Tensor], *, batch: int = 64) -> dict[str, float]:
    """Mean Dice of the model's masks (logit > 0) for exactly the given boxes, per box set; images
    and masks (N,1,t,t), each box set (N,4) xyxy in the tile frame. Encodes each image once."""
    model.eval()
    device = model.sam.device
    predictions = {name: [] for name in box_sets}
    for i in range(0, len(images), batch):
        embeddings = model.encode(images[i : i + batch].to(device))
        for name, boxes in box_sets.items():
            predictions[name].append(model.decode(embeddings, boxes[i : i + batch].to(device)).cpu() > 0)
    return {name: _mean_dice(torch.cat(preds), masks) for name, preds in predictions.items()}


def evaluate_heldout(model: TiledSam, *, slices: int, seed: int) -> dict:
    """Held-out Dice per family and box set, and the box-only baselines:
    {family: {"model": {box set: Dice}, "baselines": {box set: {baseline: Dice}}}}."""
    results = {}
    for index, (family, make) in enumerate(HELDOUT_FAMILIES.items()):
        data = make(slices, model.tile_size, torch.Generator().manual_seed(seed + index))
        box_sets = evaluation_boxes(data.tight_boxes, model.tile_size)
        results[family] = {
            "model": evaluate_boxes(model, data.images, data.masks, box_sets),
            "baselines": {name: box_baselines(boxes, data.masks) for name, boxes in box_sets.items()},
        }
    return results


QUICK_CHECK_SLICES = 16  # images per family of the sidecar's quick check (a test recomputes it)


def quick_check(model: TiledSam, *, seed: int) -> dict:
    """A small held-out evaluation recorded in the sidecar so that a test can recompute it fast:
    {"slices", "seed", "heldout": evaluate_heldout's table}."""
    seed = seed + HELDOUT_SEED_OFFSET
    return {"slices": QUICK_CHECK_SLICES, "seed": seed,
            "heldout": evaluate_heldout(model, slices=QUICK_CHECK_SLICES, seed=seed)}


class _Progress:
    """A tqdm bar on a terminal; otherwise one log line per ~5% of the steps on stderr."""

    def __init__(self, *, total: int, start: int, enabled: bool, seconds_before: float) -> None:
        self.total, self.start, self.enabled = total, start, enabled
        self.every = max(1, total // 20)
        self.started = time.perf_counter()
        self.seconds_before = seconds_before
        self.bar = tqdm(total=total, initial=start, desc="pretraining compact SAM", unit="step") \
            if enabled and sys.stderr.isatty() else None

    def update(self, step: int, losses: list[float], lr: float) -> None:
        """Call after step ``step`` (0-based) finished."""
        recent = losses[-50:]
        loss = sum(recent) / len(recent)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}")
        elif self.enabled and ((step + 1) % self.every == 0 or step + 1 == self.total):
            spent = time.perf_counter() - self.started
            done = step + 1 - self.start
            eta = spent / done * (self.total - step - 1)
            print(f"pretraining compact SAM: step {step + 1}/{self.total} ({100 * (step + 1) / self.total:.0f}%) "
                  f"loss {loss:.4f} lr {lr:.2e} elapsed {self.seconds_before + spent:.0f} s eta {eta:.0f} s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def pretrain_compact_sam(
    *,
    config: PretrainConfig = PretrainConfig(),
    out: str | os.PathLike | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    resume: bool = False,
    command: str | None = None,
    init: str | os.PathLike | None = None,
) -> PretrainResult:
    """Pretrains the compact SAM for ``config.tile_size`` and saves it (float16 state dict + JSON
    sidecar, the sidecar last).

    out: checkpoint file; default the cache path for this tile size. resume: continue from
    ``resume_path(out)`` when it exists (its recipe must equal ``config``). command: the command
    line recorded in the sidecar (default: the equivalent ``python -m sammed_fast.pretrain``
    call). init: a finished compact SAM to start from (a warm start; its sha256 must equal
    ``config.init_sha256``, and the sidecar records its file and recipe). The procedural data is
    drawn on the CPU, so the data (not the arithmetic) is the same on every device; on the CPU with
    one thread the run is deterministic from config.seed, resumed or not (with several threads, or
    on a GPU, the backward of the gather that gives each box its image's canvas accumulates in no
    fixed order when an image has several boxes).
    """
    start_time = time.perf_counter()
    path = Path(out) if out is not None else compact_checkpoint_path(config.tile_size)
    state_path = resume_path(path)
    sam_config = compact_config(2 * config.tile_size)
    torch.manual_seed(config.seed)
    sam = sam_from_config(sam_config)
    init_record = _warm_start(sam, init, config)
    sam = sam.to(device).train()
    model = TiledSam(sam=sam, tile_size=config.tile_size, grid=2, trainable_encoder=True)
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    generator = torch.Generator().manual_seed(config.seed)
    first_step, losses, seconds_before = 0, [], 0.0
    if resume and state_path.is_file():
        saved = load_torch_file(state_path, message="cannot read the resume checkpoint {path} ({reason}); "
                                                     "remove it to start over")
        if saved["config"] != config.to_json():
            raise ConfigError(f"{state_path} was made with another recipe ({saved['config']}); "
                             f"remove it or rerun with that recipe")
        if saved.get("sam_config", sam_config.to_json()) != sam_config.to_json():  # older files lack it
            raise ConfigError(f"{state_path} holds another compact-SAM architecture (made by another "
                              f"version of sammed_fast); remove it to start over")
        sam.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"])
        first_step, losses, seconds_before = saved["step"], list(saved["losses"]), saved["seconds"]
        if progress:
            print(f"resuming compact-SAM pretraining from step {first_step} ({state_path})", file=sys.stderr)

    def save_resume_state(step: int) -> None:
        save_torch_atomic(state_path, {
            "config": config.to_json(), "sam_config": sam_config.to_json(), "step": step, "losses": losses,
            "model": sam.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(), "seconds": seconds_before + time.perf_counter() - start_time,
        })

    tiles = config.canvases_per_step * model.tiles_per_canvas
    # Box i*T + j prompts image i (None for one box per image: decode's own default, arange).
    image_of_box = (None if config.targets_per_image == 1 else
                    torch.arange(tiles, device=device).repeat_interleave(config.targets_per_image))
    bar = _Progress(total=config.steps, start=first_step, enabled=progress, seconds_before=seconds_before)
    try:
        for step in range(first_step, config.steps):
            data = generate(tiles, config.tile_size, generator=generator, box_noise=config.box_noise,
                            targets=config.targets_per_image)
            images, boxes, masks = (x.to(device) for x in (data.images, data.boxes, data.masks))
            loss = dice_bce_loss(model.decode(model.encode(images), boxes, image_of_box), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.update(step, losses, scheduler.get_last_lr()[0])
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                save_resume_state(step + 1)
    finally:
        bar.close()
    tail = losses[-max(1, len(losses) // 10) :]
    final_loss = sum(tail) / len(tail) if tail else float("nan")

    # Ship float16; score the weights as shipped (rounded to float16, run in float32).
    half = {key: value.detach().cpu().to(torch.float16) if value.is_floating_point() else value.cpu()
            for key, value in sam.state_dict().items()}
    sam.load_state_dict(half)
    heldout = evaluate_heldout(model, slices=config.heldout_slices, seed=config.seed + HELDOUT_SEED_OFFSET)
    save_torch_atomic(path, half)
    seconds = seconds_before + time.perf_counter() - start_time
    sidecar = {
        "format": FORMAT,
        "variant": "compact",
        "tile_size": config.tile_size,
        "canvas_size": sam_config.canvas_size,
        "sam_config": sam_config.to_json(),
        "dtype": "float16",
        "parameters": sum(p.numel() for p in sam.parameters()),
        "pretrain_config": config.to_json(),
        "init": init_record,
        "seed": config.seed,
        "steps": config.steps,
        "final_loss": final_loss,
        "loss_curve": [round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 4)
                       for i in range(0, len(losses), 100)],  # mean per 100 steps
        "heldout_dice": heldout["training_family"]["model"]["gt"],
        "heldout_baseline_dice": heldout["training_family"]["baselines"]["gt"],
        "heldout": heldout,
        "quick_check": quick_check(model, seed=config.seed),
        "heldout_protocol": f"{config.heldout_slices} images per family, exact boxes: tight; every side "
                            f"out by {EVAL_BOX_CHANGE:.0%} of the side; shifted diagonally by "
                            f"{EVAL_BOX_CHANGE:.0%} of width and height; training family at seed "
                            f"{config.seed + HELDOUT_SEED_OFFSET}, polygons_and_blobs at seed "
                            f"{config.seed + HELDOUT_SEED_OFFSET + 1}",
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or (f"python -m sammed_fast.pretrain --tile-size {config.tile_size} --steps "
                               f"{config.steps} --seed {config.seed} --checkpoint-every {config.checkpoint_every} "
                               f"--threads {torch.get_num_threads()} --out {path}"),
        "sha256": sha256_file(path),
        "note": "procedural shapes only; a stand-in for real SAM weights",
    }
    # The sidecar goes last: a checkpoint counts as complete only when its sidecar vouches for it.
    write_text_atomic(sidecar_path(path), json.dumps(sidecar, indent=2))
    state_path.unlink(missing_ok=True)
    return PretrainResult(path, final_loss, sidecar["heldout_dice"], sidecar["heldout_baseline_dice"], seconds,
                          heldout)


def _warm_start(sam: torch.nn.Module, init: str | os.PathLike | None, config: PretrainConfig) -> dict | None:
    """Loads ``init`` (a finished compact SAM of this tile size) into ``sam`` and returns what the
    sidecar records of it; None without ``init``."""
    if init is None:
        if config.init_sha256 is not None:
            raise ValueError("config.init_sha256 is set but no init weights were given")
        return None
    init = Path(init)
    problems = _problems(init, config.tile_size)
    if problems:
        raise ConfigError(f"--init {init}: not a finished compact SAM for tile size {config.tile_size} "
                          f"({'; '.join(problems)})")
    digest = sha256_file(init)
    if config.init_sha256 is not None and digest != config.init_sha256:
        raise ConfigError(f"--init {init}: sha256 {digest} differs from the recipe's {config.init_sha256}")
    state = load_torch_file(init, message="--init {path}: cannot read it with weights_only=True ({reason})")
    sam.load_state_dict({key: value.float() if value.is_floating_point() else value for key, value in state.items()})
    meta = json.loads(sidecar_path(init).read_text())
    return {"file": init.name, "sha256": digest, "steps": meta.get("steps"), "command": meta.get("command"),
            "pretrain_config": meta.get("pretrain_config"), "init": meta.get("init")}


def checkpoint_is_vouched_for(path: Path, tile_size: int) -> bool:
    """True when ``path`` holds a finished compact SAM for this tile size made by this code version:
    its sidecar exists (written last) and records this format, tile size, architecture and the
    file's sha256."""
    return not _problems(path, tile_size)


def _problems(path: Path, tile_size: int) -> list[str]:
    """Why ``path`` is not a finished compact SAM for this tile size made by this code version."""
    sidecar = sidecar_path(path)
    if not path.is_file() or not sidecar.is_file():
        return [f"{path} or its sidecar {sidecar.name} is missing"]
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as error:
        return [f"unreadable sidecar {sidecar}: {error}"]
    expected = {"format": FORMAT, "tile_size": tile_size,
                "sam_config": json.loads(json.dumps(compact_config(2 * tile_size).to_json())),
                "sha256": sha256_file(path)}
    return [f"{key}: sidecar says {meta.get(key)!r}, expected {value!r}"
            for key, value in expected.items() if meta.get(key) != value]


def find_compact_sam(*, tile_size: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """The finished compact-SAM checkpoint that :func:`ensure_compact_sam` would return, without
    ever pretraining one: the shipped weights, else the cached file; ConfigError when neither is
    there, RuntimeError when a shipped file does not match its sidecar (a broken install)."""
    compact_config(2 * tile_size)  # validates the tile size before any work
    shipped = shipped_checkpoint_path(tile_size)
    if shipped.is_file():
        problems = _problems(shipped, tile_size)
        if problems:
            raise RuntimeError(f"the shipped compact SAM {shipped} does not match its sidecar "
                               f"({'; '.join(problems)}); reinstall the package or rebuild it with "
                               f"python -m sammed_fast.pretrain --out {shipped}")
        return shipped
    path = compact_checkpoint_path(tile_size, cache_dir)
    if not checkpoint_is_vouched_for(path, tile_size):
        raise ConfigError(f"no pretrained compact SAM for tile size {tile_size} at {path}")
    return path


def ensure_compact_sam(
    *, tile_size: int, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
    """The compact-SAM checkpoint for ``tile_size``: the package's shipped weights when it has them
    (checked against their sidecar), else the cached file, pretraining it first if missing or stale.

    Load it with ``build_sam('compact', checkpoint=path, canvas_size=2 * tile_size)``.
    """
    try:
        return find_compact_sam(tile_size=tile_size, cache_dir=cache_dir)
    except ConfigError:
        pass
    path = compact_checkpoint_path(tile_size, cache_dir)
    if progress:
        print(f"No pretrained compact SAM for tile size {tile_size} at {path}; pretraining it once "
              "on procedural shapes (a stand-in for real SAM weights; about an hour on one CPU "
              "thread; the package ships tile size 64).")
    pretrain_compact_sam(config=PretrainConfig(tile_size=tile_size), out=path, progress=progress)
    return path


def format_heldout(heldout: dict) -> str:
    """evaluate_heldout's table as text: one row per family and box set."""
    lines = [f"{'family':<20} {'boxes':<9} {'model':>6} {'box fill':>9} {'ellipse':>8}"]
    for family, scores in heldout.items():
        for name, dice in scores["model"].items():
            base = scores["baselines"][name]
            lines.append(f"{family:<20} {name:<9} {dice:6.3f} {base['box_fill']:9.3f} {base['ellipse_in_box']:8.3f}")
    return "\n".join(lines)
