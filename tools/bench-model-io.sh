#!/usr/bin/env bash
# Loading and saving a >= 1B-parameter model under parallel layouts (DESIGN §7b): peak resident memory
# and wall time per rank, sharded (what metapo does: each rank reads only its byte ranges and writes
# only its runs) beside the whole-model baseline (every rank reads and converts the whole model and
# cuts its shard; the save assembles the whole model on every rank of the replica and rank 0 writes).
#   tools/bench-model-io.sh [--model NAME] [--layers N] [--dir DIR] [--reps R]
# The model is configs/models/NAME.json (default tinyllama-1.1b: 1.1B parameters, 2.2 GB in bf16),
# written once by `metapo init --dtype bfloat16` into DIR (default build/bench-model-io/). Layouts: 1 rank;
# TP 2, PP 2; TP 4, PP 4 (the baseline at 1 and 2 ranks only: at 4 it would need 4 whole fp32 copies,
# more than this machine's memory). Each run saves in bfloat16, as `train --save-dtype bfloat16`
# writes final/. Prints one line per run and a markdown table of the maxima over the ranks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
name=tinyllama-1.1b layers=0 dir="$here/../build/bench-model-io" reps=1
while (($#)); do
  case "$1" in
    --model) name="$2"; shift 2 ;;
    --layers) layers="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "bench-model-io: unknown option $1" >&2; exit 2 ;;
  esac
done
# Before any work (a non-number would give an empty table after the models are built).
[[ "$reps" =~ ^[1-9][0-9]*$ ]] || { echo "bench-model-io: --reps $reps: not a positive whole number" >&2; exit 2; }
[[ "$layers" =~ ^[0-9]+$ ]] || { echo "bench-model-io: --layers $layers: not a whole number" >&2; exit 2; }
metapo="$here/../build/metapo" io="$here/../build/tools/bench_model_io"
[ -x "$metapo" ] && [ -x "$io" ] || { echo "bench-model-io: build first (tools/setup.sh)" >&2; exit 2; }
# shellcheck source=tools/out-dir.sh
source "$here/out-dir.sh"
claim_out --dir "$dir" "model-*"  # its out/ is replaced, its model-*/ kept: never a directory of the user's
cd "$dir"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
model="model-$name-$layers"
[ -f "$model/config.json" ] || "$metapo" init --preset "$name" --layers "$layers" --dtype bfloat16 --out "$model"
runs=("1 1 1 sharded" "1 1 1 full" "2 2 1 sharded" "2 2 1 full" "2 1 2 sharded" "2 1 2 full" "4 4 1 sharded" "4 1 4 sharded")
declare -A LOAD LPEAK SAVE SPEAK
for ((rep = 1; rep <= reps; ++rep)); do
  for r in "${runs[@]}"; do
    read -r np tp pp mode <<<"$r"
    rm -rf out
    # Cold reads where the page cache can be dropped (root): every run reads from the disk.
    sync; { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null || true
    line=$(mpirun -np "$np" "$io" "$model" out "$tp" "$pp" "$mode" | grep "^{")
    echo "rep $rep, $np rank(s), TP $tp x PP $pp, $mode: $line"
    read -r params l lp s sp < <(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(j['params'], j['load_s'], j['load_peak_mib'], j['save_s'], j['save_peak_mib'])" "$line")
    k="$np $tp $pp $mode"
    LOAD[$k]+="$l " LPEAK[$k]+="$lp " SAVE[$k]+="$s " SPEAK[$k]+="$sp "
  done
done
rm -rf out
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo
echo "$name ($params parameters, bf16 files; medians of $reps rep(s); peak RSS: the largest rank's high-water mark)"
echo
echo "| ranks | layout | load | load s | peak RSS after load MiB | save s | peak RSS after save MiB |"
echo "|---|---|---|---|---|---|---|"
for r in "${runs[@]}"; do
  read -r np tp pp mode <<<"$r"
  k="$np $tp $pp $mode"
  printf "| %d | TP %d x PP %d | %s | %.2f | %.0f | %.2f | %.0f |\n" "$np" "$tp" "$pp" "$mode" \
    "$(echo "${LOAD[$k]}" | median)" "$(echo "${LPEAK[$k]}" | median)" "$(echo "${SAVE[$k]}" | median)" "$(echo "${SPEAK[$k]}" | median)"
done
