#!/usr/bin/env bash
# The cost of MetaPO (issue 4): mean step time of `metapo train` with plain DPO (--weighting uniform)
# and with --weighting metapo at --meta-interval 1 and 4, measured in the same run, in interleaved
# rounds, on the same data and model. Each run trains STEPS steps; its figure is the mean step_time of
# steps WARM+1..STEPS (a multiple of 4 steps, so interval 4 gets its share of meta steps); the table
# gives the median over ROUNDS rounds and the fastest round (noise here only ever adds time), the ratios
# to DPO, and the MetaPO phase times logged in
# metrics.jsonl (time/val_grad, time/train with the ghost products, time/refresh, time/meta_update).
#   tools/bench-meta-cost.sh                     # tiny preset, MetaPO defaults
#   PRESET=bench-28m STEPS=12 WARM=4 ROUNDS=2 tools/bench-meta-cost.sh
#   META_ARGS="--meta-val-batch 32" tools/bench-meta-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/mpi-env.sh
M=$PWD/build/metapo
PRESET=${PRESET:-tiny}
STEPS=${STEPS:-48}
WARM=${WARM:-8}
ROUNDS=${ROUNDS:-5}
BATCH=${BATCH:-32}
MICRO=${MICRO:-32}
NP=${NP:-1}
for v in ROUNDS STEPS NP; do  # before any work: a non-number would end in an empty table
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "error: $v=${!v}: not a positive whole number" >&2; exit 1; }
done
# OpenMPI binds a lone rank to one core; let it use all of them (its threads follow its CPU mask).
[ "$NP" = 1 ] && export OMPI_MCA_hwloc_base_binding_policy=none
META_ARGS=${META_ARGS:-}
OUT=${OUT:-runs/meta-cost}
(( (STEPS - WARM) % 4 == 0 && STEPS > WARM )) || { echo "error: STEPS - WARM must be a positive multiple of 4" >&2; exit 1; }
tools/setup.sh >/dev/null  # after the checks: a refused call builds nothing
# shellcheck source=tools/out-dir.sh
source tools/out-dir.sh
fresh_out OUT "$OUT" data.h5
$M synth --task sort --flip 0.4 --seed 1 --n-train 4000 --n-val 256 --n-test 64 --n-sft 64 --out "$OUT/data.h5" > /dev/null
$M init --preset "$PRESET" --out "$OUT/init" --seed 1 > /dev/null
tools/mpirun-retry.sh -np "$NP" "$M" precompute-ref --model "$OUT/init" --data "$OUT/data.h5" > /dev/null

# One rank runs without mpirun (an MPI singleton): under `mpirun -np 1` some runs of any kind, plain DPO
# included, ran 50% slower on this machine, for no reason found in the program; that noise swamped
# the ratios.
LAUNCH="tools/mpirun-retry.sh -np $NP"
[ "$NP" = 1 ] && LAUNCH=""
declare -A args=(
  [dpo]="--weighting uniform"
  [metapo-i1]="--weighting metapo --meta-interval 1 $META_ARGS"
  [metapo-i4]="--weighting metapo --meta-interval 4 $META_ARGS"
)
order=(dpo metapo-i1 metapo-i4)
: > "$OUT/rounds.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  for name in "${order[@]}"; do
    r="$OUT/r$round-$name"
    # shellcheck disable=SC2086
    $LAUNCH "$M" train --model "$OUT/init" --data "$OUT/data.h5" --out "$r" --max-steps "$STEPS" \
      --batch-size "$BATCH" --micro-batch "$MICRO" --seed 1 ${args[$name]} > "$r.log"
    python3 - "$r/metrics.jsonl" "$name" "$round" "$WARM" >> "$OUT/rounds.jsonl" <<'P'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"step_time"' in l][int(sys.argv[4]):]
keys = ["step_time", "time/train", "time/val_grad", "time/refresh", "time/meta_update", "time/optimizer"]
out = {"name": sys.argv[2], "round": int(sys.argv[3]), "steps": len(rows)}
for k in keys:
    v = [r[k] for r in rows if k in r]
    if v:
        out[k] = sum(v) / len(rows)
print(json.dumps(out))
P
    echo "round $round $name done" >&2
  done
done

python3 - "$OUT/rounds.jsonl" "$PRESET" "$BATCH" "$NP" "$META_ARGS" <<'P' | tee "$OUT/results.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
preset, batch, np_, meta_args = sys.argv[2:6]
def med(name, key):
    v = [r[key] for r in rows if r["name"] == name and key in r]
    return statistics.median(v) * 1000 if v else None
base = med("dpo", "step_time")
print(f"\npreset {preset}, batch {batch} pairs, {np_} rank(s), sort task; mean ms per step (steps after the warm-up),"
      f" median of {len({r['round'] for r in rows})} interleaved rounds; MetaPO options: {meta_args or '(defaults)'}\n")
def low(name, key):
    v = [r[key] for r in rows if r["name"] == name and key in r]
    return min(v) * 1000 if v else None
base_low = low("dpo", "step_time")
print("| run | step ms | × DPO | fastest round ms | × DPO (fastest rounds) | train fwd+bwd (+ghost) ms"
      " | validation grad ms | refresh ms | meta update ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for name, label in [("dpo", "DPO (uniform)"), ("metapo-i1", "MetaPO, --meta-interval 1"), ("metapo-i4", "MetaPO, --meta-interval 4")]:
    f = lambda k: "—" if med(name, k) is None else f"{med(name, k):.1f}"
    print(f"| {label} | {f('step_time')} | {med(name, 'step_time') / base:.2f} | {low(name, 'step_time'):.1f} |"
          f" {low(name, 'step_time') / base_low:.2f} | {f('time/train')} | {f('time/val_grad')} |"
          f" {f('time/refresh')} | {f('time/meta_update')} |")
P
