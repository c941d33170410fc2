#!/usr/bin/env bash
# metapo score: output format, masking, and the same result on 1 and 2 ranks.
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
[ "$(wc -l < one.jsonl)" -eq 4 ] || fail "expected 4 output lines"
python3 - <<'P'
import json, math
one = [json.loads(l) for l in open("one.jsonl")]
two = [json.loads(l) for l in open("two.jsonl")]
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
print("ok: 1-rank and 2-rank scores agree")
P
