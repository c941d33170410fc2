#!/usr/bin/env bash
# MetaPO's validation objective measures the preference: under --loss apo_down, whose own term
# σ(βΔ_w) falls as the chosen responses lose probability, the validation gradient is DPO's sigmoid
# loss's (run.json meta.val_loss). With apo_down's own loss there, the weights ranked flipped pairs
# above clean ones (weight AUC 0.36-0.63 here on seeds 1-3, 0.05 at another setting); with sigmoid's
# they rank clean pairs first (0.99). Other losses keep their own (run.json says which).
source "$(dirname "$0")/common.sh"
"$METAPO" init --preset tiny --out init --seed 2 >/dev/null
"$METAPO" synth --task sort --flip 0.4 --seed 2 --n-train 512 --n-val 64 --n-test 32 --n-sft 512 --out d.h5 >/dev/null
"$METAPO" sft --model init --data d.h5 --out sft --epochs 15 --batch-size 32 --lr 1e-3 --save-every-minutes 0 >/dev/null
"$METAPO" precompute-ref --model sft/final --data d.h5 >/dev/null
"$METAPO" train --model sft/final --data d.h5 --out apo --weighting metapo --loss apo_down --epochs 3 --batch-size 32 \
  --micro-batch 16 --lr 5e-5 --track-pairs 0 --save-every-minutes 0 >/dev/null
"$METAPO" analyze --run apo --data d.h5 >/dev/null
python3 - <<'P' || fail "apo_down: MetaPO's weights do not rank clean pairs above flipped ones"
import json, sys
assert json.load(open("apo/run.json"))["meta"]["val_loss"] == "sigmoid"
auc = json.load(open("apo/analysis.json"))["quality"]["auc"]
print(f"apo_down: weight AUC clean vs flipped {auc:.3f}")
sys.exit(0 if auc > 0.9 else 1)
P
"$METAPO" train --model sft/final --data d.h5 --out ipo --weighting metapo --loss ipo --max-steps 1 --batch-size 8 \
  --track-pairs 0 --save-every-minutes 0 >/dev/null
python3 -c "import json, sys; v = json.load(open('ipo/run.json'))['meta']['val_loss']; sys.exit(0 if v == 'ipo' else f'ipo: val_loss {v}')" \
  || fail "an ipo run's validation loss is not its own"
echo "ok: MetaPO's validation objective is the preference (sigmoid) under apo_down, the loss itself otherwise"
