#!/usr/bin/env bash
# Byte identity of two metapo binaries, A and B, for refactors that must not change results: the same
# short runs with both (DPO and MetaPO at 1 rank, DP 2, TP 2, PP 2 and DP 2 x PP 2 x TP 2 with selective
# recomputation; SFT), then final/model.safetensors compared byte for byte, every metrics line but the
# timings, memory and traffic, and metapo.json. Prints one line per run; exits 1 if any differs.
#   tools/compare-runs.sh OLD/metapo build/metapo
set -uo pipefail
[ $# -eq 2 ] || { echo "usage: tools/compare-runs.sh BINARY_A BINARY_B" >&2; exit 2; }
A=$(realpath "$1") B=$(realpath "$2")
for b in "$A" "$B"; do [ -x "$b" ] || { echo "error: $b: not an executable" >&2; exit 1; }; done
cd "$(dirname "$0")/.." || exit 1
# shellcheck source=tools/mpi-env.sh
source tools/mpi-env.sh
SRC=$PWD
W=${OUT:-runs/compare-runs}
# shellcheck source=tools/out-dir.sh
source tools/out-dir.sh
fresh_out OUT "$W" d.h5
cd "$W" || exit 1
"$A" synth --task sort --seed 4 --flip 0.2 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$A" init --preset tiny --out init --seed 3 >/dev/null
"$A" precompute-ref --model init --data d.h5 >/dev/null
common="--model init --data d.h5 --batch-size 8 --micro-batch 2 --max-steps 6 --lr 1e-3 --warmup-steps 1"
meta="--weighting metapo --meta-gate 0"
bad=0
run() {  # name ranks args...
  local name=$1 np=$2; shift 2
  local label bin
  for label in A B; do
    bin=$A; [ "$label" = B ] && bin=$B
    if [ "$np" = 1 ]; then
      OMPI_MCA_hwloc_base_binding_policy=none "$bin" "$@" --out "$name-$label" >"$name-$label.log" 2>&1
    else
      "$SRC/tools/mpirun-retry.sh" --oversubscribe -np "$np" "$bin" "$@" --out "$name-$label" >"$name-$label.log" 2>&1
    fi || { echo "FAIL: $name with $label (log: $W/$name-$label.log)"; bad=1; return; }
  done
  local verdict=same
  cmp -s "$name-A/final/model.safetensors" "$name-B/final/model.safetensors" || verdict="DIFFERENT final/"
  python3 - "$name-A/metrics.jsonl" "$name-B/metrics.jsonl" <<'P' || verdict="DIFFERENT metrics"
import json, sys
skip = ("time", "step_time", "tokens_per_s", "memory", "comm", "elapsed")
def lines(p):
    return [{k: v for k, v in json.loads(l).items() if not k.startswith(skip)} for l in open(p) if '"event"' not in l]
sys.exit(0 if lines(sys.argv[1]) == lines(sys.argv[2]) else 1)
P
  if [ -f "$name-A/metapo.json" ]; then cmp -s "$name-A/metapo.json" "$name-B/metapo.json" || verdict="DIFFERENT metapo.json"; fi
  [ "$verdict" = same ] || bad=1
  echo "$name ($np rank(s)): $verdict"
}
# shellcheck disable=SC2086
{
  run dpo 1 train $common
  run metapo 1 train $common $meta
  run metapo-dp2 2 train $common $meta
  run metapo-tp2 2 train $common $meta --tp 2
  run metapo-pp2 2 train $common $meta --pp 2
  run metapo-2x2x2 8 train $common $meta --tp 2 --pp 2 --recompute selective
  run sft 1 sft --model init --data d.h5 --batch-size 8 --max-steps 4 --lr 1e-3
}
exit $bad
