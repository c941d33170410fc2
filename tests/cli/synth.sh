#!/usr/bin/env bash
# metapo synth: writes the documented groups and attributes, the same file for the same options (on 1
# or 2 ranks, from the command line or an INI file), and one error line for each bad option.
source "$(dirname "$0")/common.sh"
SMALL="--n-train 200 --n-val 40 --n-test 30 --n-sft 50"

"$METAPO" synth --task sort --flip 0.1 --seed 3 $SMALL --out d.h5 > out.txt
[ "$(wc -l < out.txt)" -eq 1 ] || { cat out.txt; fail "summary is not one line"; }
grep -q "wrote d.h5: task sort, train 200 pairs (20 flipped" out.txt || { cat out.txt; fail "unexpected summary"; }
[ ! -e d.h5.partial ] || fail "partial file left behind"

# Groups and datasets, with N and N + 1 entries.
h5ls -r d.h5 > ls.txt
for path in /train /val /test /sft /train/columns/difficulty /sft/answer_tokens /sft/answer_offsets; do
  grep -q "^$path " ls.txt || { cat ls.txt; fail "no $path in d.h5"; }
done
for split in train val test; do
  for field in prompt chosen rejected; do
    grep -q "^/$split/${field}_tokens " ls.txt || fail "no /$split/${field}_tokens"
  done
done
grep -q "^/train/sample_id  *Dataset {200}" ls.txt || fail "/train/sample_id is not [200]"
grep -q "^/train/quality  *Dataset {200}" ls.txt || fail "/train/quality is not [200]"
grep -q "^/val/chosen_offsets  *Dataset {41}" ls.txt || fail "/val/chosen_offsets is not [N + 1]"
grep -q "^/sft/sample_id  *Dataset {50}" ls.txt || fail "/sft/sample_id is not [50]"

# Root attributes and types.
h5dump -A -g / d.h5 > attrs.txt 2>/dev/null || h5dump -A d.h5 > attrs.txt
grep -q '"metapo-dataset"' attrs.txt || fail "format attribute"
grep -q '"metapo-synth-char"' attrs.txt || fail "tokenizer attribute"
h5dump -a /vocab_size d.h5 | grep -q "(0): 64" || fail "vocab_size is not 64"
h5dump -a /task d.h5 | grep -q '"sort"' || fail "task is not sort"
h5dump -H -d /train/prompt_tokens d.h5 | grep -q "H5T_STD_I32LE" || fail "tokens are not int32 LE"
h5dump -H -d /train/prompt_offsets d.h5 | grep -q "H5T_STD_I64LE" || fail "offsets are not int64 LE"
h5dump -H -d /train/quality d.h5 | grep -q "H5T_IEEE_F32LE" || fail "quality is not float32 LE"
# val and test are clean: no 0 in their quality.
! h5dump -d /val/quality -y -w 0 d.h5 | sed -n '/DATA {/,/}/p' | grep -qE '(^|[ ,])0([ ,]|$)' || fail "val has flipped pairs"
echo "ok: layout"

# Same options, same bytes: again, on 2 ranks, and from an INI file.
"$METAPO" synth --task sort --flip 0.1 --seed 3 $SMALL --out e.h5 > /dev/null
cmp d.h5 e.h5 || fail "same options gave a different file"
$MPIRUN 2 "$METAPO" synth --task sort --flip 0.1 --seed 3 $SMALL --out m.h5 > mpi.txt
cmp d.h5 m.h5 || fail "2 ranks gave a different file"
[ "$(grep -c wrote mpi.txt)" -eq 1 ] || fail "2 ranks printed the summary more than once"
printf '[synth]\ntask = sort\nflip = 0.1\nseed = 3\nn_train = 200\nn-val = 40\nn_test = 30\nn_sft = 50\n' > s.ini
"$METAPO" synth --config s.ini --out i.h5 > /dev/null
cmp d.h5 i.h5 || fail "INI options gave a different file"
"$METAPO" synth --task sort --flip 0.1 --seed 4 $SMALL --out f.h5 > /dev/null
! cmp -s d.h5 f.h5 || fail "another seed gave the same file"
for task in reverse add; do
  "$METAPO" synth --task $task --flip 0.2 --min-len 1 --max-len 12 --hard-fraction 1 $SMALL --out $task.h5 > /dev/null
  h5dump -a /task $task.h5 | grep -q "\"$task\"" || fail "task attribute of $task.h5"
done
echo "ok: deterministic"

# Bad options: exactly one stderr line naming the option, non-zero exit, no output file.
one_error() {
  expect_error "$@"
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; fail "more than one stderr line: ${*:2}"; }
}
one_error "--flip 0.5" "$METAPO" synth --flip 0.5 --out bad.h5
one_error "--flip -0.1" "$METAPO" synth --flip -0.1 --out bad.h5
one_error "--task 'frob'" "$METAPO" synth --task frob --out bad.h5
one_error "--min-len 0" "$METAPO" synth --min-len 0 --out bad.h5
one_error "--max-len 2" "$METAPO" synth --min-len 3 --max-len 2 --out bad.h5
one_error "--max-len 1000" "$METAPO" synth --max-len 1000 --out bad.h5
one_error "--n-train -5" "$METAPO" synth --n-train -5 --out bad.h5
one_error "--hard-fraction 2" "$METAPO" synth --hard-fraction 2 --out bad.h5
one_error "out" "$METAPO" synth --task sort
one_error "flip" "$METAPO" synth --flip abc --out bad.h5
one_error "unrecognised option '--bogus'" "$METAPO" synth --bogus --out bad.h5
echo x > blocker
one_error "blocker/bad.h5" "$METAPO" synth $SMALL --out blocker/bad.h5
# Under mpirun, MPI_Abort adds its own banner; metapo still reports the error once.
expect_error "--flip 0.7" $MPIRUN 2 "$METAPO" synth --flip 0.7 --out bad.h5
[ "$(grep -c 'error:' err.txt)" -eq 1 ] || { cat err.txt; fail "2 ranks reported the error more than once"; }
[ ! -e bad.h5 ] && [ ! -e bad.h5.partial ] && [ ! -e blocker/bad.h5 ] || fail "output written despite errors"
echo "ok: all bad options rejected cleanly"
