#!/usr/bin/env bash
# Tensor parallelism in the trainer: `metapo train` (DPO and MetaPO) under the layouts DP x PP x TP =
# 1x1x1, 2x1x1, 1x1x2 and 2x1x2 (4 ranks, oversubscribed), and `metapo sft` under 1x1x2, give the
# per-step losses and the final parameters of the 1-rank run up to floating-point reduction order;
# precompute-ref and eval with --tp 2 agree with 1 rank; metrics carry comm/*_bytes and run.json
# memory_bytes; --tp or --pp that does not divide the world fails with one clear line (pipeline
# parallelism: train_pp.sh).
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --seed 3 --flip 0.2 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 2 >/dev/null
cp d.h5 dtp.h5
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
$MPIRUN 2 "$METAPO" precompute-ref --model init --data dtp.h5 --tp 2 >/dev/null
same_ref_logps d.h5 dtp.h5 "precompute-ref --tp 2"
"$METAPO" eval --model init --data d.h5 --split test > eval1.json
$MPIRUN 4 "$METAPO" eval --model init --data d.h5 --split test --tp 2 > eval4.json

common="--batch-size 8 --micro-batch 2 --max-steps 10 --lr 1e-3 --warmup-steps 1"
# MetaPO starts from the SFT model (reference: init), so margins are nonzero from step 1: with the
# policy equal to the reference they are 0 on one rank but ~1e-8 of reduction-order noise under TP,
# and the feature standardizer would blow that noise up to unit-size features. With the default Adam
# preconditioning of the validation gradient (bounded per coordinate, see ZeroAdamW).
# gate 0: the weights as learned; the reference is init, whose log-probs d.h5 holds (the policy starts
# from sft-1x1x1/final)
meta="--weighting metapo --meta-gate 0 --meta-val-batch 8 --stats-refresh-every 1 --stats-refresh-pairs 16 --ref-model init"
# layout name = DPxPPxTP; the trainer gets --tp and DP follows from the rank count.
run() {  # run KIND LAYOUT MODEL extra...
  local kind="$1" layout="$2" model="$3"; shift 3
  local dp="${layout%%x*}" tp="${layout##*x}"
  local cmd=train
  [ "$kind" = sft ] && cmd=sft
  $MPIRUN $((dp * tp)) "$METAPO" $cmd --model "$model" --data d.h5 --out "$kind-$layout" $common --tp "$tp" "$@" \
    > "$kind-$layout.log" || { cat "$kind-$layout.log"; fail "$kind under $layout"; }
}
"$METAPO" sft --model init --data d.h5 --out sft-1x1x1 $common >/dev/null
run sft 1x1x2 init
"$METAPO" train --model init --data d.h5 --out dpo-1x1x1 $common >/dev/null
"$METAPO" train --model sft-1x1x1/final --data d.h5 --out meta-1x1x1 $common $meta >/dev/null
for layout in 2x1x1 1x1x2 2x1x2; do
  run dpo "$layout" init
  run meta "$layout" sft-1x1x1/final $meta
done
grep -q "weight net identical on all 4 ranks (DP 2 x TP 2" meta-2x1x2.log || fail "no weight-net identity check over 4 ranks"
grep -q "memory per rank (DP 2 x PP 1 x TP 2): params" dpo-2x1x2.log || fail "no memory line"

PYTHONPATH="$SRC/tests/cli" python3 - <<'P'
import json
from runs import check_layout, rel

kinds = ["comm/allreduce_bytes", "comm/reduce_scatter_bytes", "comm/allgather_bytes", "comm/alltoall_bytes",
         "comm/broadcast_bytes", "comm/p2p_bytes"]
# (kind, layout, baseline layout, tolerance). MetaPO's weights depend on the global batch only (the
# feature standardizer takes a step's features in at the end of the step, over all DP ranks at once),
# so DP 2 matches one rank too; 2x1x2 is also compared with 2x1x1 (TP alone).
cases = [("sft", "1x1x2", "1x1x1", 1e-4)] + [("dpo", l, "1x1x1", 1e-4) for l in ("2x1x1", "1x1x2", "2x1x2")]
cases += [("meta", l, "1x1x1", 1e-4) for l in ("2x1x1", "1x1x2", "2x1x2")] + [("meta", "2x1x2", "2x1x1", 1e-4)]
for kind, layout, base, tol in cases:
    # The clipping norm is the whole model's (norm weights counted once over TP): it is clipped at
    # step 1 (norm > --max-grad-norm 1), so a wrong norm would also show in the parameters.
    l2 = check_layout(kind, layout, base, tol)
    for j in l2:
        missing = [k for k in kinds if k not in j]
        assert not missing, f"{kind} {layout}: step {j['step']} lacks {missing}"
    if layout.endswith("x2"):
        # The model's TP all-reduces go through the TP communicator: far more than the DP traffic.
        assert l2[0]["comm/allreduce_bytes"] > 0, (kind, layout)
    mem = json.load(open(f"{kind}-{layout}/run.json"))["memory_bytes"]
    assert all(mem[k] > 0 for k in ("params", "grads", "optimizer_state", "activations")), (kind, layout, mem)

# Memory: with TP 2 each rank holds about half of the parameters; with DP 2 half of the optimizer state.
m1 = json.load(open("dpo-1x1x1/run.json"))["memory_bytes"]
m4 = json.load(open("dpo-2x1x2/run.json"))["memory_bytes"]
assert m4["params"] < 0.6 * m1["params"] and m4["optimizer_state"] < 0.3 * m1["optimizer_state"], (m1, m4)
e1, e4 = json.load(open("eval1.json")), json.load(open("eval4.json"))
assert rel(e4["loss"], e1["loss"]) < 1e-4 and e4["n"] == e1["n"], (e1, e4)
print(f"ok: eval on 2x1x2 agrees with 1 rank (loss rel diff {rel(e4['loss'], e1['loss']):.2e})")
P

expect_error "does not divide the world size 2" $MPIRUN 2 "$METAPO" train --model init --data d.h5 --out bad $common --tp 3
expect_error "--tp 1 x --pp 2 = 2 does not divide the world size 1" "$METAPO" train --model init --data d.h5 --out bad $common --pp 2
printf '[sft]\ntp = 3\n' > bad.ini
expect_error "--tp 3" "$METAPO" sft --model init --data d.h5 --out bad $common --config bad.ini
