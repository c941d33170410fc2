#!/usr/bin/env bash
# Activation recomputation (--recompute): step time and activation memory of none, selective and
# full side by side, in interleaved rounds of `metapo bench` (forward + backward of one packed
# micro-batch, like a training micro-batch).
#   tools/bench-recompute.sh [--preset bench-28m] [--seq-len 256] [--batch 8] [--rounds 3] [--steps 3]
# Prints one line per run and a table: the median ms per step over rounds, the ratio to none measured
# in the same rounds, and the activation memory the model holds (MiB). Results are bit-identical
# across the modes (tests/cli/recompute.sh), so only time and memory differ.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
preset=bench-28m T=256 B=8 rounds=3 steps=3
while (($#)); do
  case "$1" in
    --preset) preset="$2"; shift 2 ;;
    --seq-len) T="$2"; shift 2 ;;
    --batch) B="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    -h|--help) sed -n 2,8p "$0"; exit 0 ;;
    *) echo "bench-recompute: unknown option $1" >&2; exit 2 ;;
  esac
done
metapo="$here/../build/metapo"
[ -x "$metapo" ] || { echo "bench-recompute: build first (tools/setup.sh)" >&2; exit 2; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
declare -A MS MB
for ((r = 1; r <= rounds; ++r)); do
  for mode in none selective full; do
    j=$("$metapo" bench --preset "$preset" --seq-len "$T" --batch "$B" --steps "$steps" --warmup 1 --recompute "$mode" | tail -1)
    read -r ms mb < <(python3 -c "import json,sys; j=json.loads(sys.argv[1]); print(j['ms_per_step'], j['activation_mb'])" "$j")
    echo "round $r, $mode: $ms ms/step, activations $mb MiB"
    MS[$mode]+="$ms " MB[$mode]=$mb
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
base=$(echo "${MS[none]}" | median)
echo
echo "$preset, $B x $T tokens, $OMP_NUM_THREADS threads, medians of $rounds rounds"
echo
echo "| --recompute | ms/step | vs none | activations MiB | vs none |"
echo "|---|---|---|---|---|"
for mode in none selective full; do
  ms=$(echo "${MS[$mode]}" | median)
  printf "| %s | %.0f | %.2fx | %.0f | %.2fx |\n" "$mode" "$ms" "$(echo "$ms / $base" | bc -l)" "${MB[$mode]}" \
    "$(echo "${MB[$mode]} / ${MB[none]}" | bc -l)"
done
