"""Build of sammed_fast and its compiled op library sammed_fast._C.

Install with ``pip install --no-build-isolation .`` so the extension is compiled against the torch
already installed (build isolation would fetch another torch). Environment:

* ``SAMMED_FAST_CUDA``: ``auto`` (default: CUDA kernels when nvcc and a CUDA build of torch are
  present), ``1`` (require them), ``0`` (CPU kernels only).
* ``TORCH_CUDA_ARCH_LIST``: GPU targets; default ``9.0`` (H100/H200). Add ``8.0`` for A100s.
* ``CUDA_HOME``: the CUDA toolkit folder; defaults to /usr/local/cuda when that exists.
"""
import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
DEFAULT_CUDA_ARCHS = "9.0"

if "CUDA_HOME" not in os.environ and Path("/usr/local/cuda/bin/nvcc").exists():
    # A wrapper script named nvcc on PATH makes torch guess the toolkit folder wrong.
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)

import torch  # noqa: E402  (must see the environment set above)
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def cuda_requested() -> bool:
    flag = os.environ.get("SAMMED_FAST_CUDA", "auto").strip().lower()
    available = CUDA_HOME is not None and torch.version.cuda is not None
    if flag in ("0", "off", "false", "no"):
        return False
    if flag in ("1", "on", "true", "yes"):
        if not available:
            raise RuntimeError(
                "SAMMED_FAST_CUDA=1 but no CUDA toolkit (set CUDA_HOME) or torch is a CPU build"
            )
        return True
    if flag != "auto":
        raise RuntimeError(f"SAMMED_FAST_CUDA must be auto, 0 or 1, got {flag!r}")
    return available


def extension():
    sources = ["csrc/ops.cpp", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cpu").glob("*.cpp"))]
    cxx = ["-O3"]  # the C++ standard comes from torch (C++20 for torch >= 2.10)
    macros = []
    if not cuda_requested():
        return CppExtension("sammed_fast._C", sources, extra_compile_args={"cxx": cxx},
                            define_macros=macros)
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    macros += [("SAMMED_FAST_WITH_CUDA", None), ("SAMMED_FAST_CUDA_ARCHS", f'"{archs}"')]
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cuda").glob("*.cpp"))
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cuda").glob("*.cu"))
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    return CUDAExtension("sammed_fast._C", sources, define_macros=macros,
                         extra_compile_args={"cxx": cxx, "nvcc": nvcc})


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
