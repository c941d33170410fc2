#!/usr/bin/env bash
# metapo bench beside the PyTorch baseline (tools/bench_torch.py), same shapes, same thread count,
# interleaved over several rounds in one run so both see the same machine state; reports the median
# step time of each and their ratio. Needs torch + transformers (a developer tool, not run by CI).
#   tools/bench-compare.sh [ROUNDS] [extra metapo bench args]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
preset=${PRESET:-bench-28m}
T=${SEQ_LEN:-256}
B=${BATCH:-8}
threads=${THREADS:-2}
steps=${STEPS:-5}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "error: ROUNDS $rounds: not a positive whole number" >&2; exit 1; }
python3 -c "import torch, transformers" 2>/dev/null ||
  { echo "error: tools/bench-compare.sh needs torch and transformers (pip install torch transformers)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export OMP_NUM_THREADS=$threads
for r in $(seq 1 "$rounds"); do
  build/metapo bench --preset "$preset" --seq-len "$T" --batch "$B" --steps "$steps" --warmup 2 \
    | tail -n 1 > "$out/metapo.$r.json"
  python3 tools/bench_torch.py --preset "configs/presets/$preset.ini" --seq-len "$T" --batch "$B" \
    --threads "$threads" --steps "$steps" --warmup 2 | tail -n 1 > "$out/torch.$r.json"
  echo "round $r: metapo $(python3 -c "import json;print(round(json.load(open('$out/metapo.$r.json'))['ms_per_step']))") ms," \
       "torch $(python3 -c "import json;print(round(json.load(open('$out/torch.$r.json'))['ms_per_step']))") ms"
done
python3 - "$out" "$rounds" "$preset" "$T" "$B" "$threads" <<'P'
import json, statistics, sys
d, rounds, preset, T, B, threads = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
m = [json.load(open(f"{d}/metapo.{r}.json")) for r in range(1, rounds + 1)]
t = [json.load(open(f"{d}/torch.{r}.json")) for r in range(1, rounds + 1)]
mm = statistics.median(x["ms_per_step"] for x in m)
tm = statistics.median(x["ms_per_step"] for x in t)
tok = int(T) * int(B)
print(f"\n{preset}, {B} x {T} tokens, {threads} threads, {rounds} interleaved rounds (median of per-round means)")
print(f"{'':8} {'ms/step':>9} {'tokens/s':>9} {'GFLOP/s':>8}")
print(f"{'metapo':8} {mm:9.0f} {tok / mm * 1e3:9.0f} {statistics.median(x['gflops_per_s'] for x in m):8.1f}")
print(f"{'torch':8} {tm:9.0f} {tok / tm * 1e3:9.0f} {statistics.median(x['gflops_per_s'] for x in t):8.1f}   (torch {t[0]['torch']}, attn {t[0].get('attn')})")
print(f"ratio metapo/torch (tokens/s): {tm / mm:.2f}")
print(json.dumps({"metapo_tokens_per_s": tok / mm * 1e3, "torch_tokens_per_s": tok / tm * 1e3, "ratio": tm / mm}))
P
