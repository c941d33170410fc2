#!/usr/bin/env bash
# The GPU check, in one call on a lent device machine (which has the CUDA toolkit and PyTorch but not
# MPI, HDF5, Boost or OpenBLAS): builds the CUDA kernels, the model and the GPU tests and benchmark as a
# project of their own (tests/gpu), runs
#   1. test_gpu_ops     every CUDA op against the CPU op;
#   2. test_gpu_model   the model on CUDA against the CPU (tiny and bench-28m shapes: log-probs, every
#                       gradient, ghost dots, fp32 and bf16, a rerun bit for bit, 50 DPO and 50
#                       weighted steps' loss curves);
#      test_gpu_generate  generation with the KV cache on CUDA against the CPU (tiny shape: greedy
#                       tokens, every step's logits, batch invariance and a rerun bit for bit);
#   3. bench_gpu_model  fwd+bwd, DPO and MetaPO steps of the 1.3B shape (configs/presets/gpu-1.3b.ini)
#                       on packed 2048-token sequences: tokens/s, TFLOP/s, MFU;
#   4. tools/bench_torch.py, the same shape in PyTorch + transformers (bf16 autocast, SDPA), same run;
#   5. PART=cli: the real metapo binary, carried in .gpu-runtime/ (tools/gpu-runtime.sh: metapo with its
#      MPI, HDF5, Boost and OpenBLAS libraries), with --device cuda against --device cpu on the tiny
#      preset: sft, precompute-ref, train DPO and MetaPO (20 steps), a resume on the GPU bit-identical
#      to the uninterrupted run, bf16, eval and score (tools/gpu-check-cli.sh: the steps, the
#      tolerances and their reasons). DEVICE=cpu runs the other side on the CPU too, every difference
#      exactly zero: the harness, checked without a GPU. Its logs: $OUT/cli.log, $OUT/cli-runs.tar.gz.
# then prints one table and writes every log to $OUT (default runs/gpu-check). On a machine without a
# GPU it builds the same and reports the GPU steps skipped (a dry run: `tools/gpu-check.sh` here checks
# that it would build there).
#
# A device command may run 10 minutes, so the check comes in parts, each well inside that: first
# `PART=tests` (the build and 1-2, about 6 minutes), then, on the same warm machine whose build folder
# is kept, `PART=bench` (3-4, about 5 minutes); `PART=cli` (5: no build, a few minutes) whenever
# .gpu-runtime/ was carried. PART=all (the default) runs all three in one go.
#   OUT=/some/dir PART=tests tools/gpu-check.sh
#   ARCH=90 tools/gpu-check.sh        # the architectures to build for (default: the GPU's own, which
#                                     # halves the CUDA build on the device; 80;90 without a GPU)
#   SANITIZE=1 tools/gpu-check.sh     # also compute-sanitizer memcheck on test_gpu_ops (tests part)
#   BATCH=4 SEQ=2048 tools/gpu-check.sh  # the benchmark's sequences per step and their length
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
ARCH=${ARCH:-}
BUILD=${BUILD:-build-gpu}
BATCH=${BATCH:-4}
SEQ=${SEQ:-2048}
PART=${PART:-all}
DEVICE=${DEVICE:-cuda}
case $PART in all|tests|bench|cli) ;; *) echo "gpu-check: PART=$PART: all, tests, bench or cli" >&2; exit 2 ;; esac
case $DEVICE in cuda|cpu) ;; *) echo "gpu-check: DEVICE=$DEVICE: cuda or cpu (PART=cli)" >&2; exit 2 ;; esac
mkdir -p "$OUT"
: > "$OUT/summary.txt"
log() { echo "gpu-check: $*" | tee -a "$OUT/summary.txt"; }
command -v nvcc >/dev/null || PATH=/usr/local/cuda/bin:$PATH
command -v nvcc >/dev/null || { log "error: nvcc not found (CUDA toolkit in /usr/local/cuda?)"; exit 1; }
# cuBLASLt and cuDNN are dlopen'd at run time: for metapo's programs (not for PyTorch, which brings its
# own), the toolkit's library folders and those of the pip CUDA wheels (PyTorch's cuDNN) on the loader's
# path. cuDNN's fused attention is built when .cudnn-frontend/include is there (tools/setup.sh makes it;
# carry it to the device machine), else the attention is the plain kernel only.
cuda_root=$(dirname "$(dirname "$(command -v nvcc)")")
wheel_libs=$(python3 -c 'import glob, os, site
print(":".join(sorted(set(os.path.dirname(p) for d in site.getsitepackages()
                         for p in glob.glob(d + "/nvidia/*/lib/libcublasLt.so*") + glob.glob(d + "/nvidia/*/lib/libcudnn.so*")))))' 2>/dev/null || true)
METAPO_LIBS="$cuda_root/lib64:$cuda_root/lib${wheel_libs:+:$wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log "$(date -u +%FT%TZ) on $(hostname): $(nvcc --version | tail -1)"
gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
  nvidia-smi -L | tee -a "$OUT/summary.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/nvidia-smi.csv"
  # The card's own architecture only ("9.0" -> 90): device time is scarce.
  [ -n "$ARCH" ] || ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
else
  log "no GPU visible (nvidia-smi): a dry run, the GPU steps report skipped"
fi
case $ARCH in '' | *[!0-9\;]*) ARCH="80;90" ;; esac
start=$SECONDS
if [ "$PART" != cli ]; then
  log "building tests/gpu for sm ${ARCH} into $BUILD (part: $PART)"
  if ! { cmake -S tests/gpu -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=$ARCH" &&
         cmake --build "$BUILD" -j"$(nproc)"; } >"$OUT/build.log" 2>&1; then
    tail -30 "$OUT/build.log"
    log "error: the build failed (log: $OUT/build.log)"
    exit 1
  fi
  log "built in $((SECONDS - start)) s"
  if grep -q "cuDNN front end in" "$OUT/build.log"; then
    log "cuDNN's fused attention: built (bf16 attention through cuDNN where it takes the shape)"
  else
    log "cuDNN's fused attention: NOT built (no .cudnn-frontend/include: run tools/setup.sh here and carry it)"
  fi
fi

declare -A result
# run NAME TIMEOUT CMD...: the command's output into $LOGS/NAME.log (LOGS: default $OUT) and on screen;
# its verdict in result.
run() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS status=0 logf=${LOGS:-$OUT}/$name.log
  timeout "$limit" "$@" >"$logf" 2>&1 || status=$?
  cat "$logf"
  case $status in
    0) result[$name]="passed" ;;
    77) if [ $gpu = 1 ]; then result[$name]="FAILED (nvidia-smi sees a GPU, the CUDA runtime does not)"
        else result[$name]="skipped (no CUDA device)"; fi ;;
    124) result[$name]="TIMED OUT after ${limit} s" ;;
    *) result[$name]="FAILED (exit $status)" ;;
  esac
  log "$name: ${result[$name]} in $((SECONDS - t0)) s"
}
if [ "$PART" = all ] || [ "$PART" = tests ]; then
  run test_gpu_ops 150 env LD_LIBRARY_PATH="$METAPO_LIBS" "$BUILD/tests/gpu/test_gpu_ops"
  run test_gpu_model 240 env LD_LIBRARY_PATH="$METAPO_LIBS" "$BUILD/tests/gpu/test_gpu_model"
  run test_gpu_generate 60 env LD_LIBRARY_PATH="$METAPO_LIBS" "$BUILD/tests/gpu/test_gpu_generate"
  if [ "${SANITIZE:-0}" = 1 ] && [ $gpu = 1 ] && command -v compute-sanitizer >/dev/null; then
    run memcheck 150 env LD_LIBRARY_PATH="$METAPO_LIBS" compute-sanitizer --tool memcheck --error-exitcode 9 \
      "$BUILD/tests/gpu/test_gpu_ops"
  fi
fi
[ "$PART" = all ] || [ "$PART" = bench ] &&
  run bench_gpu_model 200 env LD_LIBRARY_PATH="$METAPO_LIBS" "$BUILD/tests/gpu/bench_gpu_model" --shape 1.3b \
    --seq-len "$SEQ" --batch "$BATCH"
if [ $gpu = 1 ] && { [ "$PART" = all ] || [ "$PART" = bench ]; }; then
  for step in fwdbwd dpo; do
    run "bench_torch_$step" 180 env PYTHONUNBUFFERED=1 python3 tools/bench_torch.py --device cuda --dtype bf16 \
      --step "$step" --preset configs/presets/gpu-1.3b.ini --seq-len "$SEQ" --batch "$BATCH" --warmup 1 --steps 3
  done
fi

# Part 5: the real binary from .gpu-runtime/, each step a row; their output in one log (the device tool
# brings back 8 files), the runs' metrics in one archive.
cli_steps="runtime sft ref dpo metapo resume bf16 eval score"
if [ "$PART" = all ] || [ "$PART" = cli ]; then
  cli_work=$(mktemp -d)
  : >"$OUT/cli.log"
  if [ ! -x .gpu-runtime/metapo ]; then
    for step in $cli_steps; do result[cli_$step]="skipped (no .gpu-runtime/: make it here with tools/gpu-runtime.sh, carry it)"; done
    log "cli: skipped: no .gpu-runtime/ (make it with tools/gpu-runtime.sh where apt works, and carry it: docs/gpu.md)"
  else
    log "cli: .gpu-runtime/metapo --device $DEVICE against --device cpu in $cli_work ($(grep -m1 '^bin/metapo' .gpu-runtime/MANIFEST || true))"
    for step in $cli_steps; do
      if [ "$DEVICE" = cuda ] && [ $gpu = 0 ] && [ $step != runtime ]; then
        result[cli_$step]="skipped (no GPU; DEVICE=cpu PART=cli checks the harness on the CPU)"
        continue
      fi
      # A step after a failed one would compare missing runs: skipped, the first failure is the finding.
      if [ -n "${cli_failed:-}" ]; then result[cli_$step]="skipped (after $cli_failed)"; continue; fi
      # Without a GPU the runtime step (the tree runs here; init, synth) probes the CPU instead.
      device=$DEVICE; [ $gpu = 0 ] && device=cpu
      LOGS=$cli_work run "cli_$step" 150 env DEVICE="$device" LD_LIBRARY_PATH="$METAPO_LIBS" \
        bash tools/gpu-check-cli.sh "$step" "$cli_work/w"
      { echo "=== cli_$step: ${result[cli_$step]}"; cat "$cli_work/cli_$step.log"; } >>"$OUT/cli.log"
      case ${result[cli_$step]} in passed) ;; *) cli_failed=cli_$step ;; esac
    done
    (cd "$cli_work/w" && tar czf - --ignore-failed-read */metrics.jsonl *.log *.json *.jsonl 2>/dev/null) >"$OUT/cli-runs.tar.gz" || true
  fi
  rm -rf "$cli_work"
fi

echo
echo "| check | result |" | tee -a "$OUT/summary.txt"
echo "| --- | --- |" | tee -a "$OUT/summary.txt"
for name in test_gpu_ops test_gpu_model test_gpu_generate memcheck bench_gpu_model bench_torch_fwdbwd bench_torch_dpo \
            $(for step in $cli_steps; do echo cli_$step; done); do
  [ -n "${result[$name]:-}" ] && echo "| $name | ${result[$name]} |" | tee -a "$OUT/summary.txt"
done
grep -h "FAIL\|error" "$OUT"/test_gpu_*.log 2>/dev/null | head -20 | tee -a "$OUT/summary.txt"
grep -h '^| \(fwd+bwd\|DPO\|MetaPO\)' "$OUT/bench_gpu_model.log" 2>/dev/null | tee -a "$OUT/summary.txt"
grep -h "MetaPO / DPO\|^attention:" "$OUT/bench_gpu_model.log" 2>/dev/null | tee -a "$OUT/summary.txt"
grep -h "bf16 attention:\|attention (cuDNN)" "$OUT"/test_gpu_*.log 2>/dev/null | tee -a "$OUT/summary.txt"
grep -h "tolerance\|byte-identical\|^glibc here" "$OUT/cli.log" 2>/dev/null | tee -a "$OUT/summary.txt"
for step in fwdbwd dpo; do tail -1 "$OUT/bench_torch_$step.log" 2>/dev/null | sed "s/^/torch $step: /" | tee -a "$OUT/summary.txt"; done
log "done in $((SECONDS - start)) s; logs in $OUT"
failed=0
for name in "${!result[@]}"; do case ${result[$name]} in FAILED*|TIMED*) failed=1 ;; esac; done
exit $failed
