#!/usr/bin/env bash
# The metapo journey on an embedded default (configs/demo.ini): a built-in synthetic task with 40% of
# its preference pairs flipped and the tiny preset, under mpirun with 2 ranks — synth → init → sft →
# precompute-ref → train (plain DPO, and MetaPO beside it) → analyze → eval → generate — then a short
# results table. About a minute on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
source tools/mpi-env.sh
NP=${NP:-2}
# OpenMPI binds a lone rank to one core; let it use all of them (its threads follow its CPU mask).
[ "$NP" = 1 ] && export OMPI_MCA_hwloc_base_binding_policy=none
out=${DEMO_DIR:-runs/demo}
cfg=configs/demo.ini
# shellcheck source=tools/out-dir.sh
source tools/out-dir.sh
fresh_out DEMO_DIR "$out" data.h5
M="build/metapo"
R="$PWD/tools/mpirun-retry.sh -np $NP $M"
t0=$SECONDS
step() { echo; echo "== $*"; }

step "1. a synthetic task: sort digit strings (program-checked answers), 40% of the train pairs flipped"
$M synth --config $cfg --out "$out/data.h5"
step "2. a tiny random model (configs/presets/tiny.ini)"
$M init --preset tiny --out "$out/init" --seed 1
step "3. supervised fine-tuning on the sft split ($NP ranks)"
$R sft --config $cfg --model "$out/init" --data "$out/data.h5" --out "$out/sft" | tail -n 3
step "4. reference log-probs of the SFT model"
$R precompute-ref --config $cfg --model "$out/sft/final" --data "$out/data.h5"
step "5. DPO with uniform weights ($NP ranks)"
$R train --config $cfg --model "$out/sft/final" --data "$out/data.h5" --out "$out/dpo" | grep -E "^eval|/" | tail -n 3
step "6. DPO with MetaPO weights ($NP ranks): a weight net learned on the clean val split"
$R train --config $cfg --model "$out/sft/final" --data "$out/data.h5" --out "$out/metapo" --weighting metapo \
  | grep -E "^eval|/|identical" | tail -n 4
step "7. what MetaPO's weights did: clean vs flipped pairs, temporal vs instantaneous features"
$R analyze --run "$out/metapo" --data "$out/data.h5" | tail -n 1 > "$out/analyze.json"
cat "$out/analyze.json"
step "8. evaluation on the clean test split"
for k in sft dpo metapo; do
  model="$out/$k/final"
  $R eval --config $cfg --model "$model" --data "$out/data.h5" | tail -n 1 > "$out/eval_$k.json"
done
cat "$out/eval_metapo.json"
step "9. greedy generation with a KV cache"
for k in sft dpo metapo; do
  $R generate --config $cfg --model "$out/$k/final" --data "$out/data.h5" --output "$out/gen_$k.jsonl" \
    | tail -n 1 > "$out/gen_$k.json"
done
cat "$out/gen_metapo.json"

python3 - "$out" "$((SECONDS - t0))" <<'P'
import json, sys
d, secs = sys.argv[1], int(sys.argv[2])
runs = ("sft", "dpo", "metapo")
ev = {k: json.load(open(f"{d}/eval_{k}.json")) for k in runs}
gen = {k: json.load(open(f"{d}/gen_{k}.json")) for k in runs}
an = json.load(open(f"{d}/analyze.json"))
names = {"sft": "SFT (the reference)", "dpo": "DPO, uniform", "metapo": "DPO, MetaPO"}
print(f"\n  results on the clean test split ({d}); 40% of the training pairs were flipped")
print(f"  {'model':20} {'pref. accuracy':>15} {'reward margin':>14} {'answer accuracy':>16}")
for k in runs:
    pa = "—" if k == "sft" else f"{ev[k]['pref_acc']:.3f}"
    print(f"  {names[k]:20} {pa:>15} {ev[k]['margin']:>14.3f} {gen[k]['answer_accuracy']:>16.3f}")
groups = {g["name"]: g for g in json.load(open(f"{d}/metapo/analysis.json"))["groups"]}
print(f"\n  MetaPO weights: AUC clean vs flipped {an['quality_auc']:.3f}; mean weight clean"
      f" {groups['clean']['mean_weight']:.2f}, flipped {groups['flipped']['mean_weight']:.2f};"
      f" temporal share of its decisions {an['temporal_share']:.2f} (integrated gradients)")
print(f"\n  whole journey: {secs} s; run directories, metrics.jsonl and final/ models under {d}")
P
