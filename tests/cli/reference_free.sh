#!/usr/bin/env bash
# A reference-free loss (simpo): train and eval need no reference log-probs and no reference model
# (none is computed), unless MetaPO's features use the reference; eval takes the loss's own
# parameters; SimPO's logps/* are per-token averages (as CPOTrainer logs them), here checked as
# summed log-prob / average = the response length, a whole number.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --flip 0.2 --seed 4 --n-train 64 --n-val 16 --n-test 16 --n-sft 0 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 4 >/dev/null
"$METAPO" train --model init --data d.h5 --out s --loss simpo --beta 2 --simpo-gamma 1 --batch-size 16 --max-steps 2 \
  --eval-every 1 > s.log 2>&1 || { cat s.log; fail "simpo training without reference log-probs failed"; }
! grep -q "computing them" s.log || { cat s.log; fail "simpo computed reference log-probs"; }
[ -f s/final/config.json ] || fail "no final model"
"$METAPO" train --model init --data d.h5 --out s2 --loss simpo --ref-model init --batch-size 16 --max-steps 1 > s2.log 2>&1
grep -q "note: --ref-model init is not used: --loss simpo needs no reference model" s2.log || { cat s2.log; fail "no note"; }
# MetaPO's features read the reference: with --weighting metapo it is computed.
"$METAPO" train --model init --data d.h5 --out s3 --loss simpo --weighting metapo --batch-size 16 --max-steps 1 > s3.log 2>&1 ||
  { cat s3.log; fail "simpo with metapo failed"; }
grep -q "computing them" s3.log || { cat s3.log; fail "simpo with metapo did not compute the reference"; }
E="eval --model s/final --data d.h5 --split test --loss simpo --beta 2"
"$METAPO" $E --simpo-gamma 0.5 | tail -n 1 > g05.json
"$METAPO" $E --simpo-gamma 1.5 | tail -n 1 > g15.json
"$METAPO" eval --model s/final --data d.h5 --split test --loss simpo --beta 2 --limit 1 | tail -n 1 > one_simpo.json
expect_error "has no reference log-probs" "$METAPO" eval --model s/final --data d.h5 --split test --limit 1
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
"$METAPO" eval --model s/final --data d.h5 --split test --limit 1 | tail -n 1 > one_sigmoid.json
python3 - <<'P'
import json
g05, g15 = json.load(open("g05.json")), json.load(open("g15.json"))
# -log σ(x − γ) grows with γ; the rewards do not depend on it.
assert g15["loss"] > g05["loss"] and g15["rewards/chosen"] == g05["rewards/chosen"], (g05, g15)
assert g05["rewards/accuracies"] == g05["pref_acc"] and g05["rewards/margins"] == g05["margin"], g05
a, b = json.load(open("one_simpo.json")), json.load(open("one_sigmoid.json"))
n = b["logps/chosen"] / a["logps/chosen"]
assert n >= 1 and abs(n - round(n)) < 1e-6, (a, b, n)
print(f"ok: eval --simpo-gamma; simpo logps are per-token (response length {round(n)})")
P
m=$(head -n 1 s/metrics.jsonl)
python3 -c "
import json; m = json.loads('''$m''')
assert m['logps/chosen'] > -5 and m['logps/chosen'] < 0, m  # per token: a few nats at most on 'sort'
" || fail "simpo's metrics.jsonl logps/chosen is not a per-token average: $m"
echo "ok: simpo trains and evaluates without a reference"
# precompute-ref through a symbolic link writes the file it names; the link stays a link.
mkdir sub && cp d.h5 sub/x.h5 && "$METAPO" synth --task sort --seed 4 --n-train 64 --n-val 16 --n-test 16 --n-sft 0 --out sub/y.h5 >/dev/null
ln -s sub/y.h5 link.h5
"$METAPO" precompute-ref --model init --data link.h5 >/dev/null
[ -L link.h5 ] || fail "precompute-ref replaced the symbolic link by a file"
"$METAPO" eval --model init --data sub/y.h5 --limit 2 >/dev/null || fail "the linked file got no reference log-probs"
[ ! -e sub/y.h5.partial ] && [ ! -e link.h5.partial ] || fail "a partial file was left"
echo "ok: precompute-ref writes through a symbolic link"
