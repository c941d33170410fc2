#!/usr/bin/env bash
# One step of gpu-check's PART=cli (tools/gpu-check.sh runs them in order, one table row each): the real
# metapo binary from .gpu-runtime/ (tools/gpu-runtime.sh) with --device $DEVICE against --device cpu on
# the tiny preset and a `metapo synth` dataset. Every step gives both sides the same inputs (the CPU
# side's SFT model, the CPU side's reference log-probs), so each compares one command.
#   tools/gpu-check-cli.sh STEP WORK   STEP: runtime sft ref dpo metapo resume bf16 eval score
# DEVICE=cuda (default): the other side on the GPU, within the tolerances below. DEVICE=cpu: the other
# side on the CPU too, with METAPO_STAGE_ON_CPU=1 (the device copies taken with host memory), where
# every difference must be exactly zero: the harness itself, checked without a GPU.
set -euo pipefail
step=$1 W=$2
SRC=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=${DEVICE:-cuda}
M=$SRC/.gpu-runtime/metapo
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 HDF5_USE_FILE_LOCKING=FALSE
export OMPI_MCA_orte_tmpdir_base=$W
mkdir -p "$W" && cd "$W"
if [ "$DEVICE" = cpu ]; then
  dev() { METAPO_STAGE_ON_CPU=1 "$M" "$@" --device cpu; }
  # Tolerances: none. Both sides run the same CPU code; the staged copies must not change a bit.
  export TOL_FP32=0 TOL_BF16=0 TOL_REF=0
else
  dev() { "$M" "$@" --device "$DEVICE"; }
  # Tolerances (relative, or absolute in nats for log-probs), with their reasons:
  # - fp32 training losses and eval metrics, 1e-3: the GPU sums in other orders (cuBLASLt's products,
  #   our reductions), ~1e-7 relative per op; AdamW amplifies such differences over steps (on the CPU,
  #   parameters one ulp apart give ~1e-6 loss differences after 50 steps), so 50 steps stay near 1e-5.
  #   1e-3 leaves two orders for that and is far below what a wrong kernel, a missed copy or a stale
  #   buffer gives (1e-2 and up from the first step).
  # - bf16, 2e-2: parameters and activations are rounded to bf16 (8 bits of mantissa, 4e-3 relative), and
  #   a sum in another order flips that rounding for some of them; the losses move by about that.
  # - reference log-probs, 1e-3 nats absolute: one forward, sums of ~60 token log-probs in fp32.
  export TOL_FP32=1e-3 TOL_BF16=2e-2 TOL_REF=1e-3
fi
common="--batch-size 8 --micro-batch 2 --lr 1e-3 --warmup-steps 2 --keep 0"
meta="--weighting metapo --meta-gate 0 --meta-lr 1e-2 --meta-val-batch 8 --stats-refresh-every 4 --stats-refresh-pairs 16"
steps=50  # the issue's 50 DPO and 50 MetaPO steps against the CPU loss curve

# compare A B TOL WHAT: per-step losses and gradient norms, eval lines and the final parameters of run A
# (the device) against run B (the CPU) within TOL (relative); with TOL 0, equal.
compare() {
  PYTHONPATH="$SRC/tests/cli" python3 - "$@" <<'P'
import json, sys
from runs import metrics, param_rel_diff, rel
a, b, tol, what = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
la = [j for j in metrics(a + "/metrics.jsonl") if "event" not in j]
lb = [j for j in metrics(b + "/metrics.jsonl") if "event" not in j]
assert len(la) == len(lb) and len(la) > 0, (what, len(la), len(lb))
keys = ("loss", "grad_norm", "eval/loss", "eval/pref_acc", "eval/margin")
worst = {}
for x, y in zip(la, lb):
    assert x.get("step") == y.get("step"), (what, x.get("step"), y.get("step"))
    for k in keys:
        if k in x or k in y:
            worst[k] = max(worst.get(k, 0.0), rel(x[k], y[k]))
d = param_rel_diff(a, b)
n = sum(1 for j in la if "loss" in j)
print(f"{what}: {n} steps; max relative difference " +
      ", ".join(f"{k} {v:.2e}" for k, v in worst.items()) + f"; final parameters {d:.2e} (tolerance {tol:g})")
bad = {k: v for k, v in worst.items() if v > tol}
if d > tol:
    bad["parameters"] = d
if tol == 0:
    # With no tolerance every logged number must be equal, timings aside.
    strip = lambda j: {k: v for k, v in j.items() if k not in ("step_time", "tokens_per_s") and not k.startswith("time/")}
    diff = [(x, y) for x, y in zip(map(strip, la), map(strip, lb)) if x != y]
    if diff:
        bad["lines that differ"] = len(diff)
        print("first:", diff[0])
assert not bad, f"{what}: over the tolerance {tol:g}: {bad}"
P
}

case $step in
  runtime)
    echo "glibc here: $(ldd --version | head -1); the tree needs $(grep -m1 "^needs " "$SRC/.gpu-runtime/MANIFEST" | cut -c7- || echo "?")"
    "$M" init --preset "$SRC/configs/presets/tiny.ini" --out init --seed 2
    "$M" synth --task sort --seed 3 --flip 0.2 --n-train 256 --n-val 32 --n-test 32 --n-sft 128 --out d.h5
    # The device answers at all (a one-step SFT): a missing driver or cuBLASLt shows here, in one line.
    rm -rf probe && dev sft --model init --data d.h5 --out probe $common --max-steps 1 ;;
  sft)
    "$M" sft --model init --data d.h5 --out cpu-sft $common --max-steps 10 --device cpu >cpu-sft.log
    dev sft --model init --data d.h5 --out dev-sft $common --max-steps 10 >dev-sft.log
    compare dev-sft cpu-sft "$TOL_FP32" "sft (fp32)" ;;
  ref)
    cp d.h5 cpu.h5 && cp d.h5 dev.h5
    "$M" precompute-ref --model cpu-sft/final --data cpu.h5 --device cpu
    dev precompute-ref --model cpu-sft/final --data dev.h5
    python3 - "$TOL_REF" <<'P'
import sys
import h5py, numpy as np
tol = float(sys.argv[1])
worst, n = 0.0, 0
with h5py.File("cpu.h5", "r") as a, h5py.File("dev.h5", "r") as b:
    for split in ("train", "val", "test"):
        for f in ("ref_logp_chosen", "ref_logp_rejected"):
            x, y = np.asarray(a[f"/{split}/{f}"]), np.asarray(b[f"/{split}/{f}"])
            assert x.shape == y.shape and x.size > 0, (split, f, x.shape, y.shape)
            worst, n = max(worst, float(np.max(np.abs(x - y)))), n + x.size
print(f"precompute-ref: {n} reference log-probs; max |difference| {worst:.2e} nats (tolerance {tol:g})")
assert worst <= tol, f"precompute-ref: reference log-probs differ by {worst:.2e} nats"
P
    ;;
  dpo)
    "$M" train --model cpu-sft/final --data cpu.h5 --out cpu-dpo $common --max-steps $steps --eval-every 10 --device cpu >cpu-dpo.log
    dev train --model cpu-sft/final --data cpu.h5 --out dev-dpo $common --max-steps $steps --eval-every 10 >dev-dpo.log
    compare dev-dpo cpu-dpo "$TOL_FP32" "train DPO (fp32)" ;;
  metapo)
    # Checkpoints every 7 steps on both sides: the resume step continues the device run from step 7.
    "$M" train --model cpu-sft/final --data cpu.h5 --out cpu-meta $common $meta --max-steps $steps --save-every 7 --device cpu >cpu-meta.log
    dev train --model cpu-sft/final --data cpu.h5 --out dev-meta $common $meta --max-steps $steps --save-every 7 >dev-meta.log
    compare dev-meta cpu-meta "$TOL_FP32" "train --weighting metapo (fp32)"
    python3 - <<'P'
import json
w = [j["weights/std"] for j in map(json.loads, open("dev-meta/metrics.jsonl")) if "weights/std" in j]
assert max(w) > 1e-3, f"the MetaPO weights never moved (std {max(w)}): the comparison would not see the weight net"
P
    ;;
  resume)
    # The device run as a kill after step 16 would leave it (its files past step 14 aside), resumed: the
    # same as the uninterrupted run, bit for bit (determinism is a stated property, docs/gpu.md).
    rm -rf dev-meta-r && cp -r dev-meta dev-meta-r
    rm -rf dev-meta-r/final dev-meta-r/metapo.json dev-meta-r/step_00000014.h5
    dev train --model cpu-sft/final --data cpu.h5 --out dev-meta-r $common $meta --max-steps $steps --save-every 7 --resume auto >dev-meta-r.log
    grep -q "^resumed from dev-meta-r/step_00000007.h5 at step 7" dev-meta-r.log || { cat dev-meta-r.log; echo "no resume from step 7"; exit 1; }
    compare dev-meta-r dev-meta 0 "train --resume auto at step 7 vs uninterrupted (device)"
    cmp dev-meta/final/model.safetensors dev-meta-r/final/model.safetensors
    cmp dev-meta/metapo.json dev-meta-r/metapo.json
    echo "resume: final/model.safetensors and metapo.json byte-identical" ;;
  bf16)
    "$M" train --model cpu-sft/final --data cpu.h5 --out cpu-bf16 $common --max-steps $steps --precision bf16 --device cpu >cpu-bf16.log
    dev train --model cpu-sft/final --data cpu.h5 --out dev-bf16 $common --max-steps $steps --precision bf16 >dev-bf16.log
    compare dev-bf16 cpu-bf16 "$TOL_BF16" "train DPO --precision bf16" ;;
  eval)
    "$M" eval --model cpu-dpo/final --data cpu.h5 --split test --device cpu >cpu-eval.json
    dev eval --model cpu-dpo/final --data cpu.h5 --split test >dev-eval.json
    python3 - "$TOL_FP32" <<'P'
import json, sys
tol = float(sys.argv[1])
a, b = json.loads(open("dev-eval.json").readlines()[-1]), json.loads(open("cpu-eval.json").readlines()[-1])
assert a.keys() == b.keys(), (a.keys(), b.keys())
worst = {k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in b if isinstance(b[k], float)}
print(f"eval (test split, {b['n']:g} pairs): max relative difference {max(worst.values()):.2e} "
      f"({max(worst, key=worst.get)}; tolerance {tol:g})")
assert max(worst.values()) <= tol, worst
P
    ;;
  score)
    python3 - <<'P'
import json, random
r = random.Random(7)
with open("in.jsonl", "w") as f:
    for n in (5, 17, 33, 64, 120, 9, 48, 80):
        toks = [1] + [r.randrange(3, 64) for _ in range(n - 1)]
        f.write(json.dumps({"tokens": toks, "loss_mask": [0] * (n // 3) + [1] * (n - n // 3)}) + "\n")
P
    "$M" score --model cpu-dpo/final --input in.jsonl --output cpu-score.jsonl --device cpu
    dev score --model cpu-dpo/final --input in.jsonl --output dev-score.jsonl
    python3 - "$TOL_REF" <<'P'
import json, sys
tol = float(sys.argv[1])
a = [json.loads(l) for l in open("dev-score.jsonl")]
b = [json.loads(l) for l in open("cpu-score.jsonl")]
assert len(a) == len(b) == 8, (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    assert x["n_tokens"] == y["n_tokens"] and len(x["token_logps"]) == len(y["token_logps"]), (x, y)
    worst = max([worst, abs(x["logp"] - y["logp"])] + [abs(p - q) for p, q in zip(x["token_logps"], y["token_logps"])])
print(f"score: 8 sequences; max |difference| of log-probs {worst:.2e} nats (tolerance {tol:g})")
assert worst <= tol, worst
P
    ;;
  *) echo "gpu-check-cli: unknown step $step" >&2; exit 2 ;;
esac
