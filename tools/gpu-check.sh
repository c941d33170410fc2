#!/usr/bin/env bash
# The GPU check, in one call on a lent device machine (which has the CUDA toolkit but not MPI, HDF5,
# Boost or OpenBLAS): builds the CUDA kernels and the GPU tests as a project of their own
# (tests/gpu), runs them, prints one table and writes every log to $OUT (default runs/gpu-check).
# Within 8 minutes. On a machine without a GPU it builds the same and reports the tests skipped (a dry
# run: `tools/gpu-check.sh` here checks that it would build there).
#   OUT=/some/dir tools/gpu-check.sh
#   ARCH=90 tools/gpu-check.sh        # the architectures to build for (default: 80;90)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
ARCH=${ARCH:-80;90}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
log() { echo "gpu-check: $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
command -v nvcc >/dev/null || PATH=/usr/local/cuda/bin:$PATH
command -v nvcc >/dev/null || { log "error: nvcc not found (CUDA toolkit in /usr/local/cuda?)"; exit 1; }
log "$(date -u +%FT%TZ) on $(hostname): $(nvcc --version | tail -1)"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  nvidia-smi -L | tee -a "$OUT/summary.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.csv"
else
  log "no GPU visible (nvidia-smi): a dry run, the tests report skipped"
fi
start=$SECONDS
log "building tests/gpu for sm ${ARCH} into $BUILD"
if ! { cmake -S tests/gpu -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=$ARCH" &&
       cmake --build "$BUILD" -j"$(nproc)"; } >"$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"
  log "error: the build failed (log: $OUT/build.log)"
  exit 1
fi
log "built in $((SECONDS - start)) s"
status=0
timeout 300 "$BUILD/tests/gpu/test_gpu_ops" >"$OUT/test_gpu_ops.log" 2>&1 || status=$?
cat "$OUT/test_gpu_ops.log"
case $status in
  0) log "test_gpu_ops: passed" ;;
  77) log "test_gpu_ops: skipped (no CUDA device)" ;;
  124) log "error: test_gpu_ops timed out"; exit 1 ;;
  *) log "error: test_gpu_ops failed (exit $status)"; exit 1 ;;
esac
log "not yet measured: the model on the GPU (--device cuda, MFU, the PyTorch comparison) needs the CUDA GEMM, attention and log-prob ops"
log "done in $((SECONDS - start)) s; logs in $OUT"
