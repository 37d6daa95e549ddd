"""Canvas embeddings of the frozen SAM image encoder (``Predictor.embed``), computed once per split
and kept in the predictor's STORED_DTYPE, so decoder epochs and evaluation never rerun the encoder.

Split ``s`` with N slices has ceil(N/4) canvases; canvas c holds slices 4c..4c+3 (TiledSam's
order), so slice i's embedding is row i // 4 and ``TiledSam.decode(..., tile_index=i)`` finds it.
"memory" keeps them for the life of the process; "disk" also stores them in the run folder
(``RunPaths.embeddings``), keyed by the SAM weights and the split's slices, and reuses it on resume.

Under torchrun each rank encodes a share of the encoder calls and every rank gets the whole split
(the same tensor a single process computes); rank 0 alone writes the file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sammed_fast.atomic import save_torch_atomic
from sammed_fast.experiment import distributed
from sammed_fast.experiment.run_data import RunData
from sammed_fast.experiment.run_folder import RunPaths, load_torch
from sammed_fast.method.predictor import Predictor

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """get(split) -> (ceil(N/4), C, h, w) float16 CPU tensor of that split's canvas embeddings
    (``Predictor.embed``).

    paths: the run folder whose cache files to use, or None to keep the embeddings in memory only."""

    def __init__(self, *, predictor: Predictor, data: RunData, weights_id: str, paths: RunPaths | None,
                 progress: bool = True) -> None:
        self.predictor = predictor
        self.data = data
        self.weights_id = weights_id
        self.paths = paths
        self.progress = progress
        self._memory: dict[str, torch.Tensor] = {}

    def _key(self, split: str) -> str:
        sam = self.predictor.sam
        h = hashlib.sha256(self.weights_id.encode())
        h.update(repr((sam.tile_size, sam.grid, sam.mode)).encode())
        h.update(repr(self.data.splits[split].keys).encode())
        return h.hexdigest()

    def _path(self, split: str) -> Path | None:
        return self.paths.embeddings(split) if self.paths is not None else None

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

    def _encode(self, split: str) -> torch.Tensor:
        return self.predictor.embed(self.data.splits[split].slices.images, progress=self.progress,
                                    desc=f"SAM encoder on {split}")
