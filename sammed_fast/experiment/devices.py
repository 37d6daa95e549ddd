"""Which torch device a run computes on, also for each process of a torchrun launch."""
from __future__ import annotations

import torch

from sammed_fast.errors import ConfigError
from sammed_fast.experiment import distributed

__all__ = ["resolve_device"]


def resolve_device(choice: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU -> ConfigError. Under
    torchrun (WORLD_SIZE > 1) a CUDA run gives each rank cuda:LOCAL_RANK."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(choice)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {choice}: no CUDA GPU is available on this machine "
                              "(torch.cuda.is_available() is False); use --device cpu or auto")
        if distributed.launched_world_size() > 1:
            return _rank_gpu(choice)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {choice}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def _rank_gpu(choice: str) -> torch.device:
    """cuda:LOCAL_RANK for this torchrun process, or a ConfigError saying why it cannot be."""
    if choice != "cuda":
        raise ConfigError(f"--device {choice}: under torchrun every process uses the GPU of its "
                          "LOCAL_RANK; pass --device cuda (or auto)")
    local, count = distributed.local_rank(), torch.cuda.device_count()
    if local >= count:
        raise ConfigError(f"torchrun started a process with LOCAL_RANK {local}, but this machine has "
                          f"only {count} CUDA device(s): start at most {count} processes per node "
                          f"(--nproc_per_node={count}) or use --device cpu")
    return torch.device("cuda", local)
