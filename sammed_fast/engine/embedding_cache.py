"""Canvas embeddings of the frozen SAM image encoder, computed once per split and kept in half
precision, so decoder epochs and evaluation never rerun the encoder.

Split ``s`` with N slices has ceil(N/4) canvases; canvas c holds slices 4c..4c+3 (TiledSam's
order), so slice i's embedding is row i // 4 and ``TiledSam.decode(..., tile_index=i)`` finds it.
"memory" keeps them for the life of the process; "disk" also stores ``cache/embeddings_<s>.pt``
in the run folder, keyed by the SAM weights and the split's slices, and reuses it on resume.

Under torchrun each rank encodes a share of the encoder calls and every rank gets the whole split
(the same tensor a single process computes); rank 0 alone writes the file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sammed_fast.atomic import save_torch_atomic
from sammed_fast.engine import distributed
from sammed_fast.engine.run_data import RunData
from sammed_fast.engine.run_folder import load_torch
from sammed_fast.sam import TiledSam

__all__ = ["EmbeddingCache"]

CACHE_DTYPE = torch.float16


class EmbeddingCache:
    """get(split) -> (ceil(N/4), E, h, w) float16 CPU tensor of that split's canvas embeddings."""

    def __init__(self, *, model: TiledSam, data: RunData, weights_id: str, directory: Path | None,
                 device: torch.device, progress: bool = True) -> None:
        self.model = model
        self.data = data
        self.weights_id = weights_id
        self.directory = Path(directory) if directory is not None else None
        self.device = device
        self.progress = progress
        # Canvases per encoder call: a few on the CPU, more on a GPU.
        self.canvases_per_call = 16 if device.type == "cuda" else 8
        self._memory: dict[str, torch.Tensor] = {}

    def _key(self, split: str) -> str:
        h = hashlib.sha256(self.weights_id.encode())
        h.update(repr((self.model.tile_size, self.model.grid, self.model.mode)).encode())
        h.update(repr(self.data.splits[split].keys).encode())
        return h.hexdigest()

    def _path(self, split: str) -> Path | None:
        return self.directory / f"embeddings_{split}.pt" if self.directory is not None else None

    def get(self, split: str) -> torch.Tensor:
        if split in self._memory:
            return self._memory[split]
        path, key = self._path(split), self._key(split)
        embeddings = self._stored(path, key)
        # Encoding is collective: either every rank reads the file or every rank encodes.
        if not distributed.all_ranks(embeddings is not None):
            embeddings = self._encode(split)
            if path is not None and distributed.is_main():
                save_torch_atomic(path, {"key": key, "embeddings": embeddings})
        self._memory[split] = embeddings
        return embeddings

    @staticmethod
    def _stored(path: Path | None, key: str) -> torch.Tensor | None:
        """The embeddings stored at ``path`` for ``key``, or None."""
        if path is None or not path.is_file():
            return None
        stored = load_torch(path)
        return stored["embeddings"] if stored.get("key") == key else None

    @torch.no_grad()
    def _encode(self, split: str) -> torch.Tensor:
        images = self.data.splits[split].slices.images
        step = self.canvases_per_call * self.model.tiles_per_canvas

        def encode(start: int) -> torch.Tensor:
            return self.model.encode(images[start:start + step].to(self.device)).to(CACHE_DTYPE).cpu()

        parts = distributed.map_sharded(encode, range(0, len(images), step), desc=f"SAM encoder on {split}",
                                        unit="call", progress=self.progress)
        return torch.cat(parts) if parts else self.model.encode(images[:0].to(self.device)).to(CACHE_DTYPE).cpu()
