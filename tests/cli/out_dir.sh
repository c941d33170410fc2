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
