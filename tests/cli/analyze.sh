#!/usr/bin/env bash
# metapo analyze end to end: a short MetaPO run on the synthetic sort task (30% flipped pairs), then
# analyze on 1 and 2 ranks. Checks the last stdout line (JSON, fields present, the two runs agree),
# analysis.json and pair_weights.jsonl (one line per train pair); a longer run whose pairs have
# history gives the temporal features a non-zero share; bad inputs give one error line.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --flip 0.3 --seed 1 --n-train 128 --n-val 32 --n-test 32 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 2 >/dev/null
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
common="--model init --data d.h5 --weighting metapo --batch-size 16 --micro-batch 8 --meta-val-batch 16"
"$METAPO" train $common --out run --max-steps 6 >/dev/null
# --meta-lr not given: 0.375 over the run's 6 meta updates, as run.json records it; a given one is kept.
python3 -c "import json, sys; lr = json.load(open('run/run.json'))['meta']['lr']; sys.exit(0 if abs(lr - 0.375 / 6) < 1e-15 else f'run.json meta.lr {lr}, expected 0.375/6')"
"$METAPO" train $common --out run_lr --max-steps 2 --meta-lr 2e-3 >/dev/null
python3 -c "import json, sys; lr = json.load(open('run_lr/run.json'))['meta']['lr']; sys.exit(0 if lr == 2e-3 else f'run.json meta.lr {lr}, expected 2e-3')"
echo "ok: run.json meta.lr by the run's length (0.375/6), and as given"
# A refresh pass leaves out the step's own pairs, which the step observes at the same parameters: one
# step refreshing all 128 pairs leaves each with one observation (the batch's 16 had two, passing for
# history with trend and volatility 0).
"$METAPO" train $common --out refreshed --max-steps 1 --stats-refresh-every 1 --stats-refresh-pairs 128 >/dev/null
python3 - <<'P' || fail "a refresh pass observed the step's own pairs a second time"
import collections, json
t = json.load(open("refreshed/metapo.json"))["pair_stats"]
k = len(t["fields"])
n = collections.Counter(t["data"][r * k + t["fields"].index("n")] for r in range(len(t["data"]) // k))
assert n == {1.0: 128}, n
P
echo "ok: a refresh pass leaves out the step's own pairs"
[ -f run/metapo.json ] || fail "train --weighting metapo wrote no run/metapo.json"

# --meta-trace: one line per meta step with every pair's features, weight and alignment; its weights
# a, raised to the step's gamma (the significance gate), are the ones metrics.jsonl summarizes
# (weights/mean, weights/ess = (Σa)²/Σa²).
"$METAPO" train $common --out traced --max-steps 6 --meta-trace traced/meta_trace.jsonl >/dev/null
python3 - <<'P'
import json, math
tr = [json.loads(l) for l in open("traced/meta_trace.jsonl")]
mt = [json.loads(l) for l in open("traced/metrics.jsonl") if '"weights/ess"' in l]
assert [t["step"] for t in tr] == [1, 2, 3, 4, 5, 6], [t["step"] for t in tr]
assert len(mt) == 6, len(mt)
for t, m in zip(tr, mt):
    n = len(t["a"])
    assert n == 16 and len(set(t["sample_id"])) == 16, t["sample_id"]
    assert len(t["raw"]) == len(t["x"]) == 16 * 8 and len(t["s"]) == 16, {k: len(v) for k, v in t.items() if k != "step"}
    assert 0 <= t["gamma"] < 1 or t["gamma"] == 1, t["gamma"]
    a = [1.0 if t["gamma"] == 0 else v ** t["gamma"] for v in t["a"]]
    ess = sum(a) ** 2 / sum(v * v for v in a)
    assert abs(ess - m["weights/ess"]) < 1e-9 * ess, (t["step"], ess, m["weights/ess"])
    assert abs(sum(a) / n - m["weights/mean"]) < 1e-12, (t["step"], sum(a) / n, m["weights/mean"])
    assert all(math.isfinite(v) for v in t["s"]) and any(v != 0 for v in t["s"]), t["s"]
    assert all(t["x"][k * 8 + 4] == 0 for k in range(n)), "log_count entered the net"
assert mt[0]["weights/ess"] == 16.0 or abs(mt[0]["weights/ess"] - 16) < 1e-9, mt[0]["weights/ess"]  # step 1: equal weights
print("ok: meta_trace.jsonl (6 steps x 16 pairs) matches weights/mean and weights/ess")
P
# Under --tp 2 both ranks hold the replica's MetaPO state; one of them writes the trace, once a step,
# with the same weights as one rank (fp32 summation order apart).
$MPIRUN 2 "$METAPO" train $common --out traced_tp --max-steps 6 --tp 2 --meta-trace traced_tp/meta_trace.jsonl >/dev/null
python3 - <<'P'
import json
one = [json.loads(l) for l in open("traced/meta_trace.jsonl")]
tp = [json.loads(l) for l in open("traced_tp/meta_trace.jsonl")]
assert [t["step"] for t in tp] == [1, 2, 3, 4, 5, 6], [t["step"] for t in tp]
for a, b in zip(one, tp):
    wa, wb = dict(zip(a["sample_id"], a["a"])), dict(zip(b["sample_id"], b["a"]))
    assert wa.keys() == wb.keys(), a["step"]
    assert max(abs(wa[k] - wb[k]) for k in wa) < 1e-5, a["step"]  # fp32 TP reductions reorder sums
print("ok: --tp 2 writes one trace line per step, weights as on one rank")
P
expect_error "--meta-penalty must be finite and >= 0" "$METAPO" train $common --out badpen --max-steps 1 --meta-penalty -1
expect_error "--meta-penalty must be finite and >= 0 (got nan)" "$METAPO" train $common --out badpen --max-steps 1 --meta-penalty nan
expect_error "--meta-lr must be finite and positive (got nan)" "$METAPO" train $common --out badpen --max-steps 1 --meta-lr nan
expect_error "--meta-lr must be finite and positive (got 0)" "$METAPO" train $common --out badpen --max-steps 1 --meta-lr 0
expect_error "--meta-apply weight: unknown (valid: scale, confidence)" "$METAPO" train $common --out badpen --max-steps 1 --meta-apply weight
[ ! -e badpen ] || fail "train wrote badpen/ despite a bad --meta-penalty"
expect_error "--meta-gate must be finite and >= 0" "$METAPO" train $common --out badgate --max-steps 1 --meta-gate -1
expect_error "--meta-gate-ema must be in (0, 1]" "$METAPO" train $common --out badgate --max-steps 1 --meta-gate-ema 0
[ ! -e badgate ] || fail "train wrote badgate/ despite a bad --meta-gate"

"$METAPO" analyze --run run --data d.h5 > a1.log
$MPIRUN 2 "$METAPO" analyze --run run --data d.h5 --out run/np2/analysis.json > a2.log
echo "--- metapo analyze (1 rank) ---"; cat a1.log; echo "---"
python3 - <<'P'
import json, math
last = lambda p: json.loads(open(p).read().strip().splitlines()[-1])
a, b = last("a1.log"), last("a2.log")
keys = ["temporal_share", "temporal_share_permutation", "quality_auc", "spearman", "weight_mean", "weight_std", "n"]
for k in keys:
    assert k in a and k in b, f"last line lacks {k}: {a}"
assert a["n"] == b["n"] == 128, (a["n"], b["n"])
assert a["quality_auc"] is not None and 0 <= a["quality_auc"] <= 1, a
assert 0.001 < a["weight_mean"] < 1, a
# 2 ranks pack other micro-batches, so margins agree up to fp32 summation order (~1e-6 nats) and the
# weights far closer; rank statistics may swap two near-equal weights, 1/(90·38) ≈ 3e-4 each
# (recorded reason for 1e-2 on AUC/Spearman, 1e-6 on the weight moments).
for k in ["weight_mean", "weight_std"]:
    assert abs(a[k] - b[k]) < 1e-6, (k, a[k], b[k])
for k in ["quality_auc", "spearman", "margin_auc", "margin_ema_auc", "temporal_share", "temporal_share_permutation"]:
    if a[k] is None or b[k] is None:
        assert a[k] is None and b[k] is None, (k, a[k], b[k])
    else:
        assert abs(a[k] - b[k]) < 1e-2, (k, a[k], b[k])
for d in ["run", "run/np2"]:
    full = json.load(open(f"{d}/analysis.json"))
    assert full["summary"]["n"] == 128 and full["split"] == "train"
    assert len(full["weights"]["histogram"]["counts"]) == 20 and sum(full["weights"]["histogram"]["counts"]) == 128
    assert len(full["attribution"]["integrated_gradients"]["mean_abs"]) == 8
    assert {g["name"] for g in full["groups"]} >= {"clean", "flipped", "clean/hard", "flipped/easy"}
    assert sum(g["count"] for g in full["groups"] if g["name"] in ("clean", "flipped")) == 128
    lines = [json.loads(l) for l in open(f"{d}/pair_weights.jsonl")]
    assert len(lines) == 128, len(lines)
    assert sorted(l["sample_id"] for l in lines) == sorted(set(l["sample_id"] for l in lines))
    for l in lines:
        assert {"sample_id", "weight", "quality", "difficulty", "history", "features"} <= set(l), l
        assert len(l["features"]) == 8
print(f"ok: analyze on 1 and 2 ranks agree: {json.dumps(a)}")
P
[ ! -e run/analysis.json.partial ] || fail "left a .partial file"

# Three epochs: every pair is seen 3 times, so the net learns from history and analyze sees it.
"$METAPO" train $common --out run3 --max-steps 24 >/dev/null
"$METAPO" analyze --run run3 --data d.h5 --ig-steps 16 --permutation-repeats 1 > a3.log
python3 - <<'P'
import json
full = json.load(open("run3/analysis.json"))
s = full["summary"]
assert full["with_history"] == 128, full["with_history"]
assert s["temporal_share"] is not None and s["temporal_share"] > 0, s
assert s["temporal_share_permutation"] is not None and s["temporal_share_permutation"] > 0, s
assert full["attribution"]["integrated_gradients"]["completeness_gap"] < 1e-2, full["attribution"]
print(f"ok: after 3 epochs: temporal share {s['temporal_share']:.3f} (IG), {s['temporal_share_permutation']:.3f} (permutation)")
P

# Bad inputs: a run without MetaPO, a run whose metapo.json is gone or from another version.
"$METAPO" train --model init --data d.h5 --out dpo --batch-size 16 --micro-batch 8 --max-steps 1 >/dev/null
expect_error "dpo/metapo.json not found" "$METAPO" analyze --run dpo --data d.h5
expect_error "dpo/metapo.json not found" $MPIRUN 2 "$METAPO" analyze --run dpo --data d.h5
[ ! -e dpo/analysis.json ] && [ ! -e dpo/pair_weights.jsonl ] || fail "analysis written for a run without metapo"
cp -r run gone && rm gone/metapo.json
expect_error "gone/metapo.json not found" "$METAPO" analyze --run gone --data d.h5
cp -r run old && python3 -c "
import json; j = json.load(open('old/metapo.json')); j['format_version'] = 9; json.dump(j, open('old/metapo.json', 'w'))"
expect_error "old/metapo.json: format_version 9" "$METAPO" analyze --run old --data d.h5
cp -r run short && python3 -c "
import json; j = json.load(open('short/metapo.json')); j['net']['params'].pop(); json.dump(j, open('short/metapo.json', 'w'))"
expect_error "short/metapo.json: net.params has" "$METAPO" analyze --run short --data d.h5
expect_error "--run nosuch" "$METAPO" analyze --run nosuch --data d.h5
expect_error "no split 'nosplit'" "$METAPO" analyze --run run --data d.h5 --split nosplit
# Neither output replaces what analyze reads, nor the other output.
cp run/metapo.json metapo.before
expect_error "--out run/metapo.json: is an input of this command" "$METAPO" analyze --run run --data d.h5 --out run/metapo.json
expect_error "--out d.h5: is an input of this command" "$METAPO" analyze --run run --data d.h5 --out d.h5
expect_error "pair_weights.jsonl is the name of analyze's other output" "$METAPO" analyze --run run --data d.h5 \
  --out run/pair_weights.jsonl
cmp run/metapo.json metapo.before || fail "analyze changed run/metapo.json"
# A file of the user's at either output is refused; analyze's own earlier ones are replaced (above).
mkdir -p mine && echo "my notes" > mine/report.json
expect_error "--out mine/report.json: exists and is not an analyze output" "$METAPO" analyze --run run --data d.h5 --out mine/report.json
rm mine/report.json && echo "my notes" > mine/pair_weights.jsonl
expect_error "its pair_weights.jsonl mine/pair_weights.jsonl: exists and is not an analyze output" "$METAPO" analyze \
  --run run --data d.h5 --out mine/report.json
[ "$(cat mine/pair_weights.jsonl)" = "my notes" ] && [ ! -e mine/report.json ] || fail "analyze replaced a file of the user's"
# Data of the same size from another seed (the same sample ids): not the run's training split.
"$METAPO" synth --task sort --flip 0.3 --seed 5 --n-train 128 --n-val 32 --n-test 32 --n-sft 64 --out other.h5 >/dev/null
"$METAPO" precompute-ref --model init --data other.h5 >/dev/null
expect_error "other.h5: /train is not the training split run was trained on" "$METAPO" analyze --run run --data other.h5
echo "ok: bad inputs rejected cleanly"
