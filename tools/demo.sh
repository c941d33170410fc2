#!/usr/bin/env bash
# The metapo journey on an embedded default (configs/demo.ini): a built-in synthetic task and the tiny
# preset, under mpirun with 2 ranks — synth → init → sft → precompute-ref → train (DPO) → eval →
# generate — then a short results table. A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
NP=${NP:-2}
# OpenMPI binds a lone rank to one core; let it use all of them (its threads follow its CPU mask).
[ "$NP" = 1 ] && export OMPI_MCA_hwloc_base_binding_policy=none
out=${DEMO_DIR:-runs/demo}
cfg=configs/demo.ini
rm -rf "$out"
mkdir -p "$out"
M="build/metapo"
R="mpirun -np $NP $M"
t0=$SECONDS
step() { echo; echo "== $*"; }

step "1. a synthetic task: sort digit strings (program-checked answers)"
$M synth --config $cfg --out "$out/data.h5"
step "2. a tiny random model (configs/presets/tiny.ini)"
$M init --preset tiny --out "$out/init" --seed 1
step "3. supervised fine-tuning on the sft split ($NP ranks)"
$R sft --config $cfg --model "$out/init" --data "$out/data.h5" --out "$out/sft" | tail -n 3
step "4. reference log-probs of the SFT model"
$R precompute-ref --config $cfg --model "$out/sft/final" --data "$out/data.h5"
step "5. DPO ($NP ranks)"
$R train --config $cfg --model "$out/sft/final" --data "$out/data.h5" --out "$out/dpo" | grep -E "^eval|/" | tail -n 6
step "6. evaluation on the clean test split"
$R eval --config $cfg --model "$out/sft/final" --data "$out/data.h5" | tail -n 1 > "$out/eval_sft.json"
$R eval --config $cfg --model "$out/dpo/final" --data "$out/data.h5" | tail -n 1 > "$out/eval_dpo.json"
cat "$out/eval_dpo.json"
step "7. greedy generation with a KV cache"
$R generate --config $cfg --model "$out/sft/final" --data "$out/data.h5" --output "$out/gen_sft.jsonl" | tail -n 1 > "$out/gen_sft.json"
$R generate --config $cfg --model "$out/dpo/final" --data "$out/data.h5" --output "$out/gen_dpo.jsonl" | tail -n 1 > "$out/gen_dpo.json"
cat "$out/gen_dpo.json"

python3 - "$out" "$((SECONDS - t0))" <<'P'
import json, sys
d, secs = sys.argv[1], int(sys.argv[2])
ev = {k: json.load(open(f"{d}/eval_{k}.json")) for k in ("sft", "dpo")}
gen = {k: json.load(open(f"{d}/gen_{k}.json")) for k in ("sft", "dpo")}
print(f"\n  results on the clean test split ({d})")
print(f"  {'model':8} {'pref. accuracy':>15} {'reward margin':>14} {'answer accuracy':>16}")
for k in ("sft", "dpo"):
    pa = "— (is the ref)" if k == "sft" else f"{ev[k]['pref_acc']:.3f}"
    print(f"  {k:8} {pa:>15} {ev[k]['margin']:>14.3f} {gen[k]['answer_accuracy']:>16.3f}")
print(f"\n  whole journey: {secs} s; run directories, metrics.jsonl and final/ models under {d}")
P
