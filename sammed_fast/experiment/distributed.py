"""Several processes started by torchrun: the process group, who writes, and sharded work.

``torchrun --nproc_per_node=N -m sammed_fast.train ...`` starts N copies of the job with RANK,
WORLD_SIZE and LOCAL_RANK in their environment. :func:`session` joins them into one process group
(NCCL when the run computes on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on the CPU). Without
torchrun (or with WORLD_SIZE 1) there is no process group and every helper here is the identity
of a single process: ``rank() == 0``, ``world_size() == 1``, ``map_sharded`` is a plain loop.

Rules the main job follows on top of these helpers: only rank 0 writes files (:func:`is_main`);
work that rank 0 alone does and whose result the others need goes through :func:`main_only`;
every collective helper (``map_sharded``, ``main_only``, ``barrier``, ...) must be called by all
ranks in the same order.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from typing import Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from sammed_fast.errors import ConfigError

__all__ = ["launched_world_size", "local_rank", "rank", "world_size", "is_main", "init", "shutdown",
           "session", "barrier", "shard_indices", "shard", "all_gather", "broadcast", "main_only",
           "map_sharded", "mean_over_ranks", "all_ranks", "broadcast_buffers", "wrap", "check_in_sync"]

T = TypeVar("T")
R = TypeVar("R")

#: How long a rank waits in a collective. Rank 0 alone writes the synthetic set and pretrains the
#: compact SAM when the cache lacks them (minutes on a CPU) while the others wait.
TIMEOUT = datetime.timedelta(minutes=60)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def launched_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 without it)."""
    return _env_int("WORLD_SIZE", 1)


def local_rank() -> int:
    """LOCAL_RANK set by torchrun: this process's index on its machine (0 without it)."""
    return _env_int("LOCAL_RANK", 0) if launched_world_size() > 1 else 0


def rank() -> int:
    """This process's rank: from the process group, else from torchrun's RANK, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return _env_int("RANK", 0) if launched_world_size() > 1 else 0


def world_size() -> int:
    """Processes in the process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


_this_rank, _this_world_size = rank, world_size  # shard_indices's keyword arguments shadow them


def is_main() -> bool:
    """True on rank 0, the only process that writes files and shows progress."""
    return rank() == 0


def init(device: torch.device) -> bool:
    """Joins torchrun's process group (NCCL for a CUDA ``device``, gloo otherwise); returns False
    and does nothing for a single process or when a process group already exists."""
    if launched_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", timeout=TIMEOUT, device_id=device)
    else:
        dist.init_process_group(backend="gloo", timeout=TIMEOUT)
    return True


def shutdown() -> None:
    """Leaves the process group (nothing when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[None]:
    """:func:`init` for the duration of the block, :func:`shutdown` afterwards if it created the
    group (a group set up by the caller is used and left alone)."""
    created = init(device)
    try:
        yield
    finally:
        if created:
            shutdown()


def barrier() -> None:
    """Waits until every rank has got here."""
    if world_size() > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------- sharding
def shard_indices(n: int, *, strided: bool = False, pad: bool = False, rank: int | None = None,
                  world_size: int | None = None) -> list[int]:
    """The indices of ``n`` items that ``rank`` of ``world_size`` (default: this process's) owns.

    Contiguous (default): balanced consecutive blocks, rank r before rank r+1, so concatenating the
    shards in rank order restores the items' order. Strided: every world_size-th index from rank
    (DistributedSampler's split). pad (strided only): first repeat indices 0, 1, ... until n is a
    multiple of world_size, so every rank gets the same count (DDP needs equal steps per rank).
    """
    r = _this_rank() if rank is None else rank
    w = _this_world_size() if world_size is None else world_size
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank must lie in [0, world_size), got rank {r}, world size {w}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if pad and not strided:
        raise ValueError("pad applies to strided shards only")
    if not strided:
        return list(range(n * r // w, n * (r + 1) // w))
    total = -(-n // w) * w if pad and n else n
    return [i % n for i in range(r, total, w)]


def shard(items: Sequence[T], **kwargs) -> list[T]:
    """This rank's items (see :func:`shard_indices` for the keyword arguments)."""
    return [items[i] for i in shard_indices(len(items), **kwargs)]


# ---------------------------------------------------------------------------------------- collectives
def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if world_size() == 1:
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: T, *, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (the others pass anything, e.g. None)."""
    if world_size() == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def main_only(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 alone (e.g. writing a file); its result on every rank once it has
    finished. An exception on rank 0 is raised on every rank: a ConfigError as itself (the CLI
    shows its message), anything else as a RuntimeError naming it on the other ranks."""
    if world_size() == 1:
        return fn()
    outcome, error = None, None
    if is_main():
        try:
            outcome = ("ok", fn())
        except ConfigError as caught:
            outcome, error = ("config", str(caught)), caught
        except Exception as caught:  # handed to the other ranks, then raised here too
            outcome, error = ("error", f"{type(caught).__name__}: {caught}"), caught
    kind, value = broadcast(outcome)
    if error is not None:
        raise error
    if kind == "config":
        raise ConfigError(value)
    if kind == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


def map_sharded(fn: Callable[[T], R], items: Sequence[T], *, desc: str | None = None,
                unit: str = "it", progress: bool = False) -> list[R]:
    """``[fn(item) for item in items]``, each rank computing its contiguous shard; every rank
    returns the whole list in ``items``' order. Each item is computed exactly as a single process
    computes it, so the results do not depend on the number of ranks. Results must be picklable
    (CPU tensors). A progress bar of rank 0's shard when ``progress``."""
    bar = tqdm(shard(items), desc=desc, unit=unit, disable=not (progress and is_main()), leave=False)
    local = [fn(item) for item in bar]
    if world_size() == 1:
        return local
    return [result for part in all_gather(local) for result in part]


def mean_over_ranks(value: float) -> float:
    """The mean of every rank's ``value`` (the value itself for a single process)."""
    values = all_gather(float(value))
    return values[0] if len(values) == 1 else sum(values) / len(values)


def all_ranks(flag: bool) -> bool:
    """True when ``flag`` is true on every rank."""
    return all(all_gather(bool(flag)))


# ---------------------------------------------------------------------------------------- models
def broadcast_buffers(module: nn.Module) -> None:
    """Copies rank 0's buffers (BatchNorm running statistics) to every rank. DDP broadcasts them
    at the start of each forward, so after an epoch the other ranks hold their own last update."""
    if world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def wrap(module: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel when there are several ranks (the module itself
    otherwise). DDP copies rank 0's parameters and buffers to the others when it is built and
    averages the gradients of every backward over the ranks."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids,
                                   find_unused_parameters=find_unused_parameters)


def check_in_sync(module: nn.Module, name: str) -> None:
    """Raises RuntimeError unless every rank holds bit-identical parameters of ``module``: DDP keeps
    them so, and a module trained outside DDP's forward would drift unnoticed (rank 0 alone saves)."""
    if world_size() == 1:
        return
    digest = hashlib.sha256()
    for parameter in module.parameters():
        digest.update(parameter.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    fingerprints = all_gather(digest.hexdigest())
    if len(set(fingerprints)) > 1:
        raise RuntimeError(f"{name}: the ranks' weights differ after training (DistributedDataParallel "
                           "did not average every gradient)")
