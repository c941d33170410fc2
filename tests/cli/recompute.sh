#!/usr/bin/env bash
# Activation recomputation (--recompute, docs/engine.md): `metapo train` with MetaPO (ghost products
# through the recomputed layers) and `metapo sft` give byte-identical final/ parameters and the same
# metrics lines with none, selective and full, at 1 rank and under DP 2 x PP 2 x TP 2 (the 1F1B
# schedule holding several micro-batches' activations), and run.json's measured activation memory
# falls from none to selective to full.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --seed 4 --flip 0.2 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 3 >/dev/null
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
common="--model init --data d.h5 --batch-size 8 --micro-batch 2 --max-steps 6 --lr 1e-3 --warmup-steps 1"
meta="--weighting metapo --meta-gate 0"
same_metrics() {  # every step line of $1 and $2 equal, timings, measured memory and traffic aside
  # (full recomputation under TP repeats each layer's o_proj all-reduce: more comm/allreduce_bytes)
  python3 - "$1" "$2" <<'P' || fail "$1 and $2 differ"
import json, sys
def lines(p):
    skip = ("step_time", "tokens_per_s", "memory/activations_bytes")
    return [{k: v for k, v in json.loads(l).items() if k not in skip and not k.startswith(("time/", "comm"))}
            for l in open(p) if '"event"' not in l]
a, b = lines(sys.argv[1]), lines(sys.argv[2])
assert a and a == b, (len(a), len(b))
P
}
activations() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['memory_bytes']['activations'])" "$1/run.json"; }
for layout in 1 8; do
  par=""
  [ "$layout" = 8 ] && par="--tp 2 --pp 2"
  for kind in train sft; do
    extra=""
    [ "$kind" = train ] && extra="$meta"
    for r in none selective full; do
      $MPIRUN "$layout" "$METAPO" "$kind" $common $extra $par --recompute "$r" --out "$kind-$layout-$r" >"$kind-$layout-$r.log" ||
        { cat "$kind-$layout-$r.log"; fail "$kind --recompute $r on $layout rank(s)"; }
    done
    for r in selective full; do
      cmp -s "$kind-$layout-none/final/model.safetensors" "$kind-$layout-$r/final/model.safetensors" ||
        fail "$kind on $layout rank(s): --recompute $r changed the final parameters"
      same_metrics "$kind-$layout-none/metrics.jsonl" "$kind-$layout-$r/metrics.jsonl"
    done
    a=$(activations "$kind-$layout-none") b=$(activations "$kind-$layout-selective") c=$(activations "$kind-$layout-full")
    [ "$a" -gt "$b" ] && [ "$b" -gt "$c" ] || fail "$kind on $layout rank(s): activation bytes none $a, selective $b, full $c"
    echo "ok: $kind on $layout rank(s): selective and full byte-identical to none; activations $a / $b / $c bytes (none / selective / full)"
  done
done
expect_error "--recompute some: unknown (none, selective, full)" "$METAPO" train $common --recompute some --out bad
