#!/usr/bin/env bash
# Token-budget micro-batches and training-time truncation:
#  - --micro-batch-tokens trains on the same global batches as --micro-batch: per-step losses and
#    final parameters of DPO, MetaPO and SFT within fp32 summation order of the pair-count run, and the
#    same under DP 2 and PP 2 (balanced shares, stages cutting the same micro-batches);
#  - --max-length / --max-prompt-length cut pairs as tools/prepare_data.py does: a run on the file cut
#    on the fly equals a run on a file cut beforehand with prepare_data's truncate() (the reference
#    log-probs of the cut pairs are computed again);
#  - a pair over the budget, or left without room for a response, is refused with one line naming it.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --seed 5 --flip 0.2 --n-train 96 --n-val 32 --n-test 16 --n-sft 64 --out d0.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 4 >/dev/null
common="--batch-size 16 --max-steps 6 --lr 1e-3 --warmup-steps 1 --save-every-minutes 0"
"$METAPO" precompute-ref --model init --data d0.h5 >/dev/null
cp d0.h5 d.h5

# The budget: about four pairs per micro-batch (a pair counts its prompt twice).
read -r budget longest sft_budget < <(python3 - <<'P'
import h5py, numpy as np
with h5py.File("d.h5", "r") as f:
    n = lambda s, k: np.diff(f[f"/{s}/{k}_offsets"][()])
    t = 2 * n("train", "prompt") + n("train", "chosen") + n("train", "rejected")
    v = 2 * n("val", "prompt") + n("val", "chosen") + n("val", "rejected")
    s = n("sft", "prompt") + n("sft", "answer")
print(max(int(4 * t.mean()), int(v.max())), int(t.max()), max(int(3 * s.mean()), int(s.max())))
P
)
echo "budget $budget tokens (longest pair $longest), SFT $sft_budget"

# --- DPO, MetaPO and SFT: pair counts against a token budget, and the budget under DP 2 and PP 2.
"$METAPO" train --model init --data d.h5 --out dpo-pairs $common --micro-batch 4 >/dev/null
"$METAPO" train --model init --data d.h5 --out dpo-tok $common --micro-batch-tokens "$budget" > dpo-tok.log
$MPIRUN 2 "$METAPO" train --model init --data d.h5 --out dpo-dp2 $common --micro-batch-tokens "$budget" >/dev/null
$MPIRUN 2 "$METAPO" train --model init --data d.h5 --out dpo-pp2 $common --micro-batch-tokens "$budget" --pp 2 >/dev/null
meta="--weighting metapo --meta-gate 0 --meta-val-batch 8"
"$METAPO" train --model init --data d.h5 --out meta-pairs $common $meta --micro-batch 4 >/dev/null
"$METAPO" train --model init --data d.h5 --out meta-tok $common $meta --micro-batch-tokens "$budget" >/dev/null
$MPIRUN 2 "$METAPO" train --model init --data d.h5 --out meta-dp2 $common $meta --micro-batch-tokens "$budget" >/dev/null
"$METAPO" sft --model init --data d.h5 --out sft-pairs $common --micro-batch 4 >/dev/null
"$METAPO" sft --model init --data d.h5 --out sft-tok $common --micro-batch-tokens "$sft_budget" >/dev/null
$MPIRUN 2 "$METAPO" sft --model init --data d.h5 --out sft-dp2 $common --micro-batch-tokens "$sft_budget" >/dev/null
PYTHONPATH="$SRC/tests/cli" python3 - <<'P'
import json
from runs import steps, rel, param_rel_diff
def same(run, base, tol):
    a, b = steps(run), steps(base)
    assert len(a) == len(b) == 6, (run, len(a), len(b))
    worst = max(rel(x["loss"], y["loss"]) for x, y in zip(a, b))
    g = max(rel(x["grad_norm"], y["grad_norm"]) for x, y in zip(a, b))
    d = param_rel_diff(run, base)
    assert worst < tol and g < tol and d < tol, (run, base, worst, g, d)
    print(f"ok: {run} vs {base}: loss {worst:.1e}, grad norm {g:.1e}, parameters {d:.1e} (relative)")
# fp32 summation order only (other micro-batch boundaries, other packing): measured below 1e-6.
for run, base in [("dpo-tok", "dpo-pairs"), ("dpo-dp2", "dpo-tok"), ("dpo-pp2", "dpo-tok"),
                  ("meta-tok", "meta-pairs"), ("meta-dp2", "meta-tok"), ("sft-tok", "sft-pairs"),
                  ("sft-dp2", "sft-tok")]:
    same(run, base, 1e-4)
r = json.load(open("dpo-tok/run.json"))
assert r["micro_batch_tokens"] > 0 and r["max_length"] == 0, r
P

# --- --max-length: cut on the fly against a file cut beforehand by prepare_data's own truncate().
read -r mpl ml < <(python3 - <<'P'
import h5py, numpy as np
with h5py.File("d0.h5", "r") as f:
    n = lambda k: np.diff(f[f"/train/{k}_offsets"][()])
    p, r = n("prompt"), np.maximum(n("chosen"), n("rejected"))
mpl = int(np.median(p)) - 1
print(mpl, int(np.median(np.minimum(p, mpl) + r)))
P
)
echo "--max-prompt-length $mpl --max-length $ml"
PYTHONPATH="$SRC/tools" python3 - "$mpl" "$ml" <<'P'
import sys, shutil, h5py, numpy as np
from collections import Counter
import prepare_data
lim = prepare_data.Limits(int(sys.argv[1]), int(sys.argv[2]), 0, "keep_end")
shutil.copy("d0.h5", "cut.h5")
stats = Counter()
with h5py.File("cut.h5", "r+") as f:
    for split in ("train", "val", "test"):
        g = f[split]
        items = {k: [g[f"{k}_tokens"][a:b] for a, b in zip(g[f"{k}_offsets"][:-1], g[f"{k}_offsets"][1:])]
                 for k in ("prompt", "chosen", "rejected")}
        out = {k: [] for k in items}
        for p, c, r in zip(items["prompt"], items["chosen"], items["rejected"]):
            p, (c, r) = prepare_data.truncate(list(p), [list(c), list(r)], lim, stats)
            assert c and r
            out["prompt"].append(p), out["chosen"].append(c), out["rejected"].append(r)
        for k, v in out.items():
            del g[f"{k}_tokens"], g[f"{k}_offsets"]
            g[f"{k}_tokens"] = np.concatenate([np.asarray(x, dtype="<i4") for x in v])
            g[f"{k}_offsets"] = np.concatenate([[0], np.cumsum([len(x) for x in v])]).astype("<i8")
        for k in ("ref_logp_chosen", "ref_logp_rejected"):
            del g[k]
print(f"cut.h5: {dict(stats)}")
assert stats["examples with responses truncated"] > 10 and stats["prompts truncated"] > 10, stats
P
"$METAPO" precompute-ref --model init --data cut.h5 >/dev/null
"$METAPO" train --model init --data d.h5 --out ml-fly $common --micro-batch 4 --max-length "$ml" --max-prompt-length "$mpl" \
  --eval-every 3 > ml-fly.log
"$METAPO" train --model init --data cut.h5 --out ml-file $common --micro-batch 4 --eval-every 3 >/dev/null
grep -q "^train: [0-9]* of 96 pairs cut by --max-length $ml" ml-fly.log || { cat ml-fly.log; fail "no truncation line"; }
grep -q "^train: [0-9]* pairs cut after their reference log-probs were computed" ml-fly.log ||
  { cat ml-fly.log; fail "the cut pairs' reference log-probs were not computed again"; }
PYTHONPATH="$SRC/tests/cli" python3 - <<'P'
from runs import metrics, rel, param_rel_diff
a, b = metrics("ml-fly/metrics.jsonl"), metrics("ml-file/metrics.jsonl")
keys = ("loss", "eval/loss", "rewards/margins", "eval/rewards/margins")
pairs = [(x[k], y[k]) for x, y in zip(a, b) for k in keys if k in x]
assert len(a) == len(b) and len(pairs) >= 14, (len(a), len(b), len(pairs))
# At step 1 the policy is the reference, so its margins are 0 up to fp32 rounding of the log-prob
# sums (~1e-8, in either sign): there a relative error compares noise with noise. Differences below
# 1e-6 absolute count as equal; every other value is held to 1e-5 relative.
worst = max(rel(x, y) if abs(x - y) > 1e-6 else 0.0 for x, y in pairs)
d = param_rel_diff("ml-fly", "ml-file")
# The same sequences; only the reference log-probs of the cut pairs come from another packing.
assert worst < 1e-5 and d < 1e-5, (worst, d)
print(f"ok: --max-length on the fly = prepare_data's cut: losses and margins {worst:.1e}, parameters {d:.1e}")
P
# metapo eval with the run's cut and its reference model gives the run's last eval/ metrics (the same
# pairs, cut the same way, their reference log-probs scored again the same way); without --ref-model
# the cut pairs' stored log-probs (of the uncut sequences) are refused.
"$METAPO" eval --model ml-fly/final --data d.h5 --split val --micro-batch 4 --max-length "$ml" --max-prompt-length "$mpl" \
  --ref-model init 2>eval-cut.err | tail -1 > eval-cut.json
grep -q "^val: [0-9]* of [0-9]* pairs cut by --max-length $ml, --max-prompt-length $mpl (keep_end)" eval-cut.err ||
  { cat eval-cut.err; fail "eval did not say what it cut"; }
python3 - <<'P' || fail "eval with the run's cut differs from the run's eval/ metrics"
import json
run = [json.loads(l) for l in open("ml-fly/metrics.jsonl") if '"eval/loss"' in l][-1]
ev = json.load(open("eval-cut.json"))
for k in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
    a, b = run["eval/" + k], ev[k]
    assert abs(a - b) <= 1e-9 * max(1.0, abs(a)), (k, a, b)
print(f"ok: eval --max-length reproduces the run's eval/ metrics (loss {ev['loss']:.6f})")
P
# --limit picks the pairs before the cut: only those are cut, checked and scored again.
"$METAPO" eval --model ml-fly/final --data d.h5 --split val --max-length "$ml" --max-prompt-length "$mpl" --ref-model init \
  --limit 3 2>eval-lim.err | tail -1 > eval-lim.json
grep -q "^val: [0-9] of 3 pairs cut by" eval-lim.err || { cat eval-lim.err; fail "eval --limit cut pairs it does not evaluate"; }
python3 -c "import json, sys; n = json.load(open('eval-lim.json'))['n']; sys.exit(0 if n == 3 else f'n {n}')" || fail "eval --limit 3"
expect_error "d.h5: /val: [0-9]* pairs are cut by --max-length $ml.*give --ref-model" \
  "$METAPO" eval --model ml-fly/final --data d.h5 --split val --max-length "$ml" --max-prompt-length "$mpl"

# metapo analyze of a MetaPO run cut on the fly sees the pairs as the run cut them: the same features
# and margins as the analysis of the run on the file cut beforehand (the runs differ by the packing of
# the cut pairs' reference log-probs only).
meta2="--weighting metapo --meta-val-batch 8"
"$METAPO" train --model init --data d.h5 --out mlm-fly $common --micro-batch 4 --max-length "$ml" --max-prompt-length "$mpl" \
  $meta2 >/dev/null
"$METAPO" train --model init --data cut.h5 --out mlm-file $common --micro-batch 4 $meta2 >/dev/null
"$METAPO" analyze --run mlm-fly --data d.h5 --max-pairs 16 --ig-steps 4 --permutation-repeats 1 > mlm-fly.analyze
"$METAPO" analyze --run mlm-file --data cut.h5 --max-pairs 16 --ig-steps 4 --permutation-repeats 1 >/dev/null
grep -q "^note: [0-9]* of 96 pairs cut as the run cut them" mlm-fly.analyze || { cat mlm-fly.analyze; fail "analyze did not cut"; }
python3 - <<'P'
import json
a = {r["sample_id"]: r for r in map(json.loads, open("mlm-fly/pair_weights.jsonl"))}
b = {r["sample_id"]: r for r in map(json.loads, open("mlm-file/pair_weights.jsonl"))}
assert a.keys() == b.keys() and len(a) == 96, (len(a), len(b))
worst = 0.0
for k in a:
    va = [a[k]["weight"]] + list(a[k]["features"].values())
    vb = [b[k]["weight"]] + list(b[k]["features"].values())
    worst = max([worst] + [abs(x - y) / max(abs(y), 1e-3) for x, y in zip(va, vb)])
assert worst < 1e-3, worst
print(f"ok: analyze of a run cut on the fly = of the run on the cut file (features and weights {worst:.1e})")
P

# --- Refusals, before any training.
expect_error "d.h5: /train: example " "$METAPO" train --model init --data d.h5 --out bad1 $common \
  --micro-batch-tokens $((longest - 1))
[ ! -e bad1/run.json ] || fail "a refused run wrote bad1/run.json"
expect_error "leaves no room for a response under --max-length 2" "$METAPO" train --model init --data d.h5 --out bad2 $common \
  --max-length 2
expect_error "--truncation-mode keep_middle: unknown" "$METAPO" train --model init --data d.h5 --out bad3 $common \
  --truncation-mode keep_middle
echo "ok: token budgets and --max-length"
# Sequences past the model's max_position_embeddings are said (RoPE runs on past the trained context
# without complaint), by train, sft, eval and precompute-ref; --max-length within it silences the note.
cp -r init short && python3 - <<'P'
import json
c = json.load(open("short/config.json")); c["max_position_embeddings"] = 12; json.dump(c, open("short/config.json", "w"))
P
cp d.h5 dshort.h5
"$METAPO" precompute-ref --model short --data dshort.h5 > ctx-ref.log
grep -q "^note: dshort.h5: /train: [0-9]* of 96 sequences are longer than the model's max_position_embeddings 12" ctx-ref.log ||
  { cat ctx-ref.log; fail "precompute-ref did not note sequences past the context"; }
"$METAPO" train --model short --data dshort.h5 --out ctx $common --micro-batch 4 > ctx.log
grep -q "^note: dshort.h5: /train: .* max_position_embeddings 12" ctx.log || { cat ctx.log; fail "train did not note sequences past the context"; }
"$METAPO" sft --model short --data dshort.h5 --out ctxs --batch-size 8 --max-steps 1 --save-every-minutes 0 > ctxs.log
grep -q "^note: dshort.h5: /sft: .* max_position_embeddings 12" ctxs.log || { cat ctxs.log; fail "sft did not note sequences past the context"; }
"$METAPO" train --model short --data dshort.h5 --out ctx2 $common --micro-batch 4 --max-length 12 --max-prompt-length 6 \
  --ref-model short > ctx2.log
! grep -q "max_position_embeddings" ctx2.log || fail "a run within the context got the note"
echo "ok: sequences past max_position_embeddings are noted"
