#!/usr/bin/env bash
# The shortest useful GPU check (about 3 minutes): build, the CUDA op tests, GPU timings.
# benchmarks/device_check.sh is the full one (adds compute-sanitizer); use this when little
# device time is left.
set -u
cd "$(dirname "$0")/.." || exit 2
OUT_DIR="${OUT:-/tmp/sammed_fast_device_quick}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 SAMMED_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
[ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ] && export CUDA_HOME=/usr/local/cuda
nvidia-smi -L
t0=$SECONDS
timeout 110 python setup.py build_ext --inplace --build-temp /tmp/sammed_fast_bt >"$OUT_DIR/build.log" 2>&1
echo "build rc=$? in $((SECONDS - t0))s"; grep -E "error" "$OUT_DIR/build.log" | head -5
t0=$SECONDS
timeout 60 python -m pytest tests/test_ops_components.py tests/test_ops_tiles.py -m cuda -q -x -p no:cacheprovider \
  >"$OUT_DIR/tests.log" 2>&1
echo "cuda tests rc=$? in $((SECONDS - t0))s"; grep -E "passed|failed|Error|assert" "$OUT_DIR/tests.log" | tail -8
timeout 45 python benchmarks/gpu_quick.py --out "$OUT_DIR" >"$OUT_DIR/gpu_quick.log" 2>&1
echo "gpu_quick rc=$?"; tail -25 "$OUT_DIR/gpu_quick.log"
