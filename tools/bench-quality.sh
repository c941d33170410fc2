#!/usr/bin/env bash
# Quality benchmark (issue 4): per-pair weighting under label noise on a synthetic task. For each seed:
# init → SFT on the clean sft split (shared by all flip rates: synth's sft/val/test splits do not depend
# on --flip); for each flip rate: synth (FLIP of the train pairs flipped) → precompute-ref under the SFT
# model → train with every method → clean test preference accuracy (metapo eval), answer accuracy of
# greedy generations (metapo generate, first GEN_LIMIT test prompts), and for MetaPO the weight AUC
# clean vs flipped and the temporal share of its decisions (metapo analyze).
# Methods: uniform (plain DPO), cdpo and robust (label smoothing = the flip rate, 0.1 at 0 flips), wpo,
# margin, metapo (META_ARGS), oracle (--weighting column: weight 1 for clean pairs, 1e-6 for flipped
# ones, i.e. the flipped pairs dropped; the column is written into a copy of the dataset).
# A feature ablation (MetaPO with --meta-features instantaneous / temporal, i.e. the other group's inputs
# zeroed; ABLATION picks the values) at the flip rates in ABLATION_FLIPS (0.4: flipped pairs beside clean
# near misses, the hard-clean mix) runs when metapo is among the methods and `metapo train` has that
# option; otherwise a note says it is skipped.
# Prints a markdown table (mean ± std over seeds, per flip rate × method), saves it to $OUT/results.md
# and the raw JSON lines to $OUT/results.jsonl; everything else stays under $OUT.
#   FLIPS="0 0.2 0.4" SEEDS="1 2 3" tools/bench-quality.sh
#   FLIPS=0.4 SEEDS=1 METHODS="uniform metapo oracle" N_TRAIN=512 tools/bench-quality.sh   # smoke run
#   TABLE_ONLY=1 OUT=runs/quality-sort tools/bench-quality.sh     # the table again from OUT/results.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh >/dev/null
source tools/mpi-env.sh
M=$PWD/build/metapo
TASK=${TASK:-sort}
FLIPS=${FLIPS:-"0 0.2 0.4"}
SEEDS=${SEEDS:-"1 2 3"}
METHODS=${METHODS:-"uniform cdpo robust wpo margin metapo oracle"}
EPOCHS=${EPOCHS:-3}          # the Hugging Face Trainer default
SFT_EPOCHS=${SFT_EPOCHS:-3}
LR=${LR:-5e-5}
BATCH=${BATCH:-32}
MICRO=${MICRO:-32}
NP=${NP:-1}
# OpenMPI binds a lone rank to one core; let it use all of them (its threads follow its CPU mask).
[ "$NP" = 1 ] && export OMPI_MCA_hwloc_base_binding_policy=none
N_TRAIN=${N_TRAIN:-4000}
N_VAL=${N_VAL:-256}
N_TEST=${N_TEST:-512}
N_SFT=${N_SFT:-2000}
GEN_LIMIT=${GEN_LIMIT:-256}
META_ARGS=${META_ARGS:-}      # extra `metapo train` options for MetaPO (none: its defaults)
ABLATION=${ABLATION:-"instantaneous temporal"}   # --meta-features values besides the full set (= metapo)
ABLATION_FLIPS=${ABLATION_FLIPS:-0.4}             # flip rates the ablation runs at (the hard-clean mix)
ANALYZE_ABLATION=${ANALYZE_ABLATION:-1}           # metapo analyze on the ablated runs (0: skip)
PLOTS=${PLOTS:-1}                                # tools/plot.py per seed and flip when matplotlib is there
OUT=${OUT:-runs/quality-$TASK}
mkdir -p "$OUT"
RUN="$PWD/tools/mpirun-retry.sh -np $NP $M"
log() { echo "$*" >&2; }

for m in $METHODS; do
  case "$m" in uniform|cdpo|robust|wpo|margin|metapo|oracle) ;; *) log "error: unknown method '$m'"; exit 1 ;; esac
done
ablate=()
ablation_note=""
if [[ " $METHODS " == *" metapo "* ]]; then
  if $M train --help 2>&1 | grep -q -- "--meta-features"; then
    for v in $ABLATION; do ablate+=("metapo-$v"); done
    [ "$ANALYZE_ABLATION" = 1 ] || ablation_note="The ablated MetaPO runs are not analyzed (ANALYZE_ABLATION=0)."
  else
    log "note: feature ablation skipped: it needs a \`metapo train --meta-features\` option (instantaneous-only /"
    log "      temporal-only weight-net inputs), which this build does not have"
    ablation_note="Feature ablation (instantaneous-only / temporal-only MetaPO) not run: \`metapo train\` has no --meta-features option."
  fi
fi
plots=0
if [ "$PLOTS" = 1 ] && python3 -c "import matplotlib" 2>/dev/null; then plots=1; fi

smoothing() {  # cdpo and robust assume the flip rate as label smoothing (0.1 when nothing is flipped)
  python3 -c "import sys; f = float(sys.argv[1]); print(f if f > 0 else 0.1)" "$1"
}
method_args() {  # method flip → metapo train options
  case "$1" in
    uniform) echo "--weighting uniform" ;;
    cdpo|robust) echo "--loss $1 --label-smoothing $(smoothing "$2")" ;;
    wpo|margin) echo "--weighting $1" ;;
    metapo) echo "--weighting metapo $META_ARGS" ;;
    metapo-*) echo "--weighting metapo $META_ARGS --meta-features ${1#metapo-}" ;;
    oracle) echo "--weighting column --weight-column oracle" ;;
  esac
}
field() { python3 -c 'import json,sys; v = json.loads(sys.argv[1]).get(sys.argv[2]); print("—" if v is None else round(v, 4))' "$1" "$2"; }

# TABLE_ONLY=1: no runs, only the table from an existing $OUT/results.jsonl (e.g. lines of several
# benchmark runs concatenated, or one that stopped part way).
TABLE_ONLY=${TABLE_ONLY:-0}
[ "$TABLE_ONLY" = 1 ] && SEEDS=""
[ "$TABLE_ONLY" = 1 ] || : > "$OUT/results.jsonl"
for seed in $SEEDS; do
  s="$OUT/seed$seed"
  mkdir -p "$s"
  # The SFT model is trained once per seed on the flip-independent sft split.
  $M synth --task "$TASK" --flip 0 --seed "$seed" --n-train "$N_TRAIN" --n-val "$N_VAL" --n-test "$N_TEST" \
    --n-sft "$N_SFT" --out "$s/sft-data.h5" > /dev/null
  $M init --preset tiny --out "$s/init" --seed "$seed" > /dev/null
  $RUN sft --model "$s/init" --data "$s/sft-data.h5" --out "$s/sft" --epochs "$SFT_EPOCHS" --batch-size 32 \
    --micro-batch 32 --lr 1e-3 --seed "$seed" > "$s/sft.log"
  sft_gen=$($RUN generate --model "$s/sft/final" --data "$s/sft-data.h5" --split test --greedy --max-new-tokens 16 \
    --limit "$GEN_LIMIT" --output "$s/sft.gen.jsonl" | tail -n 1)
  log "seed $seed sft: answer_acc $(field "$sft_gen" answer_accuracy)"
  for flip in $FLIPS; do
    d="$s/flip$flip"
    mkdir -p "$d"
    $M synth --task "$TASK" --flip "$flip" --seed "$seed" --n-train "$N_TRAIN" --n-val "$N_VAL" --n-test "$N_TEST" \
      --n-sft "$N_SFT" --out "$d/data.h5" > "$d/synth.log"
    $RUN precompute-ref --model "$s/sft/final" --data "$d/data.h5" > /dev/null
    echo "{\"flip\": $flip, \"seed\": $seed, \"method\": \"sft\", \"eval\": null, \"gen\": $sft_gen, \"analyze\": null}" \
      >> "$OUT/results.jsonl"
    if [[ " $METHODS " == *" oracle "* ]]; then  # oracle weights: 1 clean, 1e-6 flipped (a batch's sum stays > 0)
      cp "$d/data.h5" "$d/oracle.h5"
      python3 - "$d/oracle.h5" <<'P'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    q = f["train/quality"][()]
    f.create_dataset("train/columns/oracle", data=np.where(q >= 0.5, 1.0, 1e-6).astype(np.float32))
P
    fi
    runs=($METHODS)
    for f in $ABLATION_FLIPS; do if [ "$f" = "$flip" ]; then runs+=("${ablate[@]}"); fi; done
    for method in "${runs[@]}"; do
      r="$d/$method"
      data="$d/data.h5"
      [ "$method" = oracle ] && data="$d/oracle.h5"
      t0=$(date +%s.%N)
      # shellcheck disable=SC2046
      $RUN train --model "$s/sft/final" --data "$data" --out "$r" $(method_args "$method" "$flip") \
        --epochs "$EPOCHS" --batch-size "$BATCH" --micro-batch "$MICRO" --lr "$LR" --seed "$seed" > "$r.log"
      train_s=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$t0" "$(date +%s.%N)")
      ev=$($RUN eval --model "$r/final" --data "$d/data.h5" --split test | tail -n 1)
      gen=$($RUN generate --model "$r/final" --data "$d/data.h5" --split test --greedy --max-new-tokens 16 \
        --limit "$GEN_LIMIT" --output "$r/gen.jsonl" | tail -n 1)
      an=null
      # metapo analyze applies the run's --meta-features (recorded in metapo.json as features_used).
      if [ "$method" = metapo ] || { [[ "$method" == metapo-* ]] && [ "$ANALYZE_ABLATION" = 1 ]; }; then
        an=$($RUN analyze --run "$r" --data "$d/data.h5" | tail -n 1)
      fi
      echo "{\"flip\": $flip, \"seed\": $seed, \"method\": \"$method\", \"train_s\": $train_s, \"eval\": $ev," \
           "\"gen\": $gen, \"analyze\": $an}" >> "$OUT/results.jsonl"
      msg="flip $flip seed $seed $method: pref_acc $(field "$ev" pref_acc) answer_acc $(field "$gen" answer_accuracy)"
      [ "$an" = null ] || msg+=" weight_auc $(field "$an" quality_auc) temporal_share $(field "$an" temporal_share)"
      log "$msg (train ${train_s}s)"
    done
    if [ "$plots" = 1 ]; then
      runs=()
      for m in uniform metapo oracle; do [ -d "$d/$m" ] && runs+=("$d/$m"); done
      if [ ${#runs[@]} -gt 0 ] && python3 tools/plot.py "${runs[@]}" --out "$d/plots" > "$d/plots.log" 2>&1; then
        log "plots: $d/plots"
      fi
    fi
  done
done

python3 - "$OUT/results.jsonl" "$TASK" "$EPOCHS" "$N_TRAIN" "$META_ARGS" "$ablation_note" <<'P' | tee "$OUT/results.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
task, epochs, n_train, meta_args, ablation_note = sys.argv[2:7]
def ms(v):
    v = [x for x in v if x is not None]
    if not v:
        return "—"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"
flips = sorted({r["flip"] for r in rows})
seeds = sorted({r["seed"] for r in rows})
names = {"sft": "SFT model (reference)", "uniform": "uniform (DPO)", "oracle": "oracle (flipped dropped)",
         "metapo-instantaneous": "metapo, instantaneous features only",
         "metapo-temporal": "metapo, temporal features only"}
print(f"\ntask {task}, {n_train} train pairs, {epochs} epochs, seeds {' '.join(map(str, seeds))}; clean test split;"
      f" mean ± std over seeds; MetaPO options: {meta_args}\n")
print("| flipped | method | test pref. accuracy | answer accuracy | weight AUC (clean vs flipped) "
      "| temporal share (IG / permutation) | train s (mean) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for flip in flips:
    methods = []
    for r in rows:
        if r["flip"] == flip and r["method"] not in methods:
            methods.append(r["method"])
    for m in methods:
        rs = [r for r in rows if r["flip"] == flip and r["method"] == m]
        an = [r["analyze"] or {} for r in rs]
        pref = "—" if m == "sft" else ms([r["eval"]["pref_acc"] for r in rs])
        ans = ms([r["gen"]["answer_accuracy"] for r in rs])
        auc = ms([a.get("quality_auc") for a in an])
        share = "—"
        if any(a.get("temporal_share") is not None for a in an):
            share = f"{ms([a.get('temporal_share') for a in an])} / {ms([a.get('temporal_share_permutation') for a in an])}"
        ts = [r["train_s"] for r in rs if r.get("train_s") is not None]
        secs = f"{statistics.mean(ts):.0f}" if ts else "—"
        name = names.get(m, m)
        if m in ("cdpo", "robust"):
            name += f" (ε {flip if flip > 0 else 0.1})"
        print(f"| {flip:.0%} | {name} | {pref} | {ans} | {auc} | {share} | {secs} |")
print("\nWeight AUC and temporal share come from `metapo analyze` on the train split and exist for MetaPO runs"
      " only (the static weightings log no per-pair weights; the oracle's AUC is 1 by construction); at 0%"
      " flips the AUC is undefined.")
if ablation_note:
    print(ablation_note)
P
