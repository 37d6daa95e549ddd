"""2D slice datasets over loaded volumes, and reassembly of slice predictions into volumes."""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sammed_fast.data.prostate import Volume

__all__ = ["SliceDataset", "VolumeAssembler", "resize_images", "resize_labels", "slice_images",
           "structure_count", "structure_masks"]


def _check_tile(tile_size) -> int:
    if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
        raise ValueError(f"tile_size must be a positive int, got {tile_size!r}")
    return int(tile_size)


def structure_count(volume: Volume) -> int:
    """C, the structures of a volume: its label table's (a ``LabelledVolume``), else 1."""
    labels = getattr(volume, "labels", None)
    return 1 if labels is None else len(labels)


def structure_masks(volume: Volume) -> np.ndarray:
    """uint8 (C, S, H, W) in {0, 1}: one mask per structure (C = 1: the volume's label)."""
    if structure_count(volume) == 1:
        return volume.label[None]
    return volume.masks().astype(np.uint8)


def slice_images(image: np.ndarray) -> torch.Tensor:
    """A volume's image as slices: (S,H,W) -> (S,1,H,W), an RGB (S,H,W,3) -> (S,3,H,W); float32,
    contiguous (a channels-last view would reach the models as such: on torch 2.14's CPU, a
    resnet18_lite backward pass over channels-last 64 px input crashed the process)."""
    slices = torch.from_numpy(np.ascontiguousarray(image)).float()
    return slices.unsqueeze(1) if slices.ndim == 3 else slices.permute(0, 3, 1, 2).contiguous()


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, H, W) float -> (N, 1, *size), bilinear (antialiased when shrinking)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) masks -> (N, C, *size), nearest (pixel-centre aligned), same dtype."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels.float(), size=size, mode="nearest-exact").to(labels.dtype)


class SliceDataset(Dataset):
    """Every slice (or only prostate slices) of `volumes`, resized to tile_size x tile_size.

    Item: dict(image float32 (K, t, t) (K = ``channels``: 1 grey, 3 RGB), label float32 (C, t, t)
    in {0, 1} (C = ``structures``: the volumes' label table, 1 for plain volumes), domain str,
    case_id str, slice_index int). Slices are resized once, at construction; aspect ratio is not
    kept (the common release is square in-plane). `only_foreground` selects slices whose label at
    the original resolution contains prostate.
    """

    def __init__(self, volumes: Sequence[Volume], *, tile_size: int, only_foreground: bool = False):
        self.tile_size = _check_tile(tile_size)
        self.volumes = list(volumes)
        if not self.volumes:
            raise ValueError("volumes is empty")
        size = (self.tile_size, self.tile_size)
        counts = {structure_count(v) for v in self.volumes}
        if len(counts) != 1:
            raise ValueError(f"volumes have different numbers of structures {sorted(counts)}")
        (self.structures,) = counts
        images, labels, keys = [], [], []
        channels = {vol.image.shape[3] if vol.image.ndim == 4 else 1 for vol in self.volumes}
        if len(channels) != 1:
            raise ValueError("volumes mix grey and RGB images")
        (self.channels,) = channels
        for vol in self.volumes:
            if vol.image.shape[:3] != vol.label.shape or vol.image.ndim not in (3, 4):
                raise ValueError(f"{vol.image_path}: image {vol.image.shape} and label "
                                 f"{vol.label.shape} must be equal 3D shapes (RGB: (1, H, W, 3))")
            idx = np.arange(vol.num_slices)
            if only_foreground:
                idx = idx[vol.label.reshape(vol.num_slices, -1).any(axis=1)]
            if idx.size == 0:
                continue
            sel = torch.from_numpy(idx)
            images.append(resize_images(slice_images(vol.image)[sel], size))
            if self.structures == 1:
                labels.append(resize_labels(torch.from_numpy(vol.label)[sel].unsqueeze(1), size))
            else:  # (S, C, H, W): slice-major like the images
                masks = torch.from_numpy(structure_masks(vol)).transpose(0, 1)
                labels.append(resize_labels(masks[sel], size))
            keys.extend((vol.domain, vol.case_id, int(i)) for i in idx)
        t = self.tile_size
        self.images = torch.cat(images) if images else torch.empty(0, self.channels, t, t)
        self.labels = torch.cat(labels) if labels else torch.empty(0, self.structures, t, t, dtype=torch.uint8)
        self.keys: list[tuple[str, str, int]] = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        domain, case_id, slice_index = self.keys[index]
        return {"image": self.images[index], "label": self.labels[index].float(),
                "domain": domain, "case_id": case_id, "slice_index": slice_index}


class VolumeAssembler:
    """Collects per-slice predictions (in any order, in batches) and rebuilds per-volume stacks.

    add(preds (B, 1, t, t) or (B, t, t), domains, case_ids, slice_indices) with the dataset's keys
    (a DataLoader batch gives them as lists / a tensor). volume(key) returns float32 (S, H, W)
    at the volume's original resolution on the predictions' device; mode "bilinear" for
    probabilities or logits (threshold afterwards), "nearest" for masks. A slice never added
    raises unless fill_missing gives its value (e.g. 0 after an only_foreground dataset).
    """

    def __init__(self, volumes: Sequence[Volume], *, fill_missing: float | None = None):
        self.volumes = {v.key: v for v in volumes}
        if len(self.volumes) != len(volumes):
            raise ValueError("volumes contains the same (domain, case_id) twice")
        self.fill_missing = fill_missing
        self._stacks: dict[tuple[str, str], torch.Tensor] = {}
        self._seen: dict[tuple[str, str], torch.Tensor] = {}

    def add(self, preds: torch.Tensor, domains: Iterable[str], case_ids: Iterable[str],
            slice_indices: Iterable[int] | torch.Tensor) -> None:
        if preds.ndim == 4 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.ndim != 3:
            raise ValueError(f"preds must be (B, 1, t, t) or (B, t, t), got {tuple(preds.shape)}")
        if isinstance(slice_indices, torch.Tensor):
            slice_indices = slice_indices.tolist()
        keys = list(zip(domains, case_ids, slice_indices))
        if len(keys) != preds.shape[0]:
            raise ValueError(f"{preds.shape[0]} predictions but {len(keys)} keys")
        for row, (domain, case_id, s) in enumerate(keys):
            key = (domain, case_id)
            if key not in self.volumes:
                raise KeyError(f"prediction for unknown volume {domain}/{case_id}")
            if key not in self._stacks:
                n = self.volumes[key].num_slices
                self._stacks[key] = preds.new_zeros((n, *preds.shape[1:]), dtype=torch.float32)
                self._seen[key] = torch.zeros(n, dtype=torch.bool)
            if not 0 <= s < len(self._seen[key]):
                raise IndexError(f"slice {s} out of range for {domain}/{case_id}")
            if self._seen[key][s]:
                raise ValueError(f"slice {s} of {domain}/{case_id} was added twice")
            self._stacks[key][s] = preds[row].float()
            self._seen[key][s] = True

    def volume(self, key: tuple[str, str], *, mode: str = "bilinear") -> torch.Tensor:
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        vol = self.volumes[key]
        if key not in self._stacks:
            if self.fill_missing is None:
                raise ValueError(f"no predictions were added for {key[0]}/{key[1]}")
            return torch.full(vol.image.shape[:3], float(self.fill_missing))
        stack, seen = self._stacks[key], self._seen[key]
        if not seen.all():
            if self.fill_missing is None:
                missing = torch.nonzero(~seen).flatten().tolist()
                raise ValueError(f"{key[0]}/{key[1]}: slices {missing} have no prediction")
            stack = stack.clone()
            stack[~seen.to(stack.device)] = float(self.fill_missing)
        size = tuple(vol.image.shape[1:3])  # (S,H,W), or (S,H,W,3) RGB
        stack = stack.unsqueeze(1)
        out = resize_images(stack, size) if mode == "bilinear" else resize_labels(stack, size)
        return out[:, 0]

    def items(self, *, mode: str = "bilinear") -> Iterator[tuple[Volume, torch.Tensor]]:
        """(Volume, (S, H, W) prediction) for every volume given to the constructor."""
        for key, vol in self.volumes.items():
            yield vol, self.volume(key, mode=mode)
