"""Configuration of the benchmark suite (pytest-benchmark); run it explicitly: ``pytest benchmarks``.

The default ``pytest`` run never collects this folder (pyproject's testpaths is ["tests"]).

* Quick mode, ``SAMMED_FAST_BENCH_QUICK=1`` (CI runs it once so the suite cannot rot): the
  correctness checks stay on, every case is timed for one round only, and cases marked ``full``
  (every size but the smallest) are deselected. ``--benchmark-disable`` also works: each case then
  runs its correctness check and nothing is timed.
* CUDA cases are marked ``cuda`` and skipped on a machine without a GPU.
* ``SAMMED_FAST_BENCH_THREADS=N`` sets the CPU threads of PyTorch and OpenCV (default: their own
  defaults, all cores). On a machine shared with other jobs, 1 avoids the stalls of threads
  waiting at barriers for a descheduled sibling; say so next to any figure measured that way.
* Each case goes through the ``bench`` fixture: one untimed call whose output is checked (the
  suite never times a wrong answer), then a number of rounds sized from that call's duration so
  that the whole suite fits in 10 minutes on 2 CPU cores. CUDA cases synchronise inside the timed
  function and record ``torch.cuda.max_memory_allocated`` during the checked call.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import pytest
import torch

import sammed_fast
from sammed_fast._extension import DISPATCH_KEYS, OPS

QUICK = os.environ.get("SAMMED_FAST_BENCH_QUICK", "").strip().lower() in ("1", "true", "yes")
HAS_CUDA = torch.cuda.is_available()
THREADS = os.environ.get("SAMMED_FAST_BENCH_THREADS", "").strip()
OP_NAMES = OPS  # the package's one list of op names

TARGET_SECONDS = 1.5  # timed seconds per case (after the checked call), at most MAX_ROUNDS rounds
MAX_ROUNDS = 100


def compiled_kernel(op: str, device: str) -> bool:
    """Whether ``sammed_fast::op`` runs a compiled kernel on ``device`` (else the PyTorch fallback)."""
    if not sammed_fast.build_info()["compiled"]:
        return False
    key = DISPATCH_KEYS[torch.device(device).type]
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"sammed_fast::{op}", key)


def implementation(op: str, device: str) -> str:
    return "compiled" if compiled_kernel(op, device) else "reference fallback"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "full: a larger size, deselected in quick mode")
    if THREADS:
        if not THREADS.isdigit() or int(THREADS) < 1:
            raise pytest.UsageError(f"SAMMED_FAST_BENCH_THREADS must be a positive int, got {THREADS!r}")
        torch.set_num_threads(int(THREADS))
        try:
            import cv2

            cv2.setNumThreads(int(THREADS))
        except ImportError:
            pass


def pytest_report_header(config: pytest.Config) -> list[str]:
    info = sammed_fast.build_info()
    kernels = ", ".join(f"{op}={'yes' if compiled_kernel(op, 'cpu') else 'no'}" for op in OP_NAMES)
    lines = [
        f"sammed_fast benchmarks: {'QUICK mode (1 round, smallest sizes)' if QUICK else 'full mode'}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        f"{' (SAMMED_FAST_BENCH_THREADS)' if THREADS else ''}",
        f"sammed_fast build: {info}",
        f"compiled CPU kernels: {kernels}",
    ]
    if HAS_CUDA:
        cuda = ", ".join(f"{op}={'yes' if compiled_kernel(op, 'cuda') else 'no'}" for op in OP_NAMES)
        lines.append(f"GPU: {torch.cuda.get_device_name()}; compiled CUDA kernels: {cuda}")
    else:
        lines.append("GPU: none (CUDA cases are skipped)")
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    kept, dropped = [], []
    for item in items:
        if QUICK and item.get_closest_marker("full"):
            dropped.append(item)
            continue
        if item.get_closest_marker("cuda") and not HAS_CUDA:
            item.add_marker(no_gpu)
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Bench:
    """Runs one benchmark case: checked call, then timed rounds (see module docs)."""

    synchronize = staticmethod(synchronize)
    implementation = staticmethod(implementation)

    def __init__(self, benchmark) -> None:
        self.benchmark = benchmark

    def __call__(
        self,
        fn: Callable[[], Any],
        *,
        check: Callable[[Any], None],
        group: str,
        role: str,
        device: str = "cpu",
        min_rounds: int = 1,
        **extra_info: Any,
    ) -> Any:
        """Times ``fn`` (which must synchronise a CUDA device itself) after ``check(fn())`` passed.

        role: "ours", "peer" (the report's best peer is the fastest of these), "floor" (a lower
        bound such as a plain copy), or "info". min_rounds: rounds outside quick mode even when
        one call takes longer than the per-case budget. extra_info goes to the JSON for the
        report. Returns the checked call's output.
        """
        if role not in ("ours", "peer", "floor", "info"):
            raise ValueError(f"role must be ours, peer, floor or info, got {role!r}")
        benchmark = self.benchmark
        benchmark.group = group
        benchmark.extra_info.update(role=role, device=str(device), threads=torch.get_num_threads(), **extra_info)
        cuda = torch.device(device).type == "cuda"
        if cuda:
            synchronize(device)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        result = fn()
        first = time.perf_counter() - start
        if cuda:
            peak = torch.cuda.max_memory_allocated()
            # Above what was held before the call (inputs, model), and in total.
            benchmark.extra_info["peak_mem_mb"] = round((peak - base) / 2**20, 1)
            benchmark.extra_info["peak_mem_total_mb"] = round(peak / 2**20, 1)
        check(result)
        benchmark.extra_info["checked_call_s"] = round(first, 6)
        if benchmark.disabled:
            benchmark(lambda: result)  # marks the fixture used; times nothing
            return result
        rounds = 1 if QUICK else max(min_rounds, min(MAX_ROUNDS, int(TARGET_SECONDS / max(first, 1e-6))))
        # A very fast case gets a few more warm-up calls (caches, allocator) before the rounds.
        warmup = 0 if QUICK or first > 0.05 else 2
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup)
        return result


@pytest.fixture
def bench(benchmark) -> Bench:
    return Bench(benchmark)


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Benchmarks must not leave autograd switched off or threads changed for the next case."""
    threads = torch.get_num_threads()
    grad = torch.is_grad_enabled()
    yield
    torch.set_num_threads(threads)
    torch.set_grad_enabled(grad)
