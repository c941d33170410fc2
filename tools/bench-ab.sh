#!/usr/bin/env bash
# Two metapo binaries, A (before) and B (after), timed in the same run in interleaved rounds (A B B A,
# so neither always runs first): `metapo bench --preset bench-28m --seq-len 256 --batch 8` (forward +
# backward, ms per step) and a DPO step of the tiny preset (`metapo train`, mean step_time after the
# warm-up). Prints the medians and B / A. For refactors that must not cost speed.
#   tools/bench-ab.sh OLD/metapo build/metapo
#   ROUNDS=8 STEPS=10 tools/bench-ab.sh OLD/metapo build/metapo
#   WHAT=dpo-tiny ROUNDS=12 tools/bench-ab.sh OLD/metapo build/metapo   # one of the two only
#   PIN=1 WHAT=dpo-tiny tools/bench-ab.sh OLD/metapo build/metapo   # one thread on core 1: on a busy
#     2-core machine two-thread runs fall into a 50% slower mode at random, whichever the binary
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: tools/bench-ab.sh BINARY_A BINARY_B" >&2; exit 2; }
A=$(realpath "$1") B=$(realpath "$2")
for b in "$A" "$B"; do [ -x "$b" ] || { echo "error: $b: not an executable" >&2; exit 1; }; done
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-6}
STEPS=${STEPS:-8}           # timed steps of metapo bench
for v in ROUNDS STEPS; do  # before any work: a non-number would end in an empty table
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "error: $v=${!v}: not a positive whole number" >&2; exit 1; }
done
DPO_STEPS=${DPO_STEPS:-40}  # DPO steps of the tiny run, the first WARM not counted
WARM=${WARM:-8}
OUT=${OUT:-runs/bench-ab}
WHAT=${WHAT:-both}          # both | bench-28m | dpo-tiny
case "$WHAT" in both|bench-28m|dpo-tiny) ;; *) echo "error: WHAT=$WHAT: unknown (both, bench-28m, dpo-tiny)" >&2; exit 1;; esac
export OMPI_MCA_hwloc_base_binding_policy=none  # one rank, all cores (its threads follow its CPU mask)
PIN=${PIN:-0}
RUN=()
if [ "$PIN" = 1 ]; then export OMP_NUM_THREADS=1; RUN=(taskset -c 1); fi
# shellcheck source=tools/out-dir.sh
source tools/out-dir.sh
fresh_out OUT "$OUT" data.h5
"$A" synth --task sort --flip 0.2 --seed 1 --n-train 2048 --n-val 64 --n-test 64 --n-sft 64 --out "$OUT/data.h5" >/dev/null
"$A" init --preset tiny --out "$OUT/init" --seed 1 >/dev/null
"$A" precompute-ref --model "$OUT/init" --data "$OUT/data.h5" >/dev/null
: > "$OUT/rounds.jsonl"
one() {  # label binary round
  local label=$1 bin=$2 round=$3
  [ "$WHAT" = dpo-tiny ] || "${RUN[@]}" "$bin" bench --preset bench-28m --seq-len 256 --batch 8 --steps "$STEPS" --warmup 2 | tail -1 |
    python3 -c "import json,sys; j=json.load(sys.stdin); print(json.dumps({'bin':'$label','round':$round,'what':'bench-28m','ms':j['ms_per_step']}))" >> "$OUT/rounds.jsonl"
  [ "$WHAT" = bench-28m ] && return
  local r="$OUT/r$round-$label"
  "${RUN[@]}" "$bin" train --model "$OUT/init" --data "$OUT/data.h5" --out "$r" --max-steps "$DPO_STEPS" --batch-size 32 \
    --micro-batch 32 --seed 1 --eval-every 0 > "$r.log"
  python3 - "$r/metrics.jsonl" "$label" "$round" "$WARM" >> "$OUT/rounds.jsonl" <<'P'
import json, sys
t = [json.loads(l)["step_time"] for l in open(sys.argv[1]) if '"step_time"' in l][int(sys.argv[4]):]
print(json.dumps({"bin": sys.argv[2], "round": int(sys.argv[3]), "what": "dpo-tiny", "ms": 1000 * sum(t) / len(t)}))
P
}
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then one A "$A" "$round"; one B "$B" "$round"; else one B "$B" "$round"; one A "$A" "$round"; fi
  echo "round $round done" >&2
done
python3 - "$OUT/rounds.jsonl" "$A" "$B" "$PIN" <<'P' | tee "$OUT/results.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"\nA = {sys.argv[2]}\nB = {sys.argv[3]}\n{len({r['round'] for r in rows})} interleaved rounds{', one thread on core 1' if sys.argv[4] == '1' else ''}; ms per step, median (fastest)\n")
print("| what | A ms | B ms | B / A (median) | B / A (fastest) | B / A per round |")
print("| --- | --- | --- | --- | --- | --- |")
for what in ("bench-28m", "dpo-tiny"):
    a = [r["ms"] for r in rows if r["what"] == what and r["bin"] == "A"]
    b = [r["ms"] for r in rows if r["what"] == what and r["bin"] == "B"]
    if not a:
        continue
    per = ", ".join(f"{y / x:.3f}" for x, y in zip(a, b))
    print(f"| {what} | {statistics.median(a):.1f} ({min(a):.1f}) | {statistics.median(b):.1f} ({min(b):.1f}) | "
          f"{statistics.median(b) / statistics.median(a):.3f} | {min(b) / min(a):.3f} | {per} |")
P
