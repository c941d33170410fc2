#!/usr/bin/env bash
# `metapo plan` against what `metapo train` measures: for DP x TP x PP = 1x1x1, 2x1x1, 1x2x1, 1x1x2 and
# 2x2x2, each with --recompute none and full (and selective at 2x2x2), MetaPO on, a token budget:
# every category of the plan (fp32, --data: the run's own micro-batches) within 10% of the run's
# high-water mark (run.json memory_peak_bytes_per_rank, the largest over each stage's ranks), nothing
# counted as "other", and the run's progress output prints the marks. Also DP 2 x PP 2 with pair-count
# micro-batches, evaluations, refresh passes and no stored reference log-probs (forward-only passes:
# their micro-batches count too).
# Then the bad-input lines.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --seed 7 --flip 0.2 --n-train 96 --n-val 32 --n-test 16 --n-sft 16 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 1 >/dev/null
cp d.h5 noref.h5  # the DP 2 x PP 2 case scores its reference log-probs itself
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
common="--batch-size 16 --max-steps 4 --weighting metapo --meta-val-batch 8"
opts="$common --micro-batch-tokens 120"
layouts="1x1x1 2x1x1 1x2x1 1x1x2 2x2x2"
for l in $layouts; do
  IFS=x read -r dp tp pp <<<"$l"
  np=$((dp * tp * pp))
  modes="none full"
  [ "$l" = 2x2x2 ] && modes="none selective full"
  for rc in $modes; do
    if [ "$np" -eq 1 ]; then
      "$METAPO" train --model init --data d.h5 --out "run-$l-$rc" $opts --recompute "$rc" --save-every-minutes 0 >"run-$l-$rc.log"
    else
      $MPIRUN "$np" "$METAPO" train --model init --data d.h5 --out "run-$l-$rc" $opts --recompute "$rc" \
        --tp "$tp" --pp "$pp" --save-every-minutes 0 >"run-$l-$rc.log"
    fi
    "$METAPO" plan --model init --gpus "$np" --tp "$tp" --pp "$pp" --recompute "$rc" --precision fp32 \
      --data d.h5 $opts >"plan-$l-$rc.txt"
  done
done
# Pair counts, evaluations, refresh passes and the reference model's scoring (a dataset without
# reference log-probs): layout label 2x1x2e, DP 2 x PP 2.
extra="$common --micro-batch 3 --eval-every 2 --stats-refresh-every 1 --stats-refresh-pairs 20"
$MPIRUN 4 "$METAPO" train --model init --data noref.h5 --out run-2x1x2e-none $extra --pp 2 --save-every-minutes 0 \
  >run-2x1x2e-none.log
"$METAPO" plan --model init --gpus 4 --tp 1 --pp 2 --recompute none --precision fp32 --data noref.h5 $extra --micro-batch-tokens 0 \
  >plan-2x1x2e-none.txt
layouts="$layouts 2x1x2e"
# A refresh window that covers the split, less each step's batch (the trainer leaves it out): plan
# packs the same forward-only micro-batches, so its activations are the run's to the byte (a plan
# that kept the batch in the window was 1.3% under on seed 1, 7.6% at another setting).
for s in 1 2 3 4; do
  ex="--batch-size 2 --max-steps 4 --weighting metapo --meta-val-batch 2 --micro-batch 4 --stats-refresh-every 1 --stats-refresh-pairs 96 --seed $s --track-pairs 0"
  "$METAPO" train --model init --data d.h5 --out "run-refresh-$s" $ex --save-every-minutes 0 >/dev/null
  "$METAPO" plan --model init --gpus 1 --tp 1 --pp 1 --recompute none --precision fp32 --data d.h5 $ex --micro-batch-tokens 0 \
    | tail -1 >"plan-refresh-$s.json"
  python3 - "$s" <<'P' || fail "plan's activations with refresh passes differ from the run's"
import json, sys
s = sys.argv[1]
run = json.load(open(f"run-refresh-{s}/run.json"))["memory_peak_bytes_per_rank"][0]["activations"]
plan = json.load(open(f"plan-refresh-{s}.json"))["layouts"][0]["stages"][0]["activations"]
assert run == plan, (s, run, plan)
P
done
echo "ok: plan's refresh passes are the trainer's (activations equal on seeds 1-4)"
grep -q "^memory high-water per rank" run-1x1x1-none.log || { cat run-1x1x1-none.log; fail "no high-water line in the progress output"; }
LAYOUTS="$layouts" python3 - <<'P'
import json, os
cats = ["params", "grads", "optimizer", "activations", "workspace", "metapo", "comm", "data"]
worst = 0.0
rows = []
for l in os.environ["LAYOUTS"].split():
    for rc in (["none", "selective", "full"] if l == "2x2x2" else ["none"] if l.endswith("e") else ["none", "full"]):
        run = json.load(open(f"run-{l}-{rc}/run.json"))["memory_peak_bytes_per_rank"]
        plan = json.loads(open(f"plan-{l}-{rc}.txt").read().strip().splitlines()[-1])["layouts"]
        assert len(plan) == 1, plan
        stages = plan[0]["stages"]
        for s, want in enumerate(stages):
            ranks = [r for r in run if r["pp"] == s]
            assert ranks, (l, rc, s)
            for r in ranks:
                assert r["other"] == 0, f"{l} {rc}: rank {r['rank']} counts {r['other']} bytes as other"
            for c in cats:
                got = max(r[c] for r in ranks)
                if want[c] == 0 and got == 0:
                    continue
                err = abs(want[c] - got) / max(got, 1)
                worst = max(worst, err)
                rows.append((l, rc, s, c, want[c], got, err))
                assert err <= 0.10, f"{l} --recompute {rc} stage {s} {c}: plan {want[c]} bytes, measured {got} ({100 * err:.1f}%)"
# The table the issue asks for: plan against measured, largest error per layout.
by = {}
for l, rc, s, c, w, g, e in rows:
    k = (l, rc)
    by[k] = max(by.get(k, (0, "")), (e, f"stage {s} {c}"))
for (l, rc), (e, where) in by.items():
    print(f"ok: {l} --recompute {rc}: every category within {100 * e:.2f}% (largest: {where})")
print(f"ok: plan vs measured over {len(rows)} category marks: worst {100 * worst:.2f}%")
# Recomputation shows in the measured activations: full keeps less than none at every layout.
for l in os.environ["LAYOUTS"].split()[:5]:
    a = {rc: max(r["activations"] for r in json.load(open(f"run-{l}-{rc}/run.json"))["memory_peak_bytes_per_rank"])
         for rc in ("none", "full")}
    assert a["full"] < 0.6 * a["none"], (l, a)
P

# --- Bad input: one line each, before any work.
expect_error "--gpu-memory 80XB" "$METAPO" plan --model init --gpus 8 --gpu-memory 80XB
expect_error "--tp 3 does not divide --gpus 8" "$METAPO" plan --model init --gpus 8 --tp 3
# A tensor-parallel group stays inside a node, and a fixed --tp must split the heads: named, not a
# generic "no layout".
expect_error "--tp 8: a tensor-parallel group must stay inside a node of --gpus-per-node 4" "$METAPO" plan \
  --model llama-3-8b --gpus 8 --tp 8 --gpus-per-node 4 --micro-batch-tokens 4096
expect_error "--tp 8 does not divide the model's attention heads (28)" "$METAPO" plan --model qwen2-7b --gpus 8 --tp 8 \
  --micro-batch-tokens 4096
"$METAPO" plan --model llama-3-8b --gpus 12 --gpus-per-node 3 --micro-batch-tokens 4096 --show 100 > pn3.txt
! grep -qE "^ +2 +[0-9]+ +[0-9]+ " pn3.txt || { cat pn3.txt; fail "plan lists TP 2 groups that straddle nodes of 3"; }
grep -qE "^ +1 +[0-9]+ +[0-9]+ " pn3.txt || { cat pn3.txt; fail "plan lists no layout for nodes of 3"; }
expect_error "--recompute most: unknown" "$METAPO" plan --model init --gpus 8 --recompute most
expect_error "--model nope: no such preset" "$METAPO" plan --model nope --gpus 8
expect_error "--batch-size, --micro-batch and --meta-val-batch must be positive" "$METAPO" plan --model init --gpus 2 \
  --data d.h5 --batch-size 0
expect_error "--pairs and --tokens-per-step must be >= 0" "$METAPO" plan --model init --gpus 2 --pairs -1
expect_error "--track-pairs" "$METAPO" plan --model init --gpus 2 --data d.h5 --track-pairs -1
expect_error "--gpus 1000000000000: must be in" "$METAPO" plan --model init --gpus 1000000000000
expect_error "--pp-layers 1,2: 3 layers, the model has 4" "$METAPO" plan --model init --gpus 2 --pp 2 --pp-layers 1,2
# A huge --gpus is planned in O(sqrt) of its divisors, not one pass per device count.
timeout 20 "$METAPO" plan --model init --gpus 1000000007 >/dev/null || fail "plan --gpus 1000000007 took over 20 s"
# --micro-batch-tokens 0 with --data: the micro-batches --data gives, not 0 tokens.
"$METAPO" plan --model init --gpus 1 --data d.h5 --micro-batch-tokens 0 >p0.txt
grep -q "micro-batches of [1-9][0-9]* tokens" p0.txt && ! grep -q "FLOPs per step of 0 tokens" p0.txt || { cat p0.txt; fail "plan reported 0-token micro-batches"; }
echo "ok: metapo plan"
