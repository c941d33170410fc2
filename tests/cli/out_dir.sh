#!/usr/bin/env bash
# tools/out-dir.sh, which the benchmark scripts and tools/demo.sh use before they empty or write
# into their OUT: a directory of the user's, or a file, is refused and left as it was; an absent or
# empty directory, one with the scripts' .metapo-out marker and one with the script's own earlier
# output (SIGN) are taken, and fresh_out empties them.
source "$(dirname "$0")/common.sh"
source "$SRC/tools/out-dir.sh"
mkdir decoy && echo mine >decoy/thesis.txt && echo mine >afile
( fresh_out OUT decoy data.h5 ) 2>err.txt && fail "a directory of the user's was taken"
grep -q "^error: OUT=decoy: exists and is not an output directory" err.txt || fail "message: $(cat err.txt)"
( claim_out --dir decoy "model-*" ) 2>/dev/null && fail "claim_out took a directory of the user's"
( fresh_out OUT afile data.h5 ) 2>err.txt && fail "a file was taken"
grep -q "^error: OUT=afile: exists and is not a directory" err.txt || fail "message: $(cat err.txt)"
[ "$(cat decoy/thesis.txt)" = mine ] && [ "$(ls -A decoy)" = thesis.txt ] && [ "$(cat afile)" = mine ] || fail "a refused OUT was touched"
( fresh_out OUT new data.h5 ) && [ -e new/.metapo-out ] || fail "an absent OUT was not made"
echo x >new/old.txt && ( fresh_out OUT new data.h5 ) && [ ! -e new/old.txt ] && [ -e new/.metapo-out ] || fail "fresh_out did not empty its own OUT"
mkdir legacy && : >legacy/data.h5 && ( fresh_out OUT legacy data.h5 ) && [ ! -e legacy/data.h5 ] || fail "an earlier run's OUT (data.h5) was not taken"
mkdir cache && mkdir cache/model-tiny-0 && ( claim_out --dir cache "model-*" ) && [ -d cache/model-tiny-0 ] || fail "claim_out emptied its directory"
mkdir empty && ( fresh_out OUT empty data.h5 ) || fail "an empty OUT was refused"
echo "ok: tools/out-dir.sh"

# The scripts check their settings before any work (and before tools/setup.sh): one error line, nothing made.
refused_script() {  # WANT VAR=VALUE... SCRIPT [ARGS...]
  local want="$1"; shift
  env "$@" >out.txt 2>err.txt && fail "accepted: $*"
  grep -q -- "$want" err.txt || { cat err.txt; fail "stderr lacks '$want': $*"; }
  [ ! -e "$WORK/o" ] || fail "a refused call made its OUT: $*"
}
refused_script "ROUNDS=abc: not a positive whole number" OUT="$WORK/o" ROUNDS=abc bash "$SRC/tools/bench-parallel.sh"
refused_script "LAYOUTS: '2x2' is not DPxPPxTP" OUT="$WORK/o" LAYOUTS=2x2 bash "$SRC/tools/bench-parallel.sh"
refused_script "NP=0: not a positive whole number" OUT="$WORK/o" NP=0 bash "$SRC/tools/bench-meta-cost.sh"
refused_script "LOSSES: unknown loss 'bogus'" OUT="$WORK/o" LOSSES=bogus bash "$SRC/tools/bench-noisy.sh"
refused_script "METHODS: unknown method 'bogus'" OUT="$WORK/o" METHODS=bogus bash "$SRC/tools/bench-quality.sh"
refused_script "--reps abc: not a positive whole number" X=1 bash "$SRC/tools/bench-checkpoint.sh" --reps abc --dir "$WORK/o"
refused_script "--ranks: 'x' is not a positive whole number" X=1 bash "$SRC/tools/bench-checkpoint.sh" --ranks "1 x" --dir "$WORK/o"
refused_script "--reps 0: not a positive whole number" X=1 bash "$SRC/tools/bench-model-io.sh" --reps 0 --dir "$WORK/o"
echo "ok: the benchmark scripts refuse bad settings before any work"
