#!/usr/bin/env bash
# The demo on an embedded default: a random tiny model is created, scored on 1 and 2 MPI ranks,
# exported as bf16 and benchmarked. (The DPO / MetaPO journey replaces this as it lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
out=${DEMO_DIR:-runs/demo}
mkdir -p "$out"
M=build/metapo

echo "== 1. a tiny random model (configs/presets/tiny.ini)"
$M init --preset tiny --out "$out/model" --seed 1

echo "== 2. score 64 sequences on 1 rank and on 2 ranks"
python3 - "$out/in.jsonl" <<'P'
import json, random, sys
random.seed(0)
with open(sys.argv[1], "w") as f:
    for i in range(64):
        n = random.randint(8, 96)
        toks = [1] + [random.randrange(3, 64) for _ in range(n - 1)]
        p = random.randint(1, n - 1)
        f.write(json.dumps({"tokens": toks, "loss_mask": [0] * p + [1] * (n - p)}) + "\n")
P
$M score --model "$out/model" --input "$out/in.jsonl" --output "$out/scored1.jsonl"
mpirun -np 2 $M score --model "$out/model" --input "$out/in.jsonl" --output "$out/scored2.jsonl"

echo "== 3. export as bfloat16"
$M export --model "$out/model" --out "$out/model-bf16" --dtype bfloat16

echo "== 4. benchmark forward+backward (tiny, 8 x 256 tokens)"
$M bench --preset tiny --seq-len 256 --batch 8 --steps 3 --warmup 1 | tee "$out/bench.txt"

python3 - "$out" <<'P'
import json, sys, os
d = sys.argv[1]
one = [json.loads(l) for l in open(f"{d}/scored1.jsonl")]
two = [json.loads(l) for l in open(f"{d}/scored2.jsonl")]
diff = max(abs(a["logp"] - b["logp"]) for a, b in zip(one, two))
bench = json.loads(open(f"{d}/bench.txt").read().strip().splitlines()[-1])
ntok = sum(a["n_tokens"] for a in one)
print("\n  result                                   value")
print(f"  sequences scored                         {len(one)}")
print(f"  mean log-prob per response token         {sum(a['logp'] for a in one) / ntok:.4f}  (uniform: -4.1589)")
print(f"  max |logp(1 rank) - logp(2 ranks)|       {diff:.2e}")
print(f"  bf16 export size                         {os.path.getsize(d + '/model-bf16/model.safetensors') / 1e6:.2f} MB")
print(f"  train throughput (tiny, fwd+bwd)         {bench['tokens_per_s']:.0f} tokens/s, {bench['gflops_per_s']:.1f} GFLOP/s")
P
