#!/usr/bin/env bash
# tools/plot.py end to end on a tiny pipeline (synth → init → sft → precompute-ref → a uniform and a
# MetaPO run with --meta-trace → analyze): curves/weights_hist/attribution/trajectories/alignment PNGs
# exist and are PNG files;
# a run without analyze inputs skips those plots with a message; a missing run dir or metrics file,
# a bad --windows/--pairs-per-group/--data/--out (checked before anything is drawn or made) and a
# malformed line of each input file fail with one error line and no traceback. Skipped (exit 0) when
# python3 lacks matplotlib.
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

ls plots | grep -v '\.png$' && fail "plots/ holds more than the PNGs (a temporary file left behind?)"

# Bad inputs: one error line, non-zero exit, no traceback.
expect_error1() {
  expect_error "$@"
  ! grep -q Traceback err.txt || { cat err.txt; fail "a traceback: ${*:2}"; }
  [ "$(grep -c 'error:' err.txt)" -eq 1 ] || { cat err.txt; fail "not one error line: ${*:2}"; }
}
expect_error1 "run directory nosuch not found" python3 "$PLOT" nosuch
mkdir -p notarun
expect_error1 "notarun/metrics.jsonl not found" python3 "$PLOT" notarun
# Options and the output directory are checked before anything is drawn: nothing is made.
expect_error1 "--windows 0: must be at least 1" python3 "$PLOT" meta --out w0 --data d.h5 --windows 0
expect_error1 "--windows -1: must be at least 1" python3 "$PLOT" meta --out w0 --data d.h5 --windows -1
expect_error1 "--pairs-per-group -1: must be at least 1" python3 "$PLOT" meta --out w0 --pairs-per-group -1
expect_error1 "--data nosuch.h5: no such file" python3 "$PLOT" meta --out w0 --data nosuch.h5
[ ! -e w0 ] || fail "a refused call made its --out directory"
echo "a file" > afile
expect_error1 "--out afile: exists and is not a directory" python3 "$PLOT" uni --out afile
expect_error1 "--out afile/sub: cannot make the directory" python3 "$PLOT" uni --out afile/sub
[ "$(cat afile)" = "a file" ] || fail "--out afile changed the file"
# Malformed lines of a run's files: one error line naming the file and line; a failed call leaves no
# directory of its own behind.
mkdir -p bad
{ head -n 2 uni/metrics.jsonl; echo '[1, 2]'; tail -n 1 uni/metrics.jsonl; } > bad/metrics.jsonl
expect_error1 "bad/metrics.jsonl:3: not a JSON object" python3 "$PLOT" bad --out pb
[ ! -e pb ] || fail "a failed call left its --out directory behind"
cp uni/metrics.jsonl bad/
{ head -n 1 meta/pair_weights.jsonl; echo '{"weight": "high", "quality": 1}'; } > bad/pair_weights.jsonl
expect_error1 "bad/pair_weights.jsonl:2: 'weight' is not a number" python3 "$PLOT" bad --out pb
rm bad/pair_weights.jsonl
echo '{"attribution": {"features": ["a", "b"], "temporal": [true], "integrated_gradients": {"mean_abs": [1, 2]},' \
  '"permutation": {"mean_abs": [1, 2]}}}' > bad/analysis.json
expect_error1 "bad/analysis.json: not an analysis.json" python3 "$PLOT" bad --out pb
rm bad/analysis.json
echo '{"step": 1, "pairs": [{"margin": 0.5}]}' > bad/trajectories.jsonl
expect_error1 "bad/trajectories.jsonl:1: a pair's 'sample_id' is not an integer" python3 "$PLOT" bad --out pb
rm bad/trajectories.jsonl
{ head -n 1 meta/meta_trace.jsonl; echo '{"step": 99, "a": [1, 1], "s": [0.5], "sample_id": [0, 1], "raw": [0, 0]}'; } \
  > bad/meta_trace.jsonl
expect_error1 "bad/meta_trace.jsonl:2: 's' has 1 entries, not 2" python3 "$PLOT" bad --out pb --data d.h5
# A malformed input found by a later figure (trajectories.png, after curves.png): no PNG of the call is
# left, its own --out is removed, and an earlier call's PNGs in an existing --out stay as they were.
rm bad/meta_trace.jsonl
echo '{"step": 1, "pairs": [{"margin": 0.5}]}' > bad/trajectories.jsonl
expect_error1 "bad/trajectories.jsonl:1" python3 "$PLOT" bad --out pb
[ ! -e pb ] || fail "a call that failed at a later figure left $(ls pb) behind"
mkdir -p kept && echo "earlier" > kept/curves.png
expect_error1 "bad/trajectories.jsonl:1" python3 "$PLOT" bad --out kept
[ "$(cat kept/curves.png)" = earlier ] && [ "$(ls -A kept)" = curves.png ] || fail "a failed call changed kept/: $(ls -A kept)"
echo "ok: a failure at a later figure leaves no PNG"
