#!/usr/bin/env bash
# Wall time per step of `metapo train` (DPO, or MetaPO with METHOD=metapo) under parallel layouts
# DP x PP x TP against one rank, measured in the same run in interleaved rounds, on the same data and
# model. On a machine with fewer cores than ranks the ranks are oversubscribed (each gets
# cores / ranks threads, at least 1), so this measures the overhead of the decomposition and its
# communication, not a speed-up. Each run trains STEPS steps; its figure is the mean step_time of
# the steps after WARM; the table gives the median over ROUNDS rounds and the ratio to 1x1x1, plus
# the communication of one step (all ranks, comm_all/*) and rank 0's memory.
#   tools/bench-parallel.sh                                  # tiny preset, 1x1x1 2x1x1 1x2x1 1x1x2 2x2x2
#   PRESET=bench-28m LAYOUTS="1x1x1 2x2x2" STEPS=6 WARM=2 ROUNDS=1 tools/bench-parallel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/mpi-env.sh
M=$PWD/build/metapo
PRESET=${PRESET:-tiny}
LAYOUTS=${LAYOUTS:-"1x1x1 2x1x1 1x2x1 1x1x2 2x2x2"}
METHOD=${METHOD:-uniform}
STEPS=${STEPS:-12}
WARM=${WARM:-2}
ROUNDS=${ROUNDS:-3}
for v in ROUNDS STEPS; do  # before any work: a non-number would end in an empty table
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "error: $v=${!v}: not a positive whole number" >&2; exit 1; }
done
for l in $LAYOUTS; do
  [[ "$l" =~ ^[1-9][0-9]*x[1-9][0-9]*x[1-9][0-9]*$ ]] || { echo "error: LAYOUTS: '$l' is not DPxPPxTP (e.g. 2x1x1)" >&2; exit 1; }
done
BATCH=${BATCH:-32}
MICRO=${MICRO:-4}
OUT=${OUT:-runs/bench-parallel}
tools/setup.sh >/dev/null  # after the checks: a refused call builds nothing
# shellcheck source=tools/out-dir.sh
source tools/out-dir.sh
fresh_out OUT "$OUT" data.h5
$M synth --task sort --flip 0.2 --seed 1 --n-train 2000 --n-val 256 --n-test 64 --n-sft 64 --out "$OUT/data.h5" > /dev/null
$M init --preset "$PRESET" --out "$OUT/init" --seed 1 > /dev/null
$M precompute-ref --model "$OUT/init" --data "$OUT/data.h5" > /dev/null
: > "$OUT/rounds.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  for layout in $LAYOUTS; do
    IFS=x read -r dp pp tp <<< "$layout"
    np=$((dp * pp * tp)) r="$OUT/r$round-$layout"
    launch=(tools/mpirun-retry.sh -np "$np")
    # One rank: an MPI singleton bound to nothing (mpirun -np 1 binds it to one core).
    [ "$np" = 1 ] && launch=()
    "${launch[@]}" "$M" train --model "$OUT/init" --data "$OUT/data.h5" --out "$r" --max-steps "$STEPS" \
      --batch-size "$BATCH" --micro-batch "$MICRO" --seed 1 --weighting "$METHOD" --tp "$tp" --pp "$pp" > "$r.log"
    python3 - "$r" "$layout" "$round" "$WARM" >> "$OUT/rounds.jsonl" <<'P'
import json, sys
run, layout, rnd, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(l) for l in open(run + "/metrics.jsonl") if '"step_time"' in l]
out = {"layout": layout, "round": rnd, "step_time": sum(r["step_time"] for r in rows[warm:]) / len(rows[warm:]),
       "loss_last": rows[-1]["loss"]}
for k, v in rows[0].items():
    if k.startswith("comm_all/"):
        out[k] = v
out["memory"] = json.load(open(run + "/run.json"))["memory_bytes"]
print(json.dumps(out))
P
    echo "round $round $layout done" >&2
  done
done
python3 - "$OUT/rounds.jsonl" "$PRESET" "$BATCH" "$MICRO" "$METHOD" "$(nproc)" <<'P' | tee "$OUT/results.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
preset, batch, micro, method, cores = sys.argv[2:7]
layouts = list(dict.fromkeys(r["layout"] for r in rows))
med = {l: statistics.median(r["step_time"] for r in rows if r["layout"] == l) for l in layouts}
base = med.get("1x1x1")
print(f"\npreset {preset}, --weighting {method}, batch {batch} pairs, micro-batch {micro}, {cores} cores; "
      f"mean ms per step after the warm-up, median of {len({r['round'] for r in rows})} interleaved rounds\n")
print("| DP×PP×TP | ranks | step ms | × 1 rank | comm per step, all ranks (MB) | rank 0 params + grads + Adam (MiB) | rank 0 activations (MiB) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for l in layouts:
    r = next(x for x in rows if x["layout"] == l)
    dp, pp, tp = map(int, l.split("x"))
    comm = sum(v for k, v in r.items() if k.startswith("comm_all/")) / 1e6
    m = r["memory"]
    state = (m["params"] + m["grads"] + m["optimizer_state"]) / 2**20
    ratio = f"{med[l] / base:.2f}" if base else "—"
    print(f"| {l} | {dp * pp * tp} | {med[l] * 1000:.1f} | {ratio} | {comm:.2f} | {state:.2f} | {m['activations'] / 2**20:.2f} |")
P
