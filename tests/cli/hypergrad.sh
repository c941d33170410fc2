#!/usr/bin/env bash
# --hypergrad ghost, exact and fd give the same alignments s_i on a real run: fp32, the CLI's step,
# and the preconditioned validation gradient of every meta step after the first (the unit tests
# check the three in double precision with a random ĝ). Compared per step through --meta-trace:
# exact within 1e-4 of rms(s), fd (a central difference in fp32) within 2e-2.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --flip 0.3 --seed 3 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 1 >/dev/null
"$METAPO" sft --model init --data d.h5 --out sft --batch-size 16 --micro-batch 8 --epochs 1 >/dev/null
"$METAPO" precompute-ref --model sft/final --data d.h5 >/dev/null
for loss in sigmoid ipo; do
  for h in ghost exact fd; do
    "$METAPO" train --model sft/final --data d.h5 --out "$loss-$h" --max-steps 4 --batch-size 16 --micro-batch 8 \
      --loss "$loss" --weighting metapo --meta-gate 0 --meta-val-batch 8 --hypergrad "$h" --meta-trace "$loss-$h.tr" >/dev/null
  done
  python3 - "$loss" <<'P'
import json, math, sys
loss = sys.argv[1]
tr = {h: [json.loads(l) for l in open(f"{loss}-{h}.tr")] for h in ("ghost", "exact", "fd")}
assert len(tr["ghost"]) == 4, len(tr["ghost"])
for h, tol in (("exact", 1e-4), ("fd", 2e-2)):
    for a, b in zip(tr["ghost"], tr[h]):
        rms = math.sqrt(sum(x * x for x in a["s"]) / len(a["s"]))
        err = max(abs(x - y) for x, y in zip(a["s"], b["s"])) / rms
        assert err < tol, f"{loss}: {h} vs ghost at step {a['step']}: max |ds| = {err:.3g} of rms(s), over {tol}"
print(f"ok: {loss}: ghost, exact and fd alignments agree at every step")
P
done
