"""Full-resolution image features for SAM's mask decoder (the compact SAM's finer boundaries).

SAM's decoder draws every mask pixel from the token it lies in (two non-overlapping 2x transposed
convolutions), so a boundary inside a token must be encoded in that token. The compact SAM's
tokens are 4 px wide and its objects 7-40 px, so that costs about a pixel of boundary, 10-20
points of Dice on small objects. As HQ-SAM adds early, high-resolution features to the upscaled
embedding, ``PixelFeatureEncoder`` computes a few channels from the canvas itself at the decoder's
output resolution; the decoder adds them to its upscaled embedding (before that embedding's last
activation, ahead of the per-box hypernetwork product), so a mask boundary can follow the image's
edges pixel by pixel.

They belong to the image side: computed once per canvas with the image encoder (frozen and cached
with it when the decoder is fine-tuned), packed into the embedding's channels by ``pack`` (pixel
unshuffle to the token grid) and unpacked per box by ``unpack``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from torch import nn

PIXEL_ENCODER_KEY = "pixel_encoder"  # attribute of the Sam, prefix of its state dict keys
UPSCALE = 4  # SAM's decoder output is 4x its token grid
GAIN_INIT = 0.1  # see PixelFeatureEncoder


class PixelFeatureEncoder(nn.Module):
    """(N,3,S,S) SAM-normalised canvases -> (N,channels,out_size,out_size) features.

    Four 3x3 convolutions (receptive field 9 px at the output resolution), a LayerNorm over the
    channels, then a per-channel gain starting at GAIN_INIT; the canvas is area-resized to
    out_size first when the decoder's output is coarser than the canvas (canvases above 128 px).
    The gain starts small but not at zero: at zero, the random convolutions get no gradient and
    the gain none that points anywhere, so the branch never learns (measured: |gain| < 0.01 after
    600 steps). Pretraining at twice the default learning rate on tiny tiles stalled with this
    branch (docs/standin.md).
    """

    def __init__(self, *, channels: int, out_size: int, hidden: int = 32, depth: int = 4) -> None:
        super().__init__()
        self.out_size = out_size
        widths = [3] + [hidden] * (depth - 1)
        layers: list[nn.Module] = []
        for inputs, outputs in zip(widths, widths[1:]):
            layers += [nn.Conv2d(inputs, outputs, 3, padding=1), nn.GELU()]
        self.layers = nn.Sequential(*layers, nn.Conv2d(widths[-1], channels, 3, padding=1), LayerNorm2d(channels))
        self.gain = nn.Parameter(torch.full((channels, 1, 1), GAIN_INIT))

    @property
    def channels(self) -> int:
        return self.gain.shape[0]

    def forward(self, canvases: torch.Tensor) -> torch.Tensor:
        if canvases.shape[-1] != self.out_size:
            canvases = F.interpolate(canvases, size=(self.out_size, self.out_size), mode="area")
        return self.gain * self.layers(canvases)


def pack(embeddings: torch.Tensor, pixel_features: torch.Tensor) -> torch.Tensor:
    """(N,E,h,w) token embeddings and (N,C,4h,4w) pixel features -> (N,E+16C,h,w)."""
    return torch.cat([embeddings, F.pixel_unshuffle(pixel_features, UPSCALE)], dim=1)


def unpack(packed: torch.Tensor, embed_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of ``pack``: (N,E+16C,h,w) -> (N,E,h,w), (N,C,4h,4w); (N,E,h,w) -> itself, None."""
    if packed.shape[1] == embed_dim:
        return packed, None
    return packed[:, :embed_dim], F.pixel_shuffle(packed[:, embed_dim:], UPSCALE)
