#!/usr/bin/env bash
# tools/bench-quality.sh on a grid of two runs (sort, 1 SFT epoch, 40% flips, uniform and MetaPO, tiny
# splits, 1 DPO epoch): one results line per run; TRAIN_ARGS reaches every method's DPO run and not the
# SFT run; the same command resumes with nothing left to do; a resume with other settings, and a --loss
# in TRAIN_ARGS beside a method that sets its own, fail with one error line before any work; with
# TABLE_ONLY=1 the caption names the tree's options; SYNTH_ARGS reaches every synth call.
# (Accuracies are not checked: the quality figures are benchmarks, not tests.)
source "$(dirname "$0")/common.sh"
BQ="$SRC/tools/bench-quality.sh"
# The grid of this test, with the environment given before it: a script, so that expect_error (which
# runs a command, not a shell function) can run it too.
cat > bq.sh <<EOF
#!/usr/bin/env bash
exec env METAPO="$METAPO" OUT="$WORK/q" TASKS=sort STRENGTHS=1 FLIPS=0.4 SEEDS=7 METHODS="uniform metapo" EPOCHS=1 \\
  N_TRAIN=128 N_VAL=32 N_TEST=32 N_SFT=128 GEN_LIMIT=8 JOBS=1 THREADS=1 PLOTS=0 "\$@" bash "$BQ"
EOF
chmod +x bq.sh
./bq.sh TRAIN_ARGS="--beta 0.2" SYNTH_ARGS="--max-len 6" > table.md 2> progress.txt || { cat progress.txt; fail "bench-quality.sh failed"; }
grep -q "2 of 2 runs to do" progress.txt || { cat progress.txt; fail "no '2 of 2 runs to do' line"; }
[ "$(grep -c '^\[[12]/2\] sort sft1 seed 7 flip 0.4' progress.txt)" -eq 2 ] || { cat progress.txt; fail "expected two progress lines"; }
# One line per run, and the SFT model's own line.
[ "$(grep -c '"method": "uniform"' q/results.jsonl)" -eq 1 ] && [ "$(grep -c '"method": "metapo"' q/results.jsonl)" -eq 1 ] &&
  [ "$(wc -l < q/results.jsonl)" -eq 3 ] || { cat q/results.jsonl; fail "expected the uniform, metapo and sft lines in results.jsonl"; }
grep -q "every method: --beta 0.2" table.md || { cat table.md; fail "the table's caption lacks TRAIN_ARGS"; }
grep -q "task settings: metapo synth --max-len 6" table.md || { cat table.md; fail "the table's caption lacks SYNTH_ARGS"; }
d=q/sort/sft1/seed7/flip0.4
for f in "$d/data.h5" "$(dirname "$d")/sft-data.h5"; do  # SYNTH_ARGS reached both datasets
  h5dump -a /source "$f" | grep -q -- "--max-len 6 " || fail "$f: SYNTH_ARGS did not reach its synth"
done
for m in uniform metapo; do
  python3 - "$d/$m-e1/run.json" <<'P' || fail "$m: --beta 0.2 did not reach the DPO run"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["beta"] == 0.2, j["beta"]
P
done
grep -q -- "--beta" "$(dirname "$d")/sft/run.json" 2>/dev/null && fail "TRAIN_ARGS reached the SFT run"
echo "ok: two runs, --beta 0.2 in both DPO runs and not in SFT"

# The same command again: nothing to do, the same lines.
./bq.sh TRAIN_ARGS="--beta 0.2" SYNTH_ARGS="--max-len 6" > /dev/null 2> again.txt || { cat again.txt; fail "the resume failed"; }
grep -q "0 of 2 runs to do" again.txt || { cat again.txt; fail "the resume ran something again"; }
[ "$(wc -l < q/results.jsonl)" -eq 3 ] || fail "the resume changed results.jsonl"
echo "ok: the resume had nothing to do"
# The table alone names the tree's options without being given them.
./bq.sh TABLE_ONLY=1 > only.md 2>&1 || { cat only.md; fail "TABLE_ONLY=1 failed"; }
grep -q "every method: --beta 0.2; task settings: metapo synth --max-len 6" only.md ||
  { cat only.md; fail "TABLE_ONLY=1: the caption lacks the tree's TRAIN_ARGS and SYNTH_ARGS"; }

# Other settings on the same tree, and a --loss beside cdpo: one error line, nothing run.
cp q/results.jsonl before.jsonl
expect_error "OUT $WORK/q: its runs were made with other settings: TRAIN_ARGS=\"--beta 0.3\" (its runs: \"--beta 0.2\")" \
  ./bq.sh TRAIN_ARGS="--beta 0.3" SYNTH_ARGS="--max-len 6"
expect_error "other settings: SYNTH_ARGS=\"\" (its runs: \"--max-len 6\")" ./bq.sh TRAIN_ARGS="--beta 0.2"
expect_error "other settings: META_ARGS=\"--meta-lr 1e-3\" (its runs: \"\")" ./bq.sh TRAIN_ARGS="--beta 0.2" SYNTH_ARGS="--max-len 6" \
  META_ARGS="--meta-lr 1e-3"
expect_error "other settings: LR=\"1e-4\" (its runs: \"5e-5\") N_TRAIN=\"256\" (its runs: \"128\")" \
  ./bq.sh TRAIN_ARGS="--beta 0.2" SYNTH_ARGS="--max-len 6" LR=1e-4 N_TRAIN=256
expect_error "TRAIN_ARGS: --loss cannot be combined with METHODS 'cdpo'" \
  ./bq.sh OUT="$WORK/q2" TRAIN_ARGS="--loss ipo" METHODS="uniform cdpo"
cmp -s before.jsonl q/results.jsonl || fail "a refused call changed results.jsonl"
[ -e q2 ] && fail "a refused call created its OUT"
# Settings that would reach metapo or the results lines only inside the workers: refused up front.
expect_error "SEEDS: 'x' is not a whole number" ./bq.sh OUT="$WORK/q3" SEEDS=x
expect_error "JOBS=0: not a positive whole number" ./bq.sh OUT="$WORK/q3" JOBS=0
expect_error "LR: 'abc' is not a positive number" ./bq.sh OUT="$WORK/q3" LR=abc
expect_error "N_TRAIN: 'abc' is not a whole number" ./bq.sh OUT="$WORK/q3" N_TRAIN=abc
expect_error "TABLE_ONLY=1: $WORK/q3/results.jsonl does not exist" ./bq.sh OUT="$WORK/q3" TABLE_ONLY=1
expect_error "SYNTH_ARGS: '--seed' is set by the script" ./bq.sh OUT="$WORK/q3" SYNTH_ARGS="--seed 3"
expect_error "SYNTH_ARGS: .*--hard-fraction" ./bq.sh OUT="$WORK/q3" SYNTH_ARGS="--hard-fraction 2"
[ -e q3 ] && fail "a refused call created its OUT"
# A failing step inside a worker ends its job before it marks an input done or writes a line: a
# metapo that fails at sft (the inputs' step) leaves no sft.done and no results line.
cat > failing-metapo <<EOF2
#!/usr/bin/env bash
[ "\$1" = sft ] && exit 1
exec "$METAPO" "\$@"
EOF2
chmod +x failing-metapo
./bq.sh OUT="$WORK/q4" METAPO="$WORK/failing-metapo" >/dev/null 2>q4.err && fail "a failing sft was not reported"
[ ! -e q4/sort/sft1/seed7/sft.done ] || fail "a failed sft was marked done"
[ ! -s q4/results.jsonl ] || fail "a failed job wrote a results line: $(cat q4/results.jsonl)"
echo "ok: refused calls left the tree alone"
