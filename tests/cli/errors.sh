#!/usr/bin/env bash
# Bad input: one clear error line naming the input, non-zero exit, no hang (also on 2 ranks), and no
# output under the final name.
source "$(dirname "$0")/common.sh"
"$METAPO" init --preset tiny --out model >/dev/null
echo '{"tokens": [1, 2, 3]}' > good.jsonl
printf '{"tokens": [1, 2, 3]}\n{"tokens": [1, 2\n' > badjson.jsonl
echo '{"tokens": [1, 64]}' > oov.jsonl
echo '{"tokens": [1, 2], "loss_mask": [1]}' > badmask.jsonl
expect_error "unknown command 'frobnicate'" "$METAPO" frobnicate
expect_error "unrecognised option '--bogus'" "$METAPO" score --bogus
expect_error "model" "$METAPO" score --input good.jsonl --output o.jsonl
expect_error "nosuchdir" "$METAPO" score --model nosuchdir --input good.jsonl --output o.jsonl
expect_error "badjson.jsonl:2" "$METAPO" score --model model --input badjson.jsonl --output o.jsonl
expect_error "oov.jsonl:1: token id 64" "$METAPO" score --model model --input oov.jsonl --output o.jsonl
expect_error "badmask.jsonl:1" "$METAPO" score --model model --input badmask.jsonl --output o.jsonl
expect_error "--preset nosuch" "$METAPO" init --preset nosuch --out m2
expect_error "badjson.jsonl:2" $MPIRUN 2 "$METAPO" score --model model --input badjson.jsonl --output o.jsonl
[ ! -e o.jsonl ] || fail "output written despite errors"
mkdir broken && cp model/config.json broken/ && head -c 1000 model/model.safetensors > broken/model.safetensors
expect_error "model.safetensors" "$METAPO" score --model broken --input good.jsonl --output o.jsonl
printf '[score]\nmax-batch-tokens = 0\n' > bad.ini
expect_error "max-batch-tokens" "$METAPO" score --config bad.ini --model model --input good.jsonl --output o.jsonl
printf '[score]\nno_such_key = 1\n' > bad2.ini
expect_error "bad2.ini" "$METAPO" score --config bad2.ini --model model --input good.jsonl --output o.jsonl
# --device (score, eval, precompute-ref, generate): an unknown name; cuda where this build has no backend
# or this machine no GPU; nothing written.
expect_error "--device tpu: unknown (valid: cpu, cuda)" "$METAPO" score --model model --input good.jsonl --output o.jsonl --device tpu
if ! { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; }; then
  expect_error "--device cuda: " "$METAPO" score --model model --input good.jsonl --output o.jsonl --device cuda
  expect_error "--device cuda: " "$METAPO" precompute-ref --model model --data nosuch.h5 --device cuda
  expect_error "--device cuda: " "$METAPO" eval --model model --data nosuch.h5 --device cuda
  # Checked before the model or the prompts are read (nosuchdir would fail later).
  expect_error "--device cuda: " "$METAPO" generate --model nosuchdir --prompts good.jsonl --max-new-tokens 4 \
    --output o.jsonl --device cuda
fi
expect_error "--device tpu: unknown (valid: cpu, cuda)" "$METAPO" generate --model model --prompts good.jsonl \
  --max-new-tokens 4 --output o.jsonl --device tpu
[ ! -e o.jsonl ] || fail "output written despite errors"
echo "ok: all bad inputs rejected cleanly"
