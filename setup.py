"""Build of sammed_fast and its compiled op library sammed_fast._C.

Install with ``pip install --no-build-isolation .`` so the extension is compiled against the torch
already installed (build isolation would fetch another torch). Environment:

* ``SAMMED_FAST_CUDA``: ``auto`` (default: CUDA kernels when nvcc and a CUDA build of torch are
  present), ``1`` (require them), ``0`` (CPU kernels only).
* ``TORCH_CUDA_ARCH_LIST``: GPU targets; default ``9.0`` (H100/H200). Add ``8.0`` for A100s.
* ``CUDA_HOME``: the CUDA toolkit folder; defaults to /usr/local/cuda when that exists.
* ``CXX``/``CC``: the host compilers. On Linux a compiler that can only link libstdc++ statically
  is replaced by one on PATH that links it dynamically (or the build stops): a private static
  libstdc++ inside ``_C`` crashed the process whenever an error message formatted a number.
"""
import os
import shlex
import shutil
import subprocess
import sys
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


def links_shared_libstdcxx(compiler: str) -> bool | None:
    """Whether ``compiler`` finds a shared libstdc++ to link against (None: it cannot be asked)."""
    try:
        answer = subprocess.run([*shlex.split(compiler), "-print-file-name=libstdc++.so"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if answer.returncode != 0:
        return None
    return os.path.isabs(answer.stdout.strip())


def use_compiler_with_shared_libstdcxx() -> None:
    """Makes CXX (and CC) a compiler that links libstdc++ dynamically, or stops the build.

    Seen on a GPU machine: CXX=/opt/gcc/bin/g++ had only libstdc++.a, so _C carried a private
    copy of libstdc++ whose locale was never initialised; formatting an integer into a check's
    message (any bad argument, NaN probabilities) then crashed Python with SIGSEGV.
    """
    if not sys.platform.startswith("linux"):
        return
    cxx = os.environ.get("CXX", "c++")
    if links_shared_libstdcxx(cxx) is not False:
        return
    for name in ("g++", "c++", "/usr/bin/g++", "/usr/bin/c++"):
        candidate = shutil.which(name)
        if candidate and links_shared_libstdcxx(candidate):
            folder, base = os.path.split(candidate)
            c_compiler = os.path.join(folder, base.replace("g++", "gcc").replace("c++", "cc"))
            print(f"sammed_fast: CXX={cxx} can only link libstdc++ statically; building with "
                  f"CXX={candidate} instead", file=sys.stderr)
            os.environ["CXX"] = candidate
            if shutil.which(c_compiler):
                os.environ["CC"] = c_compiler
            return
    raise RuntimeError(
        f"CXX={cxx} finds no shared libstdc++ (it would link a private static copy into "
        "sammed_fast._C, which crashes when an error message formats a number), and no compiler "
        "on PATH does: set CXX and CC to a g++/gcc that links libstdc++ dynamically")


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


use_compiler_with_shared_libstdcxx()
setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
