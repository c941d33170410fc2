#!/usr/bin/env bash
# metapo bench runs and ends with its JSON line (timings are not checked: benchmarks are not tests).
source "$(dirname "$0")/common.sh"
"$METAPO" bench --preset tiny --seq-len 32 --batch 2 --steps 1 --warmup 0 > bench.txt
tail -n 1 bench.txt | python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["tokens_per_s"] > 0 and j["gflops_per_s"] > 0, j; print("ok:", j)'
# --precision bf16 runs; the JSON names the device and precision.
"$METAPO" bench --preset tiny --seq-len 32 --batch 2 --steps 1 --warmup 0 --precision bf16 > bench16.txt
tail -n 1 bench16.txt | python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["device"] == "cpu" and j["precision"] == "bf16", j; print("ok:", j)'
# Options checked before any work, one line each: an unknown device or precision; cuda where this
# build has no backend or this machine no GPU (the message says which).
expect_error "--device tpu: unknown (valid: cpu, cuda)" "$METAPO" bench --preset tiny --device tpu
expect_error "--precision fp8: unknown (valid: fp32, bf16)" "$METAPO" bench --preset tiny --precision fp8
# Sizes that cannot fit are refused before allocating (a --seq-len of 2^32 ran into the OOM killer).
expect_error "--seq-len 4294967296 --batch 1: the activations of 4294967296 tokens needs" "$METAPO" bench --preset tiny \
  --seq-len 4294967296 --batch 1 --steps 1
expect_error "--targets 17 must be below --seq-len 16" "$METAPO" bench --preset tiny --seq-len 16 --targets 17
! grep -q "error: metapo bench" err.txt || fail "doubled prefix: $(cat err.txt)"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  echo "a GPU is visible: the --device cuda error is not checked here"
else
  expect_error "--device cuda: " "$METAPO" bench --preset tiny --device cuda
fi
