#!/usr/bin/env bash
# DPO losses under label noise on a synthetic task: for each seed, synth (FLIP of train pairs flipped)
# → SFT on the clean sft split → precompute-ref → train with each loss → clean test preference
# accuracy (metapo eval) and answer accuracy of greedy generations (metapo generate).
# Prints a markdown table (mean over seeds, and per seed) and leaves everything under $OUT.
#   FLIP=0.3 SEEDS="1 2" LOSSES="sigmoid cdpo robust ipo" tools/bench-noisy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/mpi-env.sh
M=$PWD/build/metapo
TASK=${TASK:-sort}
FLIP=${FLIP:-0.3}
SEEDS=${SEEDS:-"1 2"}
LOSSES=${LOSSES:-"sigmoid cdpo robust ipo"}
EPOCHS=${EPOCHS:-1}
SFT_EPOCHS=${SFT_EPOCHS:-3}
LR=${LR:-5e-5}
NP=${NP:-1}
# OpenMPI binds a lone rank to one core; let it use all of them (its threads follow its CPU mask).
[ "$NP" = 1 ] && export OMPI_MCA_hwloc_base_binding_policy=none
OUT=${OUT:-runs/noisy-$TASK-$FLIP}
for v in SEEDS EPOCHS SFT_EPOCHS NP; do  # before any work: these reach metapo and the results lines
  for x in ${!v}; do
    [[ "$x" =~ ^[0-9]+$ ]] || { echo "error: $v: '$x' is not a whole number" >&2; exit 1; }
  done
done
for l in $LOSSES; do
  case "$l" in sigmoid|ipo|hinge|cdpo|robust|simpo|exo_pair|nca_pair|bco_pair|sppo_hard|apo_zero|apo_down|discopop|sigmoid_norm) ;;
    *) echo "error: LOSSES: unknown loss '$l' (metapo train --help lists them)" >&2; exit 1 ;; esac
done
python3 -c "import sys; f = float(sys.argv[1]); sys.exit(0 if 0 <= f < 0.5 else 1)" "$FLIP" 2>/dev/null ||
  { echo "error: FLIP: '$FLIP' is not a flip rate in [0, 0.5)" >&2; exit 1; }
tools/setup.sh >/dev/null  # after the checks: a refused call builds nothing
# shellcheck source=tools/out-dir.sh
source tools/out-dir.sh
claim_out OUT "$OUT" results.jsonl  # its results.jsonl is started anew: never a directory of the user's
RUN="$PWD/tools/mpirun-retry.sh -np $NP $M"
extra_args() {  # loss-specific settings: cdpo and robust assume the flip rate as label smoothing
  case "$1" in
    cdpo|robust) echo "--label-smoothing $FLIP" ;;
    *) echo "" ;;
  esac
}
: > "$OUT/results.jsonl"
for seed in $SEEDS; do
  d="$OUT/seed$seed"
  mkdir -p "$d"
  $M synth --task "$TASK" --flip "$FLIP" --seed "$seed" --out "$d/data.h5" > "$d/synth.log"
  $M init --preset tiny --out "$d/init" --seed "$seed" > /dev/null
  $RUN sft --model "$d/init" --data "$d/data.h5" --out "$d/sft" --epochs "$SFT_EPOCHS" --batch-size 32 \
    --micro-batch 32 --lr 1e-3 --seed "$seed" > "$d/sft.log"
  $RUN precompute-ref --model "$d/sft/final" --data "$d/data.h5" > /dev/null
  sft_gen=$($RUN generate --model "$d/sft/final" --data "$d/data.h5" --split test --greedy --max-new-tokens 16 \
    --output "$d/sft.gen.jsonl" | tail -n 1)
  echo "{\"seed\": $seed, \"loss\": \"sft\", \"eval\": {\"pref_acc\": 0.5}, \"gen\": $sft_gen}" >> "$OUT/results.jsonl"
  for loss in $LOSSES; do
    r="$d/$loss"
    $RUN train --model "$d/sft/final" --data "$d/data.h5" --out "$r" --loss "$loss" $(extra_args "$loss") \
      --epochs "$EPOCHS" --batch-size 32 --micro-batch 32 --lr "$LR" --seed "$seed" > "$r.log"
    ev=$($RUN eval --model "$r/final" --data "$d/data.h5" --split test | tail -n 1)
    gen=$($RUN generate --model "$r/final" --data "$d/data.h5" --split test --greedy --max-new-tokens 16 \
      --output "$r/gen.jsonl" | tail -n 1)
    echo "{\"seed\": $seed, \"loss\": \"$loss\", \"eval\": $ev, \"gen\": $gen}" >> "$OUT/results.jsonl"
    echo "seed $seed $loss: pref_acc $(echo "$ev" | python3 -c 'import json,sys;print(round(json.load(sys.stdin)["pref_acc"],4))')" \
         "answer_acc $(echo "$gen" | python3 -c 'import json,sys;print(round(json.load(sys.stdin)["answer_accuracy"],4))')"
  done
done
python3 - "$OUT/results.jsonl" "$TASK" "$FLIP" <<'P'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
task, flip = sys.argv[2], sys.argv[3]
by = {}
for r in rows:
    by.setdefault(r["loss"], []).append(r)
def ms(v):
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
print(f"\ntask {task}, {float(flip):.0%} of train pairs flipped; clean test split; mean ± std over seeds\n")
print("| method | test pref. accuracy | answer accuracy | per seed (pref / answer) |")
print("| --- | --- | --- | --- |")
for loss, rs in by.items():
    pa = [r["eval"]["pref_acc"] for r in rs]
    aa = [r["gen"]["answer_accuracy"] for r in rs]
    per = ", ".join(("—" if loss == "sft" else f"{p:.3f}") + f" / {a:.3f}" for p, a in zip(pa, aa))
    name = "SFT model (reference)" if loss == "sft" else loss
    print(f"| {name} | {'—' if loss == 'sft' else ms(pa)} | {ms(aa)} | {per} |")
P
