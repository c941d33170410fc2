#!/usr/bin/env bash
# Quality benchmark: per-pair weighting under label noise on the built-in tasks. For every task, SFT
# strength and seed: init → SFT on the clean sft split (shared by all flip rates: synth's sft/val/test
# splits do not depend on --flip); for each flip rate: synth (FLIP of the train pairs flipped) →
# precompute-ref under the SFT model → train with every method → clean test preference accuracy
# (metapo eval), answer accuracy of greedy generations (metapo generate, first GEN_LIMIT test prompts),
# the mean effective sample size of the weights (metrics.jsonl weights/ess) and, for MetaPO, the weight
# AUC clean vs flipped and the temporal share of its decisions (metapo analyze).
# Methods: uniform (plain DPO), cdpo and robust (label smoothing = the flip rate, 0.1 at 0 flips), wpo,
# margin, metapo (META_ARGS), oracle (--weighting column: weight 1 for clean pairs, 1e-6 for flipped
# ones, i.e. the flipped pairs dropped; the column is written into a copy of the dataset), and the
# MetaPO feature ablations metapo-instantaneous / metapo-temporal when named in METHODS.
# Runs JOBS trainings at a time (one thread each by default) and resumes: a run whose line is already
# in $OUT/results.jsonl is not run again, so the same command continues a benchmark that stopped.
# Prints one progress line per run ([done/total], elapsed, ETA), then a markdown table (mean ± std over
# seeds per task × SFT strength × flip rate × method) and the checks of docs/results.md, saved to
# $OUT/results.md, with the grid's figure in $OUT/results.png when matplotlib is there (PLOTS=1); the
# raw JSON lines are in $OUT/results.jsonl; everything else stays under $OUT.
#   tools/bench-quality.sh                                                    # the whole grid: hours
#   EPOCHS=1 FLIPS=0.4 METHODS="uniform metapo oracle" tools/bench-quality.sh  # the single-epoch column
#   TASKS=sort STRENGTHS=3 FLIPS=0.4 SEEDS=1 METHODS="uniform metapo oracle" N_TRAIN=512 N_VAL=64 \
#     N_TEST=128 N_SFT=512 OUT=/tmp/bq tools/bench-quality.sh                  # smoke run, about a minute
#   TABLE_ONLY=1 OUT=runs/quality tools/bench-quality.sh                       # the table from results.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/mpi-env.sh
M=${METAPO:-$PWD/build/metapo}  # the binary under test (METAPO: e.g. a copy, so that build/ can change)
# TASK and SFT_EPOCHS (one task, one SFT strength) are the names of earlier versions.
TASKS=${TASKS:-${TASK:-"sort reverse add"}}
STRENGTHS=${STRENGTHS:-${SFT_EPOCHS:-"3 1"}}  # SFT epochs: the demo's 3 and a clearly weaker 1
FLIPS=${FLIPS:-"0.4 0 0.2"}    # in this order: the 40% cells first
SEEDS=${SEEDS:-"1 2 3"}
METHODS=${METHODS:-"uniform cdpo robust wpo margin metapo oracle"}
EPOCHS=${EPOCHS:-3}  # the Hugging Face Trainer default
LR=${LR:-5e-5}
BATCH=${BATCH:-32}
MICRO=${MICRO:-32}
JOBS=${JOBS:-2}                               # trainings at a time
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "error: JOBS=$JOBS: not a positive whole number" >&2; exit 1; }
THREADS=${THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}  # OpenMP threads of each
N_TRAIN=${N_TRAIN:-4000}
N_VAL=${N_VAL:-256}
N_TEST=${N_TEST:-512}
N_SFT=${N_SFT:-2000}
GEN_LIMIT=${GEN_LIMIT:-256}
META_ARGS=${META_ARGS:-}  # extra `metapo train` options for MetaPO (none: its defaults)
TRAIN_ARGS=${TRAIN_ARGS:-}  # extra `metapo train` options for every method's DPO run (not SFT), e.g. --beta 0.3
SYNTH_ARGS=${SYNTH_ARGS:-}  # extra `metapo synth` options (the task's settings) for every dataset, SFT's too,
                            # e.g. "--hard-fraction 1" or "--min-len 2 --max-len 5"
PLOTS=${PLOTS:-1}         # tools/plot.py per task, strength, seed and flip when matplotlib is there
OUT=${OUT:-runs/quality}
TABLE_ONLY=${TABLE_ONLY:-0}
log() { echo "$*" >&2; }
recorded() { sed -n "s/^$1=//p" "$OUT/options"; }  # a setting as OUT/options records it

for m in $METHODS; do
  case "$m" in uniform|cdpo|robust|wpo|margin|metapo|oracle|metapo-instantaneous|metapo-temporal) ;;
    *) log "error: METHODS: unknown method '$m'"; exit 1 ;; esac
done
# cdpo and robust choose their own loss; another --loss for them would be a second, conflicting one.
if [[ " $TRAIN_ARGS " == *" --loss"* ]]; then
  for m in $METHODS; do
    case "$m" in cdpo|robust) log "error: TRAIN_ARGS: --loss cannot be combined with METHODS '$m', which sets its own loss"; exit 1 ;; esac
  done
fi
# The script sets the task, flip rate, seed, split sizes and file of every synth call itself.
for w in $SYNTH_ARGS; do
  case "$w" in --task*|--flip*|--seed*|--n-*|--out*|--config*)
    log "error: SYNTH_ARGS: '$w' is set by the script (TASKS, FLIPS, SEEDS, N_*); give only the task's settings"; exit 1 ;; esac
done
for t in $TASKS; do
  case "$t" in sort|reverse|add) ;; *) log "error: TASKS: unknown task '$t' (sort, reverse, add)"; exit 1 ;; esac
done
for e in $STRENGTHS $EPOCHS; do
  [[ "$e" =~ ^[1-9][0-9]*$ ]] || { log "error: STRENGTHS and EPOCHS take positive whole numbers of epochs (got '$e')"; exit 1; }
done
# Whole numbers, and the learning rate a number: anything else would reach metapo (or the results
# lines) only inside the workers.
for v in SEEDS THREADS BATCH MICRO N_TRAIN N_VAL N_TEST N_SFT GEN_LIMIT; do
  for x in ${!v}; do
    [[ "$x" =~ ^[0-9]+$ ]] || { log "error: $v: '$x' is not a whole number"; exit 1; }
  done
done
for v in THREADS BATCH MICRO N_TRAIN N_VAL N_TEST N_SFT; do
  [ "${!v}" -gt 0 ] || { log "error: $v: must be positive"; exit 1; }
done
python3 -c "import math, sys; sys.exit(0 if math.isfinite(float(sys.argv[1])) and float(sys.argv[1]) > 0 else 1)" "$LR" 2>/dev/null ||
  { log "error: LR: '$LR' is not a positive number"; exit 1; }
for f in $FLIPS; do
  python3 -c "import sys; f = float(sys.argv[1]); sys.exit(0 if 0 <= f < 0.5 else 1)" "$f" 2>/dev/null ||
    { log "error: FLIPS: '$f' is not a flip rate in [0, 0.5)"; exit 1; }
done
# OUT only once the settings are known to be valid: a refused call creates nothing. TABLE_ONLY=1
# reads a tree that must be there.
if [ "$TABLE_ONLY" = 1 ] && [ ! -f "$OUT/results.jsonl" ]; then log "error: TABLE_ONLY=1: $OUT/results.jsonl does not exist"; exit 1; fi
tools/setup.sh >/dev/null  # after the checks: a refused call builds nothing
[ -x "$M" ] || { echo "error: METAPO: $M is not an executable" >&2; exit 1; }
if [ -n "$SYNTH_ARGS" ] && [ "$TABLE_ONLY" != 1 ]; then  # a bad value fails here, not in every worker
  chk=$(mktemp -d)
  for t in $TASKS; do
    # shellcheck disable=SC2086
    $M synth --task "$t" --seed 1 --n-train 8 --n-val 2 --n-test 2 --n-sft 2 $SYNTH_ARGS --out "$chk/c.h5" >/dev/null 2>"$chk/err" ||
      { log "error: SYNTH_ARGS: $(grep -m1 'error' "$chk/err" || head -n 1 "$chk/err")"; rm -rf "$chk"; exit 1; }
    rm -f "$chk/c.h5"
  done
  rm -rf "$chk"
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# One training with its evaluations: task strength seed flip method → one JSON line in results.jsonl.
# Called by the workers below (exported), so it takes everything else from the environment.
one_run() {
  local task=$1 strength=$2 seed=$3 flip=$4 method=$5
  local s="$OUT/$task/sft$strength/seed$seed" d r data args t0 train_s ev gen an ess
  d="$s/flip$flip"
  r="$d/$method-e$EPOCHS"
  data="$d/data.h5"
  case "$method" in
    uniform) args="--weighting uniform" ;;
    cdpo|robust) args="--loss $method --label-smoothing $(python3 -c "import sys; f = float(sys.argv[1]); print(f if f > 0 else 0.1)" "$flip")" ;;
    wpo|margin) args="--weighting $method" ;;
    metapo) args="--weighting metapo $META_ARGS" ;;
    metapo-*) args="--weighting metapo $META_ARGS --meta-features ${method#metapo-}" ;;
    oracle) args="--weighting column --weight-column oracle"; data="$d/oracle.h5" ;;
  esac
  t0=$(date +%s.%N)
  rm -rf "$r"
  # shellcheck disable=SC2086
  $M train --model "$s/sft/final" --data "$data" --out "$r" $args $TRAIN_ARGS --epochs "$EPOCHS" --batch-size "$BATCH" \
    --micro-batch "$MICRO" --lr "$LR" --seed "$seed" > "$r.log" 2>&1 || { log "error: training failed, see $r.log"; return 1; }
  train_s=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$t0" "$(date +%s.%N)")
  ev=$($M eval --model "$r/final" --data "$d/data.h5" --split test | tail -n 1)
  gen=$($M generate --model "$r/final" --data "$d/data.h5" --split test --greedy --max-new-tokens 16 \
    --limit "$GEN_LIMIT" --output "$r/gen.jsonl" 2>/dev/null | tail -n 1)
  an=null
  [[ "$method" == metapo* ]] && an=$($M analyze --run "$r" --data "$d/data.h5" 2>/dev/null | tail -n 1)
  ess=$(python3 -c "
import json, sys
v = [json.loads(l).get('weights/ess') for l in open(sys.argv[1]) if '\"weights/ess\"' in l]
v = [x for x in v if x is not None]
print(sum(v) / len(v) if v else 'null')" "$r/metrics.jsonl")
  # One write of one line (under the lock), so parallel workers never interleave their lines.
  flock "$OUT/.lock" bash -c 'cat >> "$1"' _ "$OUT/results.jsonl" <<EOF
{"task": "$task", "sft_epochs": $strength, "seed": $seed, "flip": $flip, "epochs": $EPOCHS, "method": "$method", "train_s": $train_s, "ess": $ess, "batch": $BATCH, "eval": $ev, "gen": $gen, "analyze": $an}
EOF
}

# The inputs of one (task, strength, seed): the SFT model and its answer accuracy; of one flip rate:
# the data with reference log-probs and its oracle copy. Made once, under a lock, by whichever
# worker needs them first; written under a temporary name and renamed, so a stopped benchmark never
# leaves a half-made input behind that a later run would trust.
ensure_inputs() {
  local task=$1 strength=$2 seed=$3 flip=$4
  local s="$OUT/$task/sft$strength/seed$seed" d sft_gen
  d="$s/flip$flip"
  mkdir -p "$d"
  exec 9> "$s/.lock"
  flock 9
  if [ ! -f "$s/sft.done" ]; then
    rm -rf "$s/sft" "$s/init"
    $M synth --task "$task" --flip 0 --seed "$seed" --n-train "$N_TRAIN" --n-val "$N_VAL" --n-test "$N_TEST" \
      --n-sft "$N_SFT" $SYNTH_ARGS --out "$s/sft-data.h5" > /dev/null
    $M init --preset tiny --out "$s/init" --seed "$seed" > /dev/null
    $M sft --model "$s/init" --data "$s/sft-data.h5" --out "$s/sft" --epochs "$strength" --batch-size 32 \
      --micro-batch 32 --lr 1e-3 --seed "$seed" > "$s/sft.log" 2>&1
    sft_gen=$($M generate --model "$s/sft/final" --data "$s/sft-data.h5" --split test --greedy --max-new-tokens 16 \
      --limit "$GEN_LIMIT" --output "$s/sft.gen.jsonl" 2>/dev/null | tail -n 1)
    echo "$sft_gen" > "$s/sft.done"
  fi
  if [ ! -f "$d/data.done" ]; then
    rm -f "$d/data.h5" "$d/oracle.h5" "$d/tmp.h5"
    $M synth --task "$task" --flip "$flip" --seed "$seed" --n-train "$N_TRAIN" --n-val "$N_VAL" --n-test "$N_TEST" \
      --n-sft "$N_SFT" $SYNTH_ARGS --out "$d/tmp.h5" > "$d/synth.log"
    $M precompute-ref --model "$s/sft/final" --data "$d/tmp.h5" > /dev/null
    mv "$d/tmp.h5" "$d/data.h5"
    # oracle weights: 1 clean, 1e-6 flipped (a batch's sum stays > 0)
    cp "$d/data.h5" "$d/tmp.h5"
    python3 - "$d/tmp.h5" <<'P'
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r+") as f:
    q = f["train/quality"][()]
    f.create_dataset("train/columns/oracle", data=np.where(q >= 0.5, 1.0, 1e-6).astype(np.float32))
P
    mv "$d/tmp.h5" "$d/oracle.h5"
    touch "$d/data.done"
  fi
  exec 9>&-
  # The SFT model's own line (answer accuracy of the reference), once per flip rate.
  flock "$OUT/.lock" bash -c '
    grep -q "\"task\": \"$2\", \"sft_epochs\": $3, \"seed\": $4, \"flip\": $5, \"epochs\": $6, \"method\": \"sft\"" "$1" 2>/dev/null ||
      echo "{\"task\": \"$2\", \"sft_epochs\": $3, \"seed\": $4, \"flip\": $5, \"epochs\": $6, \"method\": \"sft\", \"eval\": null, \"gen\": $7, \"analyze\": null}" >> "$1"' \
    _ "$OUT/results.jsonl" "$task" "$strength" "$seed" "$flip" "$EPOCHS" "$(cat "$s/sft.done")"
}

worker() {  # one job line: index task strength seed flip method
  local k=$1; shift
  local t0=$SECONDS
  export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=1
  ensure_inputs "$1" "$2" "$3" "$4"
  one_run "$@"
  local line
  line=$(grep "\"task\": \"$1\", \"sft_epochs\": $2, \"seed\": $3, \"flip\": $4, \"epochs\": $EPOCHS, \"method\": \"$5\"" \
    "$OUT/results.jsonl" | tail -n 1)
  python3 - "$line" "$k" "$TOTAL" "$START" "$((SECONDS - t0))" <<'P' >&2
import json, sys, time
r = json.loads(sys.argv[1]); k, total, start, secs = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
f = lambda v: "—" if v is None else f"{v:.3f}"
an = r["analyze"] or {}
msg = (f"[{k}/{total}] {r['task']} sft{r['sft_epochs']} seed {r['seed']} flip {r['flip']} {r['method']}:"
       f" pref_acc {f(r['eval']['pref_acc'])} answer_acc {f(r['gen']['answer_accuracy'])}")
if r["analyze"]:
    msg += f" weight_auc {f(an.get('quality_auc'))} temporal_share {f(an.get('temporal_share'))}"
if r.get("ess") is not None:
    msg += f" ess {r['ess']:.1f}/{r['batch']}"
el = time.time() - start
print(msg + f" ({secs} s; elapsed {el / 60:.0f} min)")
P
}

if [ "$TABLE_ONLY" != 1 ]; then
  # The settings a tree's runs were made with (OUT/options): a resume with other ones would mix two
  # benchmarks in one table. (A tree of an earlier version, without the file, takes this call's; a
  # setting the file does not name is not checked.)
  settings="LR BATCH MICRO N_TRAIN N_VAL N_TEST N_SFT GEN_LIMIT META_ARGS TRAIN_ARGS SYNTH_ARGS"
  if [ -f "$OUT/options" ]; then
    differs=""
    for v in $settings; do
      grep -q "^$v=" "$OUT/options" || [ "$v" = SYNTH_ARGS ] || continue  # trees before SYNTH_ARGS had none
      was=$(recorded "$v")
      [ "$was" = "${!v}" ] || differs+=" $v=\"${!v}\" (its runs: \"$was\")"
    done
    [ -z "$differs" ] || { log "error: OUT $OUT: its runs were made with other settings:$differs; use another OUT"; exit 1; }
  else
    for v in $settings; do printf '%s=%s\n' "$v" "${!v}"; done > "$OUT/options"
  fi
  touch "$OUT/results.jsonl"
  export M OUT EPOCHS LR BATCH MICRO N_TRAIN N_VAL N_TEST N_SFT GEN_LIMIT META_ARGS TRAIN_ARGS SYNTH_ARGS THREADS
  export -f one_run ensure_inputs worker log
  jobs_file="$OUT/.jobs"
  : > "$jobs_file"
  n=0
  todo=0
  for flip in $FLIPS; do
    for task in $TASKS; do
      for strength in $STRENGTHS; do
        for seed in $SEEDS; do
          for method in $METHODS; do
            n=$((n + 1))
            if grep -q "\"task\": \"$task\", \"sft_epochs\": $strength, \"seed\": $seed, \"flip\": $flip, \"epochs\": $EPOCHS, \"method\": \"$method\"" \
              "$OUT/results.jsonl"; then continue; fi
            todo=$((todo + 1))
            echo "$todo $task $strength $seed $flip $method" >> "$jobs_file"
          done
        done
      done
    done
  done
  log "bench-quality: $todo of $n runs to do ($((n - todo)) already in $OUT/results.jsonl); $JOBS at a time, $THREADS thread(s) each"
  export TOTAL=$todo START
  START=$(date +%s)
  # xargs keeps going past a failed run and exits non-zero at the end; the table shows what finished.
  # -r: with nothing to do (a finished grid run again) no worker starts.
  rc=0
  # -e in each worker: a failed step (synth, sft, eval, ...) ends its job before it marks an input
  # done or writes a results line.
  xargs -r -P "$JOBS" -L 1 bash -c 'set -eo pipefail; worker "$@"' _ < "$jobs_file" || rc=$?
  [ "$rc" = 0 ] || log "bench-quality: some runs failed (see the error lines above); run the same command again to retry them"
  if [ "${PLOTS}" = 1 ] && python3 -c "import matplotlib" 2>/dev/null; then
    # The cells this invocation ran (not every cell under OUT again).
    while read -r task strength seed flip; do
      d="$OUT/$task/sft$strength/seed$seed/flip$flip"
      runs=()
      for m in uniform metapo oracle; do [ -f "$d/$m-e$EPOCHS/metrics.jsonl" ] && runs+=("$d/$m-e$EPOCHS"); done
      [ ${#runs[@]} -gt 0 ] && python3 tools/plot.py "${runs[@]}" --out "$d/plots-e$EPOCHS" > "$d/plots.log" 2>&1 || true
    done < <(cut -d' ' -f2-5 "$jobs_file" | sort -u)
  fi
fi

# The caption names the options the tree's runs were made with (TABLE_ONLY=1 needs none given).
if [ -f "$OUT/options" ]; then
  META_ARGS=$(recorded META_ARGS)
  TRAIN_ARGS=$(recorded TRAIN_ARGS)
  SYNTH_ARGS=$(recorded SYNTH_ARGS)
fi
plot=()
if [ "${PLOTS}" = 1 ] && python3 -c "import matplotlib" 2>/dev/null; then plot=(--plot "$OUT/results.png"); fi
# results.md is replaced only by a table that was made (a failed one leaves the last good table).
python3 tools/quality_table.py "$OUT/results.jsonl" --meta-args "$META_ARGS" --train-args "$TRAIN_ARGS" --synth-args "$SYNTH_ARGS" "${plot[@]}" \
  > "$OUT/results.md.partial" || { rm -f "$OUT/results.md.partial"; exit 1; }
mv "$OUT/results.md.partial" "$OUT/results.md"
cat "$OUT/results.md"
