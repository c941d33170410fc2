#!/usr/bin/env bash
# metapo bench runs and ends with its JSON line (timings are not checked: benchmarks are not tests).
source "$(dirname "$0")/common.sh"
"$METAPO" bench --preset tiny --seq-len 32 --batch 2 --steps 1 --warmup 0 > bench.txt
tail -n 1 bench.txt | python3 -c 'import json,sys; j=json.load(sys.stdin); assert j["tokens_per_s"] > 0 and j["gflops_per_s"] > 0, j; print("ok:", j)'
