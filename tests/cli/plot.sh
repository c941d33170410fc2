#!/usr/bin/env bash
# tools/plot.py end to end on a tiny pipeline (synth → init → sft → precompute-ref → a uniform and a
# MetaPO run with --meta-trace → analyze): curves/weights_hist/attribution/trajectories/alignment PNGs
# exist and are PNG files;
# a run without analyze inputs skips those plots with a message; a missing run dir or metrics file
# fails with one error line. Skipped (exit 0) when python3 lacks matplotlib.
source "$(dirname "$0")/common.sh"
PLOT="$SRC/tools/plot.py"
if ! python3 -c "import matplotlib" 2>/dev/null; then
  echo "skipped: matplotlib missing"
  exit 0
fi
"$METAPO" synth --task sort --flip 0.4 --seed 1 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 1 >/dev/null
"$METAPO" sft --model init --data d.h5 --out sft --max-steps 4 --batch-size 16 --micro-batch 16 --lr 1e-3 >/dev/null
"$METAPO" precompute-ref --model sft/final --data d.h5 >/dev/null
common="--model sft/final --data d.h5 --batch-size 16 --micro-batch 16 --epochs 3 --eval-every 4"
"$METAPO" train $common --out uni >/dev/null
"$METAPO" train $common --out meta --weighting metapo --meta-val-batch 16 \
  --stats-refresh-every 1 --stats-refresh-pairs 16 --meta-trace meta/meta_trace.jsonl >/dev/null
"$METAPO" analyze --run meta --data d.h5 --ig-steps 8 --permutation-repeats 1 >/dev/null

python3 "$PLOT" uni meta --out plots --data d.h5 --windows 4 > plot.log 2>&1 || { cat plot.log; fail "tools/plot.py uni meta failed"; }
cat plot.log
check_png() {
  [ -s "$1" ] || fail "$1 missing or empty"
  [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] || fail "$1 is not a PNG"
  echo "ok: $1 ($(stat -c %s "$1") bytes)"
}
check_png plots/curves.png
check_png plots/weights_hist.png
check_png plots/attribution.png
check_png plots/alignment.png
if [ -f meta/trajectories.jsonl ]; then
  check_png plots/trajectories.png
else
  grep -q "skipped trajectories.png" plot.log || fail "no trajectories.jsonl, but no skip message"
fi

# A run without analyze outputs: curves only, the rest skipped with a message; default --out RUN/plots.
rm -f uni/trajectories.jsonl
python3 "$PLOT" uni > uni.log 2>&1 || { cat uni.log; fail "tools/plot.py uni failed"; }
check_png uni/plots/curves.png
for p in weights_hist attribution trajectories alignment; do
  grep -q "skipped $p.png" uni.log || { cat uni.log; fail "no skip message for $p.png"; }
  [ ! -e "uni/plots/$p.png" ] || fail "uni/plots/$p.png written without its input"
done
echo "ok: plots without inputs skipped"

# Bad inputs: one error line, non-zero exit.
expect_error "run directory nosuch not found" python3 "$PLOT" nosuch
mkdir -p notarun
expect_error "notarun/metrics.jsonl not found" python3 "$PLOT" notarun
