#!/usr/bin/env bash
# Generation under tensor and pipeline parallelism.
# 1. The sharded KV-cache decoder (tests/test_generate_mpi.cpp) under 2 and 4 ranks, in every layout
#    among TP 2, PP 2, TP 2 x PP 2 and TP 4 that fits: logits equal the whole-model decoder's (bit for
#    bit under PP alone, within 1e-5 relative under TP), identical on the TP ranks, the KV cache sharded
#    with the heads and layers; generate() gives the whole model's greedy and sampled tokens for any
#    batch size.
# 2. metapo generate --tp/--pp (options and INI keys): the 1-rank greedy and sampled files on the
#    tiny model, the same file for any DP count and batch size, and one error line for layouts that
#    do not fit.
source "$(dirname "$0")/common.sh"
run_mpi_gtest test_generate_mpi 2 4

"$METAPO" init --preset tiny --out model --seed 3 --init-std 0.3 >/dev/null
cp "$SRC/tests/data/generate_prompts.jsonl" prompts.jsonl  # the prompts of tests/cli/generate.sh
G="generate --model model --prompts prompts.jsonl --max-new-tokens 12"
S="$G --temperature 0.8 --top-p 0.9 --seed 5"
"$METAPO" $G --output greedy1.jsonl >/dev/null 2>&1
"$METAPO" $S --output sample1.jsonl >/dev/null 2>&1
# Under TP the logits differ from 1 rank by rounding only (tolerance above): on this model no token
# is that close to a tie, so the files are the 1-rank files.
same() {  # same FILE REF WHAT
  cmp -s "$1" "$2" || { diff "$1" "$2" | head -5; fail "$3: $1 differs from $2"; }
  echo "ok: $3"
}
$MPIRUN 2 "$METAPO" $G --tp 2 --output tp2.jsonl >/dev/null 2>&1
same tp2.jsonl greedy1.jsonl "greedy, TP 2"
$MPIRUN 2 "$METAPO" $G --pp 2 --batch-size 2 --output pp2.jsonl >/dev/null 2>&1
same pp2.jsonl greedy1.jsonl "greedy, PP 2"
$MPIRUN 4 "$METAPO" $G --tp 2 --pp 2 --pp-layers 3,1 --batch-size 3 --output tp2pp2.jsonl >/dev/null 2>&1
same tp2pp2.jsonl greedy1.jsonl "greedy, TP 2 x PP 2 (3 + 1 layers)"
$MPIRUN 4 "$METAPO" $S --tp 2 --pp 2 --output stp2pp2.jsonl >/dev/null 2>&1
same stp2pp2.jsonl sample1.jsonl "sampled, TP 2 x PP 2"
# The DP count never changes a token (exactly, whatever the rounding of the layout).
$MPIRUN 4 "$METAPO" $S --tp 2 --batch-size 1 --output sdp2tp2.jsonl >/dev/null 2>&1
$MPIRUN 2 "$METAPO" $S --tp 2 --output stp2.jsonl >/dev/null 2>&1
same sdp2tp2.jsonl stp2.jsonl "sampled, DP 2 x TP 2 vs TP 2"
# INI keys, with dataset prompts (answer accuracy reported by the replica writers only once).
"$METAPO" synth --task sort --out data.h5 --n-train 0 --n-val 0 --n-test 10 --n-sft 4 >/dev/null
printf '[generate]\ntp = 2\npp = 2\n' > run.ini
"$METAPO" generate --model model --data data.h5 --split test --max-new-tokens 10 --output d1.jsonl > dstats1.txt 2>/dev/null
$MPIRUN 4 "$METAPO" generate --config run.ini --model model --data data.h5 --split test --max-new-tokens 10 \
  --output d4.jsonl > dstats4.txt 2>/dev/null
same d4.jsonl d1.jsonl "dataset prompts, TP 2 x PP 2 from run.ini"
python3 - <<'P'
import json
a = json.loads(open("dstats1.txt").read().strip().splitlines()[-1])
b = json.loads(open("dstats4.txt").read().strip().splitlines()[-1])
for k in ("n", "mean_new_tokens", "answer_accuracy"):
    assert a[k] == b[k], (k, a, b)
print("ok: the stats count each completion once under TP x PP", b)
P

expect_error "num_attention_heads (4) is not divisible by the TP size (3)" $MPIRUN 3 "$METAPO" $G --tp 3 --output bad.jsonl
# The INI keys are read (the run above would also pass as DP 4).
printf '[generate]\ntp = 3\n' > bad.ini
expect_error "is not divisible by the TP size (3)" $MPIRUN 3 "$METAPO" generate --config bad.ini --model model \
  --prompts prompts.jsonl --max-new-tokens 4 --output bad.jsonl
expect_error "num_key_value_heads (2) is not divisible by the TP size (4)" $MPIRUN 4 "$METAPO" $G --tp 4 --output bad.jsonl
expect_error "--tp 2 x --pp 1 = 2 does not divide the world size 3" $MPIRUN 3 "$METAPO" $G --tp 2 --output bad.jsonl
expect_error "--pp-layers: the layer counts sum to 5" $MPIRUN 2 "$METAPO" $G --pp 2 --pp-layers 3,2 --output bad.jsonl
[ ! -e bad.jsonl ] && [ ! -e bad.jsonl.partial ] || fail "output left behind by a failed run"
echo "ok: generate under TP and PP"
