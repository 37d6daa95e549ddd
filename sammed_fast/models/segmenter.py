"""Registry of coarse segmenters (stage 1): ResNet-based networks, (B,1,H,W) slices -> logits.

Inputs are z-scored single-channel slices (B,1,H,W); outputs are logits (B,C,H,W) at the input size,
one channel per structure (``structures`` C, default 1; structures may overlap: each channel is its
own sigmoid).
Nothing is downloaded: networks start from scratch unless a local weights file is given, which may
be a state dict of the segmenter itself or, where the architecture allows, torchvision's own
checkpoints (an ImageNet ResNet backbone, or DeepLabV3-ResNet50 with another number of classes).

| name | encoder | decoder | use |
|---|---|---|---|
| deeplabv3_resnet50 | torchvision ResNet-50, output stride 8 | DeepLabV3 ASPP head | the paper's network |
| resnet18_unet | torchvision ResNet-18 | light U-Net | GPU, ImageNet-initialisable |
| resnet18_lite | ResNet-18 layout (2 basic blocks per stage) at 1/4 width | light U-Net | CPU default |
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock
from torchvision.models.segmentation import deeplabv3_resnet50

from sammed_fast.files import load_torch_file

DEFAULT_SEGMENTER = "resnet18_lite"


class Segmenter(nn.Module):
    """Base class: checks the input and maps (B,K,H,W) z-scored slices (K = ``in_channels``: 1
    grey, 3 RGB) to logits (B,C,H,W), C = ``structures``."""

    structures: int = 1
    in_channels: int = 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"images must be (B,{self.in_channels},H,W) slices, got {tuple(images.shape)}")
        return self.logits(images)

    def as_rgb(self, images: torch.Tensor) -> torch.Tensor:
        """(B,K,H,W) -> (B,3,H,W) for an ImageNet-shaped encoder: grey repeated, RGB as it is."""
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def foreign_formats(self) -> list[tuple[str, nn.Module, tuple[str, ...]]]:
        """Other checkpoints this network accepts: (description, submodule they load into,
        key prefixes of the submodule that may stay at their initial values)."""
        return []


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNetDecoder(nn.Module):
    """Light U-Net decoder: from the coarsest feature up, upsample x2 (bilinear), concatenate the
    next finer skip, one 3x3 conv-BN-ReLU; then a 1x1 head. features are ordered fine to coarse."""

    def __init__(self, *, channels: list[int], structures: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            conv_bn_relu(coarse + fine, fine) for fine, coarse in zip(channels[:-1], channels[1:])
        )
        self.head = nn.Conv2d(channels[0], structures, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for block, skip in zip(reversed(self.blocks), reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


class ResNet18Lite(Segmenter):
    """ResNet-18 layout at 1/4 width (16..128 channels) with a full-resolution stem; ~0.8M params."""

    def __init__(self, *, width: int = 16, structures: int = 1, in_channels: int = 1) -> None:
        super().__init__()
        self.structures, self.in_channels = structures, in_channels
        widths = [width // 2, width, 2 * width, 4 * width, 8 * width]
        self.stem = conv_bn_relu(in_channels, widths[0])
        stages = []
        for in_ch, out_ch in zip(widths[:-1], widths[1:]):
            downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=2, bias=False), nn.BatchNorm2d(out_ch))
            stages.append(nn.Sequential(BasicBlock(in_ch, out_ch, 2, downsample), BasicBlock(out_ch, out_ch)))
        self.stages = nn.ModuleList(stages)
        self.decoder = UNetDecoder(channels=widths, structures=structures)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        features = [self.stem(images)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return self.decoder(features)


class ResNet18UNet(Segmenter):
    """torchvision ResNet-18 encoder (gray repeated to RGB) with the light U-Net decoder."""

    def __init__(self, *, structures: int = 1, in_channels: int = 1) -> None:
        super().__init__()
        self.structures, self.in_channels = structures, in_channels
        self.encoder = resnet18(weights=None)
        self.encoder.fc = nn.Identity()  # unused; keeps ImageNet checkpoints' keys loadable
        self.decoder = UNetDecoder(channels=[64, 64, 128, 256, 512], structures=structures)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        e = self.encoder
        x = e.relu(e.bn1(e.conv1(self.as_rgb(images))))
        features = [x]
        x = e.maxpool(x)
        for layer in (e.layer1, e.layer2, e.layer3, e.layer4):
            x = layer(x)
            features.append(x)
        out = self.decoder(features)
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def foreign_formats(self):
        return [("an ImageNet ResNet-18 state dict (torchvision)", self.encoder, ())]


class DeepLabV3ResNet50(Segmenter):
    """torchvision DeepLabV3-ResNet50 (output stride 8), one output channel, gray repeated to RGB."""

    def __init__(self, *, structures: int = 1, in_channels: int = 1) -> None:
        super().__init__()
        self.structures, self.in_channels = structures, in_channels
        self.net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=structures,
                                      aux_loss=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.as_rgb(images))["out"]

    def foreign_formats(self):
        return [
            # The final 1x1 classifier has another number of classes there; it keeps its init here.
            ("a torchvision DeepLabV3-ResNet50 state dict", self.net, ("classifier.4.",)),
            ("an ImageNet ResNet-50 state dict (torchvision)", self.net.backbone, ()),
        ]


SEGMENTERS: dict[str, Callable[..., Segmenter]] = {
    "deeplabv3_resnet50": DeepLabV3ResNet50,
    "resnet18_unet": ResNet18UNet,
    "resnet18_lite": ResNet18Lite,
}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"segmenter weights file not found: {path}")
    state = load_torch_file(path, message="cannot read segmenter weights {path} with weights_only=True: {error}")
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"segmenter weights {path} are not a plain state dict (str -> tensor)")
    return dict(state)


def _fits(module: nn.Module, state: Mapping[str, torch.Tensor], may_miss: tuple[str, ...]) -> dict | None:
    """The subset of ``state`` that loads into ``module``, if it covers all of the module's keys
    (except those under ``may_miss``) with matching shapes; else None."""
    usable = {}
    for key, value in module.state_dict().items():
        found = state.get(key)
        if found is not None and found.shape == value.shape:
            usable[key] = found
        elif not key.startswith(may_miss):
            return None
    return usable


def load_segmenter_weights(model: Segmenter, path: str | os.PathLike) -> str:
    """Loads a local weights file into ``model``; returns what it was. Raises ValueError naming the
    file when it fits neither the segmenter itself nor any checkpoint format it accepts."""
    path = Path(path)
    state = _read_state_dict(path)
    own = _fits(model, state, ())
    if own is not None and len(own) == len(state):
        model.load_state_dict(own)
        return "a state dict of this segmenter"
    for description, target, may_miss in model.foreign_formats():
        usable = _fits(target, state, may_miss)
        if usable is not None:
            target.load_state_dict(usable, strict=False)
            return description
    expected = "; ".join(["a state dict of this segmenter"] + [d for d, _, _ in model.foreign_formats()])
    mismatched = sorted(set(model.state_dict()) ^ set(state))[:3]
    raise ValueError(
        f"segmenter weights {path} do not fit {type(model).__name__}: expected {expected} "
        f"(first differing keys: {mismatched})"
    )


def build_segmenter(name: str = DEFAULT_SEGMENTER, *, weights: str | os.PathLike | None = None,
                    structures: int = 1, in_channels: int = 1) -> Segmenter:
    """A coarse segmenter by registry name with one output channel per structure, taking
    ``in_channels`` image channels (1 grey, 3 RGB), randomly initialised or loaded from a local
    file."""
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}")
    if isinstance(structures, bool) or not isinstance(structures, int) or structures < 1:
        raise ValueError(f"structures must be a positive int, got {structures!r}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels!r}")
    model = SEGMENTERS[name](structures=structures, in_channels=in_channels)
    if weights is not None:
        load_segmenter_weights(model, weights)
    return model
