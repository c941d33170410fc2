#!/usr/bin/env bash
# The hang watchdog counts a long collective pass as progress: an evaluation far longer than a fixed
# --hang-timeout (every pass over the validation split, here 6000 pairs, takes seconds while a step
# takes milliseconds) completes instead of being reported as a hang, because each chunk of pairs
# reports progress. (A stopped rank is detected: tests/cli/slurm_requeue.sh.)
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --flip 0.3 --seed 1 --n-train 64 --n-val 6000 --n-test 8 --n-sft 8 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 2 >/dev/null
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
rc=0
$MPIRUN 2 "$METAPO" train --model init --data d.h5 --out ev --batch-size 8 --micro-batch 8 --max-steps 4 --eval-every 2 \
  --hang-timeout 1 >ev.log 2>&1 || rc=$?
[ "$rc" -eq 0 ] || { cat ev.log; fail "a long evaluation under --hang-timeout 1 ended with exit status $rc"; }
[ "$(grep -c '^eval ' ev.log)" -eq 2 ] || { cat ev.log; fail "expected two evaluations"; }
echo "ok: evaluations of several seconds under --hang-timeout 1"
