#!/usr/bin/env bash
# One command for a lent GPU machine: builds sammed_fast with its CUDA kernels from source, runs
# the CUDA tests, compute-sanitizer (memcheck and racecheck; initcheck and synccheck when time is
# left) on benchmarks/sanitizer_case.py, the GPU checks and timings of benchmarks/gpu_quick.py,
# and prints a SUMMARY block last.
#
#   bash benchmarks/device_check.sh        # from anywhere; logs go to $OUT or /tmp/sammed_fast_device_check
#
# Environment: OUT (log folder), DEVICE_CHECK_BUDGET_S (whole-run limit, default 420 s; every step
# runs under `timeout` within what is left), CUDA_HOME (default /usr/local/cuda),
# TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default 16).
set -u
cd "$(dirname "$0")/.." || exit 2
OUT_DIR="${OUT:-/tmp/sammed_fast_device_check}"
mkdir -p "$OUT_DIR"
BUDGET_S="${DEVICE_CHECK_BUDGET_S:-420}"
START_S=$SECONDS
PY="$(command -v python || command -v python3)"
# The package is built in place and imported from the tree (benchmarks/*.py included).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
declare -A STATUS
STEPS=()

remaining() { echo $((BUDGET_S - (SECONDS - START_S))); }

# run_step NAME CAP_S LOG CMD...: CMD under timeout min(CAP_S, time left), output to $OUT_DIR/LOG,
# its last lines echoed; sets STATUS[NAME] and returns CMD's exit status (99 when skipped).
run_step() {
  local name=$1 cap=$2 log=$OUT_DIR/$3
  shift 3
  STEPS+=("$name")
  local left
  left=$(remaining)
  if ((left < 20)); then
    STATUS[$name]="SKIPPED (time budget spent)"
    echo "=== $name skipped: ${left}s left"
    return 99
  fi
  local limit=$((cap < left ? cap : left))
  echo "=== $name (limit ${limit}s, $(date -u +%H:%M:%S))"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  tail -n 15 "$log"
  local took=$((SECONDS - t0))
  case $rc in
    0) STATUS[$name]="PASS (${took}s)" ;;
    124 | 137) STATUS[$name]="FAIL: timed out after ${took}s" ;;
    *) STATUS[$name]="FAIL: exit $rc (${took}s)" ;;
  esac
  return $rc
}

echo "=== device check $(date -u +%Y-%m-%dT%H:%M:%SZ), logs in $OUT_DIR"
nvidia-smi -L | tee "$OUT_DIR/nvidia-smi.txt"
CARD="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"

# ---------------------------------------------------------------- build (in place: tests import the tree)
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
export SAMMED_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
BUILD_OK=0
if run_step build 300 build.log "$PY" setup.py build_ext --inplace --build-temp /tmp/sammed_fast_build_temp; then
  BUILD_OK=1
else
  grep -E "error|Error" "$OUT_DIR/build.log" | head -n 20
  # The setup.py entry point itself may be what failed; pip's editable build also builds in place.
  if run_step build_pip 240 build_pip.log "$PY" -m pip install --no-build-isolation --no-deps -v -e .; then
    BUILD_OK=1
  fi
fi
if ((BUILD_OK)); then
  run_step import 60 import.log "$PY" -c "import json, sammed_fast; info = sammed_fast.build_info(); print(json.dumps(info)); assert info['cuda'], info" || BUILD_OK=0
fi

if ((BUILD_OK)); then
  # ---------------------------------------------------------------- CUDA tests
  shopt -s nullglob
  TEST_FILES=(tests/test_ops*.py)
  ((${#TEST_FILES[@]})) || TEST_FILES=(tests)
  run_step tests 150 tests.log "$PY" -m pytest "${TEST_FILES[@]}" -m cuda -q -rf --tb=short --maxfail=30 \
    -p no:cacheprovider --continue-on-collection-errors
  case $? in
    5) STATUS[tests]="no CUDA tests collected" ;;
    99) ;;
    *) STATUS[tests]="${STATUS[tests]}: $(grep -E ' in [0-9.]+s' "$OUT_DIR/tests.log" | tail -n 1)" ;;
  esac

  # ---------------------------------------------------------------- GPU checks and timings
  run_step gpu_quick 120 gpu_quick.log "$PY" benchmarks/gpu_quick.py --out "$OUT_DIR"

  # ---------------------------------------------------------------- compute-sanitizer
  SANITIZER="$(command -v compute-sanitizer || true)"
  for candidate in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    if [ -z "$SANITIZER" ] && [ -x "$candidate" ]; then SANITIZER=$candidate; fi
  done
  sanitize() {  # sanitize TOOL CAP_S: benchmarks/sanitizer_case.py under compute-sanitizer --tool TOOL
    local tool=$1 cap=$2
    if [ -z "$SANITIZER" ]; then
      STEPS+=("$tool")
      STATUS[$tool]="SKIPPED (compute-sanitizer not found)"
      return
    fi
    # No caching allocator: every tensor is its own allocation, so out-of-bounds accesses and
    # reads of uninitialised memory are seen exactly.
    run_step "$tool" "$cap" "$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" \
      --tool "$tool" --error-exitcode 97 --report-api-errors no "$PY" benchmarks/sanitizer_case.py
    local rc=$?
    if ((rc != 99)); then
      STATUS[$tool]="${STATUS[$tool]}: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT_DIR/$tool.log" | tail -n 1)"
    fi
  }
  sanitize memcheck 120
  sanitize racecheck 90

  # ---------------------------------------------------------------- GPU part of the benchmark suite
  # Needs segment_anything (and kornia for one peer); on a machine without network carry wheels in
  # .whl/ (see benchmarks/RESULTS.md) and they are installed to /tmp/site first.
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  run_step gpu_bench 150 gpu_bench.log "$PY" -m pytest benchmarks -m cuda -q -p no:cacheprovider \
    --benchmark-json "$OUT_DIR/gpu_bench.json"
  if [ -f "$OUT_DIR/gpu_bench.json" ]; then
    "$PY" -m benchmarks.report "$OUT_DIR/gpu_bench.json" >"$OUT_DIR/gpu_bench_table.md" 2>&1
  fi

  sanitize initcheck 90
  sanitize synccheck 90
fi

# ---------------------------------------------------------------- summary (last)
echo
echo "==================== SUMMARY"
echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "card:   ${CARD:-unknown}"
for step in "${STEPS[@]}"; do
  printf '%-10s %s\n' "$step" "${STATUS[$step]}"
done
if [ -f "$OUT_DIR/gpu_quick_summary.txt" ]; then
  cat "$OUT_DIR/gpu_quick_summary.txt"
fi
if [ -f "$OUT_DIR/gpu_bench_table.md" ]; then
  cat "$OUT_DIR/gpu_bench_table.md"
fi
echo "total:  $((SECONDS - START_S))s; logs in $OUT_DIR"
