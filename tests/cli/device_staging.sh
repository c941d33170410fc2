#!/usr/bin/env bash
# Training with the model on a device (`--device cuda`): with one data-parallel rank the optimizer runs
# there too and the host copies of the parameters and moments are refreshed for checkpoints and the
# final save only; with several, the gradient comes to the host after every backward for ZeRO-1 over
# MPI and the parameters go back after every update (ShardedModel::grads_to_host / params_to_device).
# No GPU here, so METAPO_STAGE_ON_CPU=1 takes that path with host memory as the "device": the runs must
# be bit-identical to the unstaged ones (a missed copy changes the run). Covered: SFT, DPO with the
# reference log-probs computed by the trainer, evaluation and trajectories, MetaPO's ghost products
# with refresh passes, bf16 storage, data parallelism (DP 2), and a resume from a checkpoint.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --seed 5 --flip 0.3 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 4 >/dev/null
common="--batch-size 8 --micro-batch 2 --lr 1e-3 --warmup-steps 1"
meta="--weighting metapo --meta-gate 0 --meta-lr 1e-2 --meta-val-batch 8 --stats-refresh-every 2 --stats-refresh-pairs 16"

# same A B: the runs' per-step and eval lines equal (timings aside) and their other files byte-identical.
same() {
  python3 - "$1" "$2" <<'P'
import json, sys
def lines(p):
    return [{k: v for k, v in j.items() if k not in ("step_time", "tokens_per_s") and not k.startswith("time/")}
            for j in map(json.loads, open(p)) if "event" not in j]
a, b = lines(sys.argv[1] + "/metrics.jsonl"), lines(sys.argv[2] + "/metrics.jsonl")
assert len(a) == len(b) and len(a) >= 4, (len(a), len(b))
for x, y in zip(a, b):
    assert x == y, (x, y)
P
  local f
  for f in final/model.safetensors metapo.json trajectories.jsonl; do
    [ -e "$1/$f" ] || continue
    cmp "$1/$f" "$2/$f" || fail "$2/$f differs from $1/$f"
  done
  echo "ok: $2 (staged) is bit-identical to $1"
}

"$METAPO" sft --model init --data d.h5 --out sft $common --max-steps 4 >/dev/null
METAPO_STAGE_ON_CPU=1 "$METAPO" sft --model init --data d.h5 --out sft-s $common --max-steps 4 >/dev/null
same sft sft-s
# d.h5 has no reference log-probs: the trainer computes them (on the device when staged).
for run in "dpo|--eval-every 2 --track-pairs 2 --track-every 2" "meta|$meta" "bf16|$meta --precision bf16"; do
  name="${run%%|*}" opts="${run#*|}"
  "$METAPO" train --model sft/final --data d.h5 --out "$name" $common --max-steps 6 $opts >/dev/null
  METAPO_STAGE_ON_CPU=1 "$METAPO" train --model sft/final --data d.h5 --out "$name-s" $common --max-steps 6 $opts >/dev/null
  same "$name" "$name-s"
done
python3 - <<'P'
import json
w = [j["weights/std"] for j in map(json.loads, open("meta/metrics.jsonl")) if "weights/std" in j]
assert max(w) > 1e-3, f"the MetaPO weights never moved (std {max(w)}): the test would not see the ghost products"
P
export METAPO_STAGE_ON_CPU=1
$MPIRUN 2 env METAPO_STAGE_ON_CPU=0 "$METAPO" train --model sft/final --data d.h5 --out dp2 $common --max-steps 6 $meta >/dev/null
$MPIRUN 2 "$METAPO" train --model sft/final --data d.h5 --out dp2-s $common --max-steps 6 $meta >/dev/null
same dp2 dp2-s
# Resumed from step 3's checkpoint, staged: as the uninterrupted unstaged run.
"$METAPO" train --model sft/final --data d.h5 --out r $common --max-steps 6 $meta --save-every 3 --keep 0 >/dev/null
rm -rf r/final r/metapo.json r/step_00000006.h5
"$METAPO" train --model sft/final --data d.h5 --out r $common --max-steps 6 $meta --save-every 3 --keep 0 --resume auto >r.log
grep -q "resumed from r/step_00000003.h5 at step 3" r.log || { cat r.log; fail "no resume from step 3"; }
python3 - <<'P'
import json
a = [j["loss"] for j in map(json.loads, open("meta/metrics.jsonl")) if "loss" in j and "event" not in j]
b = [j["loss"] for j in map(json.loads, open("r/metrics.jsonl")) if "loss" in j and "event" not in j]
assert a == b, (a, b)
P
cmp meta/final/model.safetensors r/final/model.safetensors || fail "the staged resumed run's final/ differs"
echo "ok: a staged run resumed from its step-3 checkpoint ends bit-identical to the uninterrupted one"
# The option itself: checked before any work.
unset METAPO_STAGE_ON_CPU
if ! { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
  expect_error "--device cuda: " "$METAPO" train --model sft/final --data d.h5 --out x --device cuda
  expect_error "--device cuda: " "$METAPO" sft --model init --data d.h5 --out x --device cuda
fi
expect_error "--device tpu" "$METAPO" sft --model init --data d.h5 --out x --device tpu
[ ! -e x ] || fail "a refused run left its directory"
# The reference hypergradients read the host parameters: refused with the model on a device.
METAPO_STAGE_ON_CPU=1 expect_error "use --hypergrad ghost" "$METAPO" train --model sft/final --data d.h5 --out x2 $common \
  --max-steps 2 $meta --hypergrad exact
