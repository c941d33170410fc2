#!/usr/bin/env bash
# Bad input: one clear error line naming the input, non-zero exit, no hang (also on 2 ranks), and no
# output under the final name.
source "$(dirname "$0")/common.sh"
"$METAPO" init --preset tiny --out model >/dev/null
echo '{"tokens": [1, 2, 3]}' > good.jsonl
printf '{"tokens": [1, 2, 3]}\n{"tokens": [1, 2\n' > badjson.jsonl
echo '{"tokens": [1, 64]}' > oov.jsonl
echo '{"tokens": [1, 2], "loss_mask": [1]}' > badmask.jsonl
expect_error "unknown command 'frobnicate'" "$METAPO" frobnicate
expect_error "unrecognised option '--bogus'" "$METAPO" score --bogus
expect_error "model" "$METAPO" score --input good.jsonl --output o.jsonl
expect_error "nosuchdir" "$METAPO" score --model nosuchdir --input good.jsonl --output o.jsonl
expect_error "badjson.jsonl:2" "$METAPO" score --model model --input badjson.jsonl --output o.jsonl
expect_error "oov.jsonl:1: token id 64" "$METAPO" score --model model --input oov.jsonl --output o.jsonl
expect_error "badmask.jsonl:1" "$METAPO" score --model model --input badmask.jsonl --output o.jsonl
expect_error "--preset nosuch" "$METAPO" init --preset nosuch --out m2
# Presets come from the checkout the binary is in (a moved or second checkout uses its own).
mkdir -p other/build other/configs/presets && cp "$METAPO" other/build/ && cp "$SRC/configs/presets/tiny.ini" other/configs/presets/mine.ini
other/build/metapo init --preset mine --out m_mine >/dev/null || fail "a binary's own checkout's preset was not found"
expect_error "--preset mine: no such preset" "$METAPO" init --preset mine --out m_mine2
# A negative value for an unsigned option (a seed) is refused, not wrapped to 2^64 - 1.
expect_error "--seed -1: must be a whole number >= 0" "$METAPO" synth --seed -1 --out neg.h5
expect_error "--seed -2: must be a whole number >= 0" "$METAPO" init --preset tiny --seed=-2 --out m3
printf '[synth]\nseed = -4\n' > neg.ini
expect_error "neg.ini \[synth\]: --seed -4: must be a whole number >= 0" "$METAPO" synth --config neg.ini --out neg.h5
# INI values are taken as written: quotes and a comment after a value are refused, not kept.
printf '[synth]\nout = "q.h5"\n' > quoted.ini
expect_error 'quoted.ini:2: out = "q.h5": values are taken as written; remove the quotes' "$METAPO" synth --config quoted.ini
printf '[synth]\nseed = 3 # mine\n' > comment.ini
expect_error "comment.ini:2: seed = 3 # mine: a value may not hold ' #'" "$METAPO" synth --config comment.ini --out c.h5
[ ! -e '"q.h5"' ] && [ ! -e q.h5 ] && [ ! -e c.h5 ] || fail "a refused INI wrote output"
# A key set twice in a section (also spelt with '_'): one line naming both lines, whether or not the
# command line sets it too.
printf '[synth]\nseed = 3\nn-train = 8\nseed = 4\n' > twice.ini
expect_error "twice.ini:4: seed is set twice in \[synth\] (also on line 2)" "$METAPO" synth --config twice.ini --out t.h5
printf '[synth]\nn-train = 8\nn_train = 9\n' > twice2.ini
expect_error "twice2.ini:3: n-train is set twice in \[synth\] (also on line 2)" "$METAPO" synth --config twice2.ini --n-train 10 --out t.h5
# A switch the file turns on is turned off on the command line with --no-KEY.
printf '[generate]\ngreedy = true\n' > greedy.ini
expect_error "--greedy cannot be combined with --temperature" "$METAPO" generate --config greedy.ini --model model \
  --prompts good.jsonl --max-new-tokens 2 --temperature 0.7 --output gn.jsonl
"$METAPO" generate --config greedy.ini --model model --prompts good.jsonl --max-new-tokens 2 --temperature 0.7 --no-greedy \
  --output gn.jsonl >/dev/null || fail "--no-greedy did not turn off the file's greedy = true"
expect_error "--greedy and --no-greedy contradict each other" "$METAPO" generate --model model --prompts good.jsonl \
  --greedy --no-greedy --output gn2.jsonl
[ ! -e neg.h5 ] && [ ! -e m3 ] || fail "a refused negative seed left output behind"
expect_error "badjson.jsonl:2" $MPIRUN 2 "$METAPO" score --model model --input badjson.jsonl --output o.jsonl
[ ! -e o.jsonl ] || fail "output written despite errors"
# An error every rank meets (a bad option) is read once, from rank 0, not once per rank.
expect_error "unrecognised option '--bogus'" $MPIRUN 4 "$METAPO" score --bogus
[ "$(grep -c 'error:' err.txt)" -eq 1 ] || { cat err.txt; fail "4 ranks: the error is reported more than once"; }
grep -q "error: .*\[rank 0\]" err.txt || { cat err.txt; fail "4 ranks: the error line is not rank 0's"; }
mkdir broken && cp model/config.json broken/ && head -c 1000 model/model.safetensors > broken/model.safetensors
expect_error "model.safetensors" "$METAPO" score --model broken --input good.jsonl --output o.jsonl
printf '[score]\nmax-batch-tokens = 0\n' > bad.ini
expect_error "max-batch-tokens" "$METAPO" score --config bad.ini --model model --input good.jsonl --output o.jsonl
printf '[score]\nno_such_key = 1\n' > bad2.ini
expect_error "bad2.ini" "$METAPO" score --config bad2.ini --model model --input good.jsonl --output o.jsonl
# --device (score, eval, precompute-ref, generate): an unknown name; cuda where this build has no backend
# or this machine no GPU; nothing written.
expect_error "--device tpu: unknown (valid: cpu, cuda)" "$METAPO" score --model model --input good.jsonl --output o.jsonl --device tpu
if ! { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
  expect_error "--device cuda: " "$METAPO" score --model model --input good.jsonl --output o.jsonl --device cuda
  expect_error "--device cuda: " "$METAPO" precompute-ref --model model --data nosuch.h5 --device cuda
  expect_error "--device cuda: " "$METAPO" eval --model model --data nosuch.h5 --device cuda
  # Checked before the model or the prompts are read (nosuchdir would fail later).
  expect_error "--device cuda: " "$METAPO" generate --model nosuchdir --prompts good.jsonl --max-new-tokens 4 \
    --output o.jsonl --device cuda
fi
expect_error "--device tpu: unknown (valid: cpu, cuda)" "$METAPO" generate --model model --prompts good.jsonl \
  --max-new-tokens 4 --output o.jsonl --device tpu
[ ! -e o.jsonl ] || fail "output written despite errors"

# Outputs never replace an input, and a directory is neither an input nor an output file: checked
# before any work, so no .partial is left either.
echo '{"tokens": [1, 2, 3], "loss_mask": [1, -1, 7]}' > mask7.jsonl
expect_error "mask7.jsonl:1: \"loss_mask\" values must be 0 or 1 (got -1)" "$METAPO" score --model model --input mask7.jsonl --output o.jsonl
cp good.jsonl in.jsonl
expect_error "--output in.jsonl: is an input of this command" "$METAPO" score --model model --input in.jsonl --output in.jsonl
expect_error "--output model/model.safetensors: would replace a file of model" "$METAPO" score --model model \
  --input good.jsonl --output model/model.safetensors
mkdir od
expect_error "--output od: is a directory" "$METAPO" score --model model --input good.jsonl --output od
# An output whose directory cannot be written: said before the work, not after it (the scoring used
# to run first, and a failed write to leave OUT.partial). As root only a file in the way shows it;
# as nobody, where the binary is reachable, a directory without write permission too.
# A file or directory option given as "": said as such (eval said ": no such file", generate
# "model directory  does not exist").
expect_error "--data must not be empty" "$METAPO" eval --model model --data "" --split test
expect_error "--model must not be empty" "$METAPO" generate --model "" --prompts good.jsonl --max-new-tokens 2 --output o.jsonl
expect_error "--run must not be empty" "$METAPO" analyze --run "" --data nosuch.h5
# An INI file saved with a UTF-8 byte-order mark (Windows editors) reads like any other.
printf '\xef\xbb\xbf[score]\nmodel = nosuchdir\n' >bom.ini
expect_error "nosuchdir" "$METAPO" score --config bom.ini --input good.jsonl --output o.jsonl
echo x >afile
expect_error "--output afile/o.jsonl: $WORK/afile is not a directory" "$METAPO" score --model model --input good.jsonl --output afile/o.jsonl
expect_error "--output afile/sub/g.jsonl: $WORK/afile is not a directory" "$METAPO" generate --model model \
  --prompts good.jsonl --max-new-tokens 2 --output afile/sub/g.jsonl
chmod 755 "$WORK"  # this test's own directory (mktemp makes it 700): readable for nobody
NOBODY="runuser -u nobody -- env -u OMPI_MCA_orte_tmpdir_base"  # MPI's session files in /tmp then
if [ "$(id -u)" = 0 ] && command -v runuser >/dev/null && $NOBODY "$METAPO" --version >/dev/null 2>&1 &&
   runuser -u nobody -- test -r model/config.json; then
  mkdir ro && chmod 755 ro
  "$METAPO" synth --task sort --n-train 8 --n-val 2 --n-test 2 --n-sft 2 --out ro/d.h5 >/dev/null
  expect_error "--output ro/o.jsonl: cannot write into $WORK/ro (Permission denied)" \
    $NOBODY "$METAPO" score --model model --input good.jsonl --output ro/o.jsonl
  expect_error "--data ro/d.h5: cannot write into $WORK/ro (Permission denied)" \
    $NOBODY "$METAPO" precompute-ref --model model --data ro/d.h5
else
  echo "skipped: an unwritable output directory (needs root, runuser and a binary user nobody can run)"
fi
expect_error "--input $WORK: is a directory, not a file" "$METAPO" score --model model --input "$WORK" --output o.jsonl
expect_error "--prompts $WORK: is a directory, not a file" "$METAPO" generate --model model --prompts "$WORK" \
  --max-new-tokens 2 --output o.jsonl
expect_error "--output in.jsonl: is an input of this command" "$METAPO" generate --model model --prompts in.jsonl \
  --max-new-tokens 2 --output in.jsonl
expect_error "--output od: is a directory" $MPIRUN 2 "$METAPO" generate --model model --prompts good.jsonl \
  --max-new-tokens 2 --output od
cmp in.jsonl good.jsonl || fail "an input was changed"
[ ! -e od.partial ] && [ -z "$(ls od)" ] || fail "a refused output left files"
# A stray word (a forgotten option name) is an error, not ignored; so is a size that cannot fit.
expect_error "unexpected argument 'extra.jsonl'" "$METAPO" score --model model --input good.jsonl extra.jsonl --output o.jsonl
expect_error "--max-new-tokens 99999999999: the KV cache of 1 sequences" "$METAPO" generate --model model \
  --prompts good.jsonl --max-new-tokens 99999999999 --output o.jsonl
expect_error "--preset tiny --layers 1000000: the model needs" "$METAPO" init --preset tiny --layers 1000000 --out m3
# 10^9 layers: refused by the size, not by the memory a list of their tensors would take first.
expect_error "--preset tiny --layers 1000000000: the model needs" "$METAPO" init --preset tiny --layers 1000000000 --out m3
expect_error "--preset tiny --layers 4611686018427387904: the model needs" "$METAPO" init --preset tiny --layers 4611686018427387904 --out m3
expect_error "--preset llama-3-70b: the model needs" "$METAPO" bench --preset llama-3-70b --seq-len 16 --batch 1
expect_error "--init-std nan: must be finite" "$METAPO" init --preset tiny --init-std nan --out m3
expect_error "--dtype float64: unknown" "$METAPO" init --preset tiny --dtype float64 --out m3
[ ! -e o.jsonl ] && [ ! -e m3 ] || fail "output written despite errors"
# export into an existing model directory replaces the model's files and keeps the others.
cp -r model mt && echo '{"tok": 1}' > mt/tokenizer.json
"$METAPO" export --model model --out mt --dtype bfloat16 >/dev/null
[ "$(cat mt/tokenizer.json)" = '{"tok": 1}' ] || fail "export removed the model directory's tokenizer.json"
grep -q '"torch_dtype": *"bfloat16"' mt/config.json || fail "export did not replace config.json"
# An output file already there is replaced only when the command wrote it (or it is empty): never a
# file of the user's.
echo "my notes" > notes.jsonl && cp notes.jsonl notes.h5
expect_error "--output notes.jsonl: exists and is not a score output" "$METAPO" score --model model --input good.jsonl --output notes.jsonl
expect_error "--output notes.jsonl: exists and is not a generate output" "$METAPO" generate --model model \
  --prompts good.jsonl --max-new-tokens 2 --output notes.jsonl
expect_error "--out notes.h5: exists and is not a metapo dataset file" "$METAPO" synth --task sort --n-train 8 --n-val 4 \
  --n-test 4 --n-sft 8 --out notes.h5
# A prompt/completion dataset (text, not token ids) is the user's too, and so is a file whose first
# line only looks like an output.
printf '{"prompt": "Translate: hello", "completion": " bonjour"}\n' > sft.jsonl
printf '{"id": 1, "prompt": [1], "completion": [2]}\nmy notes\n' > mixed.jsonl
for f in sft.jsonl mixed.jsonl; do
  cp $f $f.before
  expect_error "--output $f: exists and is not a generate output" "$METAPO" generate --model model --prompts good.jsonl \
    --max-new-tokens 2 --output $f
  cmp $f $f.before || fail "generate replaced $f"
done
[ "$(cat notes.jsonl)" = "my notes" ] && [ "$(cat notes.h5)" = "my notes" ] || fail "a file of the user's was replaced"
"$METAPO" score --model model --input good.jsonl --output s.jsonl >/dev/null
"$METAPO" score --model model --input good.jsonl --output s.jsonl >/dev/null || fail "score did not replace its own output"
"$METAPO" generate --model model --prompts good.jsonl --max-new-tokens 2 --output g.jsonl >/dev/null
"$METAPO" generate --model model --prompts good.jsonl --max-new-tokens 2 --output g.jsonl >/dev/null ||
  fail "generate did not replace its own output"
for i in 1 2; do
  "$METAPO" synth --task sort --n-train 8 --n-val 4 --n-test 4 --n-sft 8 --out d.h5 >/dev/null || fail "synth run $i"
done
echo "ok: outputs replace only the command's own earlier files"
# OUT.partial, where an output is written first: a user's file there is refused and kept; an empty
# one (as a killed run leaves) is replaced.
echo "my notes" > d3.h5.partial
expect_error "d3.h5.partial exists and was not left by metapo" "$METAPO" synth --task sort --n-train 8 --out d3.h5
echo "my notes" > s3.jsonl.partial
expect_error "s3.jsonl.partial exists and was not left by metapo" "$METAPO" score --model model --input good.jsonl --output s3.jsonl
[ "$(cat d3.h5.partial)" = "my notes" ] && [ "$(cat s3.jsonl.partial)" = "my notes" ] || fail "a user's .partial file was replaced"
: > d3.h5.partial
"$METAPO" synth --task sort --n-train 8 --n-val 4 --n-test 4 --n-sft 8 --out d3.h5 >/dev/null || fail "a stale empty .partial blocked synth"
[ ! -e d3.h5.partial ] || fail "synth left d3.h5.partial"
head -c 4096 d.h5 > d4.h5.partial  # what a synth killed while writing leaves
"$METAPO" synth --task sort --n-train 8 --n-val 4 --n-test 4 --n-sft 8 --out d4.h5 >/dev/null || fail "a killed synth's .partial blocked synth"
cp d.h5 pr.h5 && echo "my notes" > pr.h5.partial
expect_error "pr.h5.partial exists and was not left by metapo" "$METAPO" precompute-ref --model model --data pr.h5
[ "$(cat pr.h5.partial)" = "my notes" ] && cmp -s d.h5 pr.h5 || fail "precompute-ref replaced a user's .partial file"
printf '{"logp": -1.5, "n_tokens": 3}\n{"logp": -2' > s4.jsonl.partial  # a score killed while writing
"$METAPO" score --model model --input good.jsonl --output s4.jsonl >/dev/null || fail "a killed score's .partial blocked score"
# A model directory replaced by a save keeps what a model save does not write: the tokenizer, an
# adapter, a consolidated checkpoint; an old shard of an earlier export goes.
cp -r model hf
echo a > hf/adapter_model.safetensors; echo c > hf/consolidated.safetensors; echo t > hf/tokenizer.json
echo s > hf/model-00001-of-00002.safetensors
"$METAPO" init --preset tiny --out hf >/dev/null
for f in adapter_model.safetensors consolidated.safetensors tokenizer.json; do [ -f "hf/$f" ] || fail "init removed hf/$f"; done
[ ! -e hf/model-00001-of-00002.safetensors ] || fail "an old shard outlived the new model"
echo "ok: a user's .partial file is refused and kept; a replaced model directory keeps the user's files"
# Another user's model directory (not writable) and a read-only dataset, as that user (nobody), with
# a copy of the binary and its configs/ where that user can run them (a checkout may be private) and
# OpenMPI's session directory where it can write; skipped, said, where it cannot run metapo.
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  mkdir shared shared/build && chmod 777 shared && cp -r model shared/hf && echo t > shared/hf/tokenizer.json
  cp "$METAPO" shared/build/metapo && cp -r "$SRC/configs" shared/configs
  "$METAPO" synth --task sort --n-train 8 --n-val 4 --n-test 4 --n-sft 8 --out shared/ro.h5 >/dev/null
  chmod 444 shared/ro.h5 && chmod -R a+rX . && chown 65534 shared/ro.h5
  as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$WORK/shared" OMPI_MCA_orte_tmpdir_base="$WORK/shared"
             "$WORK/shared/build/metapo")
  if "${as_nobody[@]}" --version >/dev/null 2>&1; then
    expect_error "shared/hf: cannot write in it (Permission denied)" "${as_nobody[@]}" init --preset tiny --out shared/hf
    [ -f shared/hf/tokenizer.json ] && [ ! -e shared/hf.old ] || fail "a refused save moved another user's files"
    expect_error "--data shared/ro.h5: is read-only" "${as_nobody[@]}" precompute-ref --model model --data shared/ro.h5
    expect_error "--out shared/ro.h5: is read-only" "${as_nobody[@]}" synth --task sort --n-train 8 --out shared/ro.h5
    [ "$(stat -c %a shared/ro.h5)" = 444 ] || fail "a read-only dataset was replaced"
    echo "ok: another user's model directory and a read-only dataset are refused, as that user"
  else
    echo "SKIP: user nobody cannot run metapo here: the checks as another user are not made"
  fi
fi
# Ranks started with different options (an MPMD launch): one error, no hang, no output.
expect_error "the ranks of this job were started with different command lines" $MPIRUN 1 "$METAPO" score --model model \
  --input good.jsonl --output o1.jsonl : -np 1 "$METAPO" score --model model --input good.jsonl --output o2.jsonl
[ ! -e o1.jsonl ] && [ ! -e o2.jsonl ] || fail "an MPMD launch wrote output"
echo "ok: all bad inputs rejected cleanly"
