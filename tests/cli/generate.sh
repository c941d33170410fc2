#!/usr/bin/env bash
# metapo generate: output format, the same file on 1 and 2 ranks (greedy and sampled), dataset
# prompts with answer accuracy, and one error line for bad options.
source "$(dirname "$0")/common.sh"
# A larger init std than HF's 0.02 so the next-token distribution is not flat and completions vary.
"$METAPO" init --preset tiny --out model --seed 3 --init-std 0.3 >/dev/null
cp "$SRC/tests/data/generate_prompts.jsonl" prompts.jsonl  # a blank line among them: skipped
G="generate --model model --prompts prompts.jsonl --max-new-tokens 12"
"$METAPO" $G --output greedy1.jsonl > stats1.txt 2>/dev/null
$MPIRUN 2 "$METAPO" $G --output greedy2.jsonl --batch-size 2 > stats2.txt 2>/dev/null
cmp -s greedy1.jsonl greedy2.jsonl || fail "greedy output differs between 1 and 2 ranks"
S="$G --temperature 0.8 --top-p 0.9 --seed 5"
"$METAPO" $S --output sample1.jsonl >/dev/null 2>&1
$MPIRUN 2 "$METAPO" $S --output sample2.jsonl --batch-size 1 >/dev/null 2>&1
cmp -s sample1.jsonl sample2.jsonl || fail "sampled output differs between 1 and 2 ranks"
"$METAPO" $G --temperature 0.8 --top-p 0.9 --seed 6 --output sample3.jsonl >/dev/null 2>&1
"$METAPO" $G --output limited.jsonl --limit 2 >/dev/null 2>&1
python3 - <<'P'
import json
prompts = [json.loads(l) for l in open("prompts.jsonl") if l.strip()]
greedy = [json.loads(l) for l in open("greedy1.jsonl")]
s1 = [json.loads(l) for l in open("sample1.jsonl")]
s3 = [json.loads(l) for l in open("sample3.jsonl")]
assert len(greedy) == len(prompts) == 6, len(greedy)
for i, (p, g) in enumerate(zip(prompts, greedy)):
    assert g["id"] == p.get("id", i), (i, g["id"])
    assert g["prompt"] == p["tokens"], i
    c = g["completion"]
    assert 1 <= len(c) <= 12 and all(0 <= t < 64 for t in c), (i, c)
    # EOS (the tiny preset's id 2) ends a completion and is kept as its last token.
    assert 2 not in c[:-1] and (c[-1] == 2 or len(c) == 12), (i, c)
    assert "correct" not in g and "reference" not in g
assert s1 != greedy, "sampling gave the greedy output"
assert s1 != s3, "seeds 5 and 6 gave the same samples"
assert [json.loads(l) for l in open("limited.jsonl")] == greedy[:2]
stats = json.loads(open("stats1.txt").read().strip().splitlines()[-1])
assert stats["n"] == 6 and 1 <= stats["mean_new_tokens"] <= 12 and stats["tokens_per_s"] > 0, stats
assert abs(stats["mean_new_tokens"] - sum(len(g["completion"]) for g in greedy) / 6) < 1e-9, stats
assert "answer_accuracy" not in stats
assert json.loads(open("stats2.txt").read().strip().splitlines()[-1])["n"] == 6
print("ok: format; greedy and sampled outputs identical on 1 and 2 ranks;", stats)
P

# The model's other end tokens (an eos_token_id list in config.json, generation_config.json) end a
# completion too, as transformers' generate() stops at any; --eos-id alone overrides them.
cp -r model model_eos
python3 - <<'P'
import json
g = [json.loads(l) for l in open("greedy1.jsonl")]
t = g[0]["completion"][1]  # the second token of the first completion
c = json.load(open("model_eos/config.json")); c["eos_token_id"] = [2]; json.dump(c, open("model_eos/config.json", "w"))
json.dump({"bos_token_id": 1, "eos_token_id": [2, t]}, open("model_eos/generation_config.json", "w"))
P
"$METAPO" generate --model model_eos --prompts prompts.jsonl --max-new-tokens 12 --output eos.jsonl >/dev/null 2>&1
"$METAPO" generate --model model_eos --prompts prompts.jsonl --max-new-tokens 12 --eos-id 2 --output eos2.jsonl >/dev/null 2>&1
python3 - <<'P'
import json
g = [json.loads(l)["completion"] for l in open("greedy1.jsonl")]
e = [json.loads(l)["completion"] for l in open("eos.jsonl")]
t = g[0][1]
for a, b in zip(g, e):
    cut = next((k + 1 for k, x in enumerate(a) if x in (2, t)), len(a))
    assert b == a[:cut], (a, b)
assert len(e[0]) <= 2
assert [json.loads(l)["completion"] for l in open("eos2.jsonl")] == g, "--eos-id 2 should stop at 2 only"
print("ok: completions end at any of the model's end tokens; --eos-id alone overrides them")
P

# Dataset prompts: the split's prompts, the chosen answer as reference, answers checked by the task.
"$METAPO" synth --task sort --out data.h5 --n-train 0 --n-val 0 --n-test 10 --n-sft 4 >/dev/null
"$METAPO" generate --model model --data data.h5 --split test --max-new-tokens 10 --output d1.jsonl > dstats1.txt 2>/dev/null
$MPIRUN 2 "$METAPO" generate --model model --data data.h5 --split test --max-new-tokens 10 --output d2.jsonl > dstats2.txt 2>/dev/null
cmp -s d1.jsonl d2.jsonl || fail "dataset output differs between 1 and 2 ranks"
"$METAPO" generate --model model --data data.h5 --split sft --max-new-tokens 10 --output dsft.jsonl >/dev/null 2>&1
python3 - <<'P'
import json
d = [json.loads(l) for l in open("d1.jsonl")]
assert len(d) == 10
for r in d:
    assert isinstance(r["correct"], bool) and r["reference"][-1] == 2 and r["prompt"][-1] == 3, r
stats = json.loads(open("dstats1.txt").read().strip().splitlines()[-1])
assert stats["n"] == 10 and abs(stats["answer_accuracy"] - sum(r["correct"] for r in d) / 10) < 1e-9, stats
assert json.loads(open("dstats2.txt").read().strip().splitlines()[-1])["answer_accuracy"] == stats["answer_accuracy"]
assert len([l for l in open("dsft.jsonl")]) == 4
print("ok: dataset prompts;", stats)
P

# Bad options: one error line each, also under mpirun; no output file left behind.
expect_error "--greedy cannot be combined" "$METAPO" $G --output bad.jsonl --greedy --temperature 0.7
expect_error "--temperature must be > 0" "$METAPO" $G --output bad.jsonl --temperature 0
expect_error "--top-p must be in (0, 1]" $MPIRUN 2 "$METAPO" $G --output bad.jsonl --top-p 1.5
expect_error "--top-p must be in (0, 1]" "$METAPO" $G --output bad.jsonl --top-p 0
expect_error "exactly one of --data and --prompts" "$METAPO" $G --output bad.jsonl --data data.h5 --split test
expect_error "--data needs --split" "$METAPO" generate --model model --data data.h5 --max-new-tokens 4 --output bad.jsonl
expect_error "--max-new-tokens must be positive" "$METAPO" generate --model model --prompts prompts.jsonl --max-new-tokens 0 --output bad.jsonl
echo '{"tokens": [1, 64]}' > badtok.jsonl
expect_error "badtok.jsonl:1: token id 64" $MPIRUN 2 "$METAPO" generate --model model --prompts badtok.jsonl --max-new-tokens 4 --output bad.jsonl
[ ! -e bad.jsonl ] && [ ! -e bad.jsonl.partial ] || fail "output left behind by a failed run"
echo "ok: generate"
