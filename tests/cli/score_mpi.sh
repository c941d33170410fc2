#!/usr/bin/env bash
# metapo score: output format, masking, and the same result on 1 and 2 ranks; under pipeline
# parallelism the same bytes as 1 rank with the same packing, under tensor parallelism the same
# log-probs within 1e-5 (fp32 summation order); --tp/--pp from the command line and the INI file.
source "$(dirname "$0")/common.sh"
"$METAPO" init --preset tiny --out model --seed 3 >/dev/null
cat > in.jsonl <<'J'
{"tokens": [1, 5, 9, 12, 40, 2]}
{"tokens": [7], "loss_mask": [1]}
{"tokens": [3, 4, 5, 6, 7, 8, 9, 10], "loss_mask": [0, 0, 0, 1, 1, 1, 1, 0]}

{"tokens": [63, 0, 63], "loss_mask": [false, true, true]}
J
"$METAPO" score --model model --input in.jsonl --output one.jsonl 2>/dev/null
$MPIRUN 2 "$METAPO" score --model model --input in.jsonl --output two.jsonl --max-batch-tokens 4 2>/dev/null
$MPIRUN 2 "$METAPO" score --model model --input in.jsonl --output pp2.jsonl --pp 2 2>/dev/null
$MPIRUN 4 "$METAPO" score --model model --input in.jsonl --output dp2pp2.jsonl --pp 2 --max-batch-tokens 4 2>/dev/null
$MPIRUN 2 "$METAPO" score --model model --input in.jsonl --output tp2.jsonl --tp 2 2>/dev/null
$MPIRUN 4 "$METAPO" score --model model --input in.jsonl --output tp2pp2.jsonl --tp 2 --pp 2 --pp-layers 1,3 \
  --max-batch-tokens 4 2>/dev/null
printf '[score]\ntp = 2\n' > run.ini
$MPIRUN 4 "$METAPO" score --config run.ini --model model --input in.jsonl --output dp2tp2.jsonl 2>/dev/null
# The stages pass the residual stream exactly: PP changes nothing but the ranks.
cmp -s pp2.jsonl one.jsonl || fail "PP 2 differs from 1 rank"
cmp -s dp2pp2.jsonl two.jsonl || fail "DP 2 x PP 2 differs from DP 2 at the same packing"
echo "ok: PP 2 and DP 2 x PP 2 byte-identical to 1 and 2 ranks"
[ "$(wc -l < one.jsonl)" -eq 4 ] || fail "expected 4 output lines"
python3 - <<'P'
import json, math
one = [json.loads(l) for l in open("one.jsonl")]
two = [json.loads(l) for l in open("two.jsonl")]
tps = {f: [json.loads(l) for l in open(f)] for f in ("tp2.jsonl", "tp2pp2.jsonl", "dp2tp2.jsonl")}
lens = [6, 1, 8, 3]
masks = [None, [1], [0, 0, 0, 1, 1, 1, 1, 0], [0, 1, 1]]
for i, (a, b) in enumerate(zip(one, two)):
    assert len(a["token_logps"]) == lens[i] - 1, (i, a)
    m = masks[i] or [1] * lens[i]
    s = sum(v for t, v in enumerate(a["token_logps"], start=1) if m[t])
    assert abs(s - a["logp"]) < 1e-9, (i, s, a["logp"])
    assert a["n_tokens"] == sum(m[1:]), (i, a["n_tokens"])
    assert all(v < 0 for v in a["token_logps"])
    d = max([abs(x - y) for x, y in zip(a["token_logps"], b["token_logps"])] + [0])
    # 1 rank packs all lines into one forward, 2 ranks pack differently: equal up to fp32 summation.
    assert d < 1e-5, (i, d)
    # TP sums the row-parallel layers and the vocabulary shards in another order: measured 9.5e-7.
    for f, t in tps.items():
        b = t[i]
        assert b["n_tokens"] == a["n_tokens"] and len(b["token_logps"]) == len(a["token_logps"]), (f, i)
        d = max([abs(x - y) for x, y in zip(a["token_logps"], b["token_logps"])] + [0])
        assert d < 1e-5 and abs(a["logp"] - b["logp"]) < 1e-4, (f, i, d)
print("ok: 1-rank, 2-rank, TP 2, TP 2 x PP 2 and DP 2 x TP 2 (run.ini) scores agree")
P
expect_error "num_attention_heads (4) is not divisible by the TP size (3)" \
  $MPIRUN 3 "$METAPO" score --model model --input in.jsonl --output bad.jsonl --tp 3
printf '[score]\npp = 2\n' > bad.ini
expect_error "--tp 1 x --pp 2 = 2 does not divide the world size 3" \
  $MPIRUN 3 "$METAPO" score --config bad.ini --model model --input in.jsonl --output bad.jsonl
[ ! -e bad.jsonl ] || fail "output left behind by a failed run"
