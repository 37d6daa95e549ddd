"""Registry of SAM variants: the published vit_b / vit_l / vit_h and a compact SAM for CPUs.

Every variant is an ordinary ``segment_anything.modeling.Sam`` built from segment_anything's own
classes, so the published variants' state dicts are interchangeable with that package; the compact
SAM adds one submodule, ``pixel_encoder`` (``models.pixel_features``). Checkpoints are plain state dicts
loaded with ``torch.load(weights_only=True)``; before any model is built the checkpoint's key shapes
are checked against the requested variant, so a wrong file gets an error naming what it looks like.
"""
from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path
from typing import Mapping

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from sammed_fast.files import load_torch_file
from sammed_fast.models.pixel_features import PIXEL_ENCODER_KEY, PixelFeatureEncoder
from sammed_fast.ops import SAM_PIXEL_MEAN, SAM_PIXEL_STD

SAM_CANVAS = 1024  # input size of the published models


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Architecture of one SAM variant (segment_anything's constructor arguments)."""

    canvas_size: int  # encoder input, pixels (square)
    patch_size: int
    embed_dim: int  # ViT width
    depth: int
    num_heads: int
    window_size: int  # windowed-attention blocks; 0 would make every block global
    global_attn_indexes: tuple[int, ...]
    prompt_dim: int = 256  # encoder out_chans = prompt encoder = mask decoder width E
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    # Full-resolution image features added to the decoder's upscaled embedding (see
    # models.pixel_features); the published variants have none.
    pixel_features: bool = False

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (canvas_size / patch_size)."""
        return self.canvas_size // self.patch_size

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


PUBLISHED = {
    "vit_b": SamConfig(SAM_CANVAS, 16, 768, 12, 12, 14, (2, 5, 8, 11)),
    "vit_l": SamConfig(SAM_CANVAS, 16, 1024, 24, 16, 14, (5, 11, 17, 23)),
    "vit_h": SamConfig(SAM_CANVAS, 16, 1280, 32, 16, 14, (7, 15, 23, 31)),
}
VARIANTS = (*PUBLISHED, "compact")

# The compact SAM sees a tile through up to 16x16 tokens: its embedding grid is canvas / 4 (4 px
# patches) up to COMPACT_GRID tokens per side, so its cost stops growing at canvas 128 (tile 64).
# Every block attends within windows of exactly one tile (grid / 2 tokens) and none globally, so a
# tile's tokens depend on the other tiles of its canvas only through the neck's 3x3 convolution
# at the seams (the tokens next to the seam).
COMPACT_GRID = 32
COMPACT_MIN_PATCH = 4


def compact_grid(canvas_size: int) -> int:
    """Tokens per side of the compact SAM's embedding for a canvas (see above)."""
    return min(COMPACT_GRID, canvas_size // COMPACT_MIN_PATCH)


def compact_config(canvas_size: int) -> SamConfig:
    """The compact SAM for a square canvas (2 x tile size in the 2x2 merge); see module docs.

    Valid canvases: multiples of 16 from 32 to 128, then multiples of COMPACT_GRID (so a tile
    is an even number of tokens wide)."""
    if isinstance(canvas_size, bool) or not isinstance(canvas_size, int):
        raise TypeError(f"canvas_size must be an int, got {type(canvas_size).__name__}")
    grid = compact_grid(canvas_size)
    if canvas_size < 32 or canvas_size % 16 or canvas_size % grid:
        raise ValueError(
            f"canvas_size must be at least 32 and a multiple of 16 up to 128, of {COMPACT_GRID} "
            f"beyond, for the compact SAM (tile size a multiple of 8 up to 64, of "
            f"{COMPACT_GRID // 2} beyond), got {canvas_size}"
        )
    return SamConfig(
        canvas_size=canvas_size,
        patch_size=canvas_size // grid,
        embed_dim=96,
        depth=4,
        num_heads=4,
        window_size=grid // 2,
        global_attn_indexes=(),
        prompt_dim=64,
        decoder_depth=2,
        decoder_heads=4,
        decoder_mlp_dim=256,
        iou_head_hidden_dim=64,
        mask_in_chans=16,
        pixel_features=True,
    )


def config_for(variant: str, canvas_size: int | None = None) -> SamConfig:
    """The architecture of ``variant``; ``canvas_size`` is required for 'compact' only."""
    if variant in PUBLISHED:
        if canvas_size is not None and canvas_size != SAM_CANVAS:
            raise ValueError(
                f"SAM variant {variant!r} takes a fixed {SAM_CANVAS}x{SAM_CANVAS} input, got "
                f"canvas_size={canvas_size}; choose a tile size of {SAM_CANVAS // 2} for the 2x2 merge"
            )
        return PUBLISHED[variant]
    if variant == "compact":
        if canvas_size is None:
            raise ValueError("SAM variant 'compact' needs canvas_size (2 x tile size)")
        return compact_config(canvas_size)
    raise ValueError(f"unknown SAM variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def sam_from_config(config: SamConfig) -> Sam:
    """A randomly initialised Sam with this architecture (eval mode)."""
    grid = config.embedding_size
    encoder = ImageEncoderViT(
        img_size=config.canvas_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        qkv_bias=True,
        use_rel_pos=True,
        window_size=config.window_size,
        global_attn_indexes=config.global_attn_indexes,
        out_chans=config.prompt_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=config.prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(config.canvas_size, config.canvas_size),
        mask_in_chans=config.mask_in_chans,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=config.prompt_dim,
            num_heads=config.decoder_heads,
            mlp_dim=config.decoder_mlp_dim,
        ),
        transformer_dim=config.prompt_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=config.iou_head_hidden_dim,
    )
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=prompt_encoder,
        mask_decoder=decoder,
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    if config.pixel_features:
        sam.pixel_encoder = PixelFeatureEncoder(channels=config.prompt_dim // 8, out_size=4 * grid)
    return sam.eval()


def describe_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """What SAM a state dict looks like, from its key shapes: 'vit_b', 'compact (canvas 128)', ..."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    pos = state.get("image_encoder.pos_embed")
    if not isinstance(patch, torch.Tensor) or patch.ndim != 4 or not isinstance(pos, torch.Tensor):
        return "not a SAM state dict (no image_encoder.patch_embed / pos_embed)"
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    canvas = int(pos.shape[1]) * patch_size
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, config in PUBLISHED.items():
        if (width, depth, canvas) == (config.embed_dim, config.depth, config.canvas_size):
            return name
    try:
        compact = compact_config(canvas)
    except ValueError:
        compact = None
    if compact is not None and (width, depth, patch_size) == (compact.embed_dim, compact.depth, compact.patch_size):
        has_pixel_features = any(key.startswith(PIXEL_ENCODER_KEY + ".") for key in state)
        if has_pixel_features != compact.pixel_features:
            return (f"a compact SAM of another sammed_fast version (canvas {canvas}, "
                    f"{'with' if has_pixel_features else 'without'} pixel features; pretrain it "
                    f"anew with sammed-fast pretrain)")
        return f"compact (canvas {canvas})"
    return f"an unknown SAM (encoder width {width}, depth {depth}, canvas {canvas})"


def expected_description(variant: str, config: SamConfig) -> str:
    """What describe_state_dict says for a checkpoint that fits ``variant`` with ``config``."""
    return variant if variant in PUBLISHED else f"compact (canvas {config.canvas_size})"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A SAM checkpoint as a plain state dict, loaded safely (weights_only=True) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path}")
    state = load_torch_file(path, message="cannot read SAM checkpoint {path} as a state dict with "
                                          "weights_only=True: {error}")
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"SAM checkpoint {path} is not a plain state dict (str -> tensor), got "
            f"{type(state).__name__}; save it with torch.save(model.state_dict(), path)"
        )
    return dict(state)


def build_sam(
    variant: str, *, checkpoint: str | os.PathLike | None = None, canvas_size: int | None = None
) -> Sam:
    """Builds a SAM variant ('vit_b', 'vit_l', 'vit_h', 'compact'), in eval mode on the CPU.

    canvas_size: encoder input side in pixels; fixed at 1024 for the published variants, required
    for 'compact' (2 x tile size). checkpoint: a state dict file of the same variant; without it
    the weights are random (the published variants are useless without their checkpoint).
    """
    config = config_for(variant, canvas_size)
    state = None
    if checkpoint is not None:
        state = load_state_dict(checkpoint)
        found, wanted = describe_state_dict(state), expected_description(variant, config)
        if found != wanted:
            raise ValueError(
                f"SAM checkpoint {checkpoint} looks like {found}, but SAM variant {wanted} was "
                "requested; pass the matching --sam variant / tile size, or the right file"
            )
    sam = sam_from_config(config)
    if state is not None:
        try:
            sam.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"SAM checkpoint {checkpoint} does not fit {variant}: {error}") from error
    return sam

