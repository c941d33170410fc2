#!/usr/bin/env bash
# Pipeline parallelism (1F1B) in the trainer: `metapo train` (DPO and MetaPO) and `metapo sft` under the
# layouts DP x PP x TP = 1x2x1, 1x4x1 (one layer per stage), 2x2x2 (8 ranks, oversubscribed) and an
# uneven split (--pp-layers 3,1) give the per-step losses, gradient norms and final parameters of the
# 1-rank run within 1e-4 relative; precompute-ref and eval with --pp agree with 1 rank; the
# communication per step at 2x2x2 equals the analytic count of docs/training.md, and the memory per
# rank of every stage the formula there; bad --pp / --pp-layers fail with one clear line.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --seed 3 --flip 0.2 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 2 >/dev/null
cp d.h5 dpp.h5
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
$MPIRUN 2 "$METAPO" precompute-ref --model init --data dpp.h5 --pp 2 --micro-batch 3 >/dev/null
same_ref_logps d.h5 dpp.h5 "precompute-ref --pp 2"
"$METAPO" eval --model init --data d.h5 --split test > eval1.json
$MPIRUN 8 "$METAPO" eval --model init --data d.h5 --split test --tp 2 --pp 2 > eval8.json

common="--batch-size 8 --micro-batch 2 --max-steps 10 --lr 1e-3 --warmup-steps 1"
# As in train_tp.sh: MetaPO from the SFT model, with its defaults otherwise (Adam preconditioning of
# the validation gradient included).
# gate 0: the weights as learned; the reference is init, whose log-probs d.h5 holds (the policy starts
# from sft-1x1x1/final)
meta="--weighting metapo --meta-gate 0 --meta-val-batch 8 --stats-refresh-every 1 --stats-refresh-pairs 16 --ref-model init"
run() {  # run KIND LAYOUT MODEL extra...   (layout name = DPxPPxTP)
  local kind="$1" layout="$2" model="$3"; shift 3
  local dp pp tp
  IFS=x read -r dp pp tp <<< "$layout"
  local cmd=train out="$kind-$layout"
  [ "$kind" = sft ] && cmd=sft
  [ $# -gt 0 ] && [ "$1" = "--pp-layers" ] && out="$out-uneven"
  $MPIRUN $((dp * pp * tp)) "$METAPO" $cmd --model "$model" --data d.h5 --out "$out" $common --tp "$tp" --pp "$pp" "$@" \
    > "$out.log" || { cat "$out.log"; fail "$kind under $layout $*"; }
}
"$METAPO" sft --model init --data d.h5 --out sft-1x1x1 $common >/dev/null
"$METAPO" train --model init --data d.h5 --out dpo-1x1x1 $common >/dev/null
"$METAPO" train --model sft-1x1x1/final --data d.h5 --out meta-1x1x1 $common $meta >/dev/null
for layout in 1x2x1 2x2x2; do run sft "$layout" init; done
for layout in 1x2x1 1x4x1 2x2x2; do
  run dpo "$layout" init
  run meta "$layout" sft-1x1x1/final $meta
done
run dpo 1x2x1 init --pp-layers 3,1
grep -q "weight net identical on all 4 ranks of the last pipeline stage (DP 2 x TP 2" meta-2x2x2.log ||
  fail "no weight-net identity check over the last stage"
grep -q "memory per rank (DP 2 x PP 2 x TP 2, stage 1 (layers 2-3)): params" dpo-2x2x2.log || fail "no per-stage memory line"
[ -f meta-2x2x2/metapo.json ] || fail "meta 2x2x2: no metapo.json (written by the last stage)"

PYTHONPATH="$SRC/tests/cli" python3 - <<'P'
import json, math
from runs import check_layout, rel, steps

cases = [("sft", l, "1x1x1") for l in ("1x2x1", "2x2x2")]
cases += [(k, l, "1x1x1") for k in ("dpo", "meta") for l in ("1x2x1", "1x4x1", "2x2x2")]
cases += [("dpo", "1x2x1-uneven", "1x1x1")]
for kind, layout, base in cases:
    l2 = check_layout(kind, layout, base, 1e-4)
    if "x2x" in layout or "x4x" in layout:
        assert l2[0]["comm/p2p_bytes"] > 0, (kind, layout, "no activations sent")

# The analytic communication count per step (docs/training.md), summed over all ranks, for DPO:
# N tokens and R scored rows in the global batch, L layers, hidden C, world W = DP·PP·TP.
cfg = json.load(open("init/config.json"))
C, L, V, I = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
Hq, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
D = cfg.get("head_dim", C // Hq)

def local_params(TP, first, last, layers):
    Vr = -(-V // TP)  # vocabulary rows of one shard (padded)
    per_layer = 2 * C + (Hq + 2 * Hkv) * D // TP * C + C * Hq * D // TP + 3 * (I // TP) * C
    return (Vr * C if first else 0) + layers * per_layer + ((C + Vr * C) if last else 0)

def stage_sizes(PP, TP, counts):
    return [local_params(TP, s == 0, s == PP - 1, n) for s, n in enumerate(counts)]

def expected(j, DP, PP, TP):
    N, R, W = j["tokens"], j["scored_tokens"], DP * PP * TP
    sizes = stage_sizes(PP, TP, [L // PP] * PP)
    padded = [-(-n // DP) * DP for n in sizes]
    e = {"p2p": 2 * (PP - 1) * TP * N * C * 4,
         "allreduce": (TP * (N * C * 4 * (4 * L + 2) + R * 24) if TP > 1 else 0)
                      + W * 8 * ((DP > 1) + (TP * PP > 1)),
         "reduce_scatter": DP * TP * 4 * sum(padded) if DP > 1 else 0,
         "alltoall": 0, "broadcast": 0}
    e["allgather"] = e["reduce_scatter"]
    return e

for layout, (DP, PP, TP) in (("2x2x2", (2, 2, 2)), ("1x4x1", (1, 4, 1))):
    for j in steps(f"dpo-{layout}"):
        want = expected(j, DP, PP, TP)
        got = {k: j[f"comm_all/{k}_bytes"] for k in want}
        assert got == want, f"dpo {layout} step {j['step']}: communication {got} != analytic {want}"
    j = steps(f"dpo-{layout}")[0]
    print(f"ok: dpo {layout} communication per step = analytic count; step 1 (N={j['tokens']:.0f} tokens, "
          f"R={j['scored_tokens']:.0f} scored): " + ", ".join(f"{k} {v / 1e6:.3f} MB" for k, v in expected(j, DP, PP, TP).items() if v))

# Memory per rank of every stage (run.json memory_bytes_per_stage, the DP 0 / TP 0 rank of each stage):
# params = grads = 4·DP·⌈n/DP⌉, optimizer state = 8·⌈n/DP⌉ for the stage's local n.
for layout, (DP, PP, TP) in (("2x2x2", (2, 2, 2)), ("1x4x1", (1, 4, 1)), ("1x2x1", (1, 2, 1))):
    run = json.load(open(f"dpo-{layout}/run.json"))
    per = run["memory_bytes_per_stage"]
    assert len(per) == PP and run["parallel"]["pp"] == PP, (layout, run["parallel"])
    for s, (m, n) in enumerate(zip(per, stage_sizes(PP, TP, [L // PP] * PP))):
        shard = -(-n // DP)
        assert m["params"] == m["grads"] == 4 * DP * shard, (layout, s, m, n)
        assert m["optimizer_state"] == 8 * shard, (layout, s, m, n)
        assert m["activations"] > 0, (layout, s, m)
    print(f"ok: dpo {layout} memory per stage = formula: " +
          "; ".join(f"stage {s}: params {m['params']} B, optimizer {m['optimizer_state']} B, activations {m['activations']} B"
                    for s, m in enumerate(per)))
e1, e8 = json.load(open("eval1.json")), json.load(open("eval8.json"))
assert rel(e8["loss"], e1["loss"]) < 1e-4 and e8["n"] == e1["n"], (e1, e8)
print(f"ok: eval on 2x2x2 agrees with 1 rank (loss rel diff {rel(e8['loss'], e1['loss']):.2e})")
P

expect_error "--pp-layers: the layer counts sum to 6" $MPIRUN 2 "$METAPO" train --model init --data d.h5 --out bad $common --pp 2 --pp-layers 3,3
expect_error "--pp-layers 4: 1 layer counts for --pp 2" $MPIRUN 2 "$METAPO" train --model init --data d.h5 --out bad $common --pp 2 --pp-layers 4
expect_error "--pp-layers 2,x" "$METAPO" train --model init --data d.h5 --out bad $common --pp-layers 2,x
expect_error "--hypergrad exact is not supported with --pp 2" $MPIRUN 2 "$METAPO" train --model init --data d.h5 --out bad $common --pp 2 --weighting metapo --hypergrad exact
