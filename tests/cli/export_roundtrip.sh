#!/usr/bin/env bash
# metapo export: what it writes reads back bit-identically (export of an export is byte-equal), and
# bf16 exports reload.
source "$(dirname "$0")/common.sh"
"$METAPO" init --preset tiny --out a --seed 1 >/dev/null
"$METAPO" export --model a --out b >/dev/null
"$METAPO" export --model b --out c >/dev/null
cmp a/model.safetensors b/model.safetensors || fail "export changed the tensors"
cmp b/model.safetensors c/model.safetensors || fail "re-export changed the tensors"
cmp b/config.json c/config.json || fail "re-export changed config.json"
"$METAPO" export --model a --out d --dtype bfloat16 >/dev/null
grep -q '"bfloat16"' d/config.json || fail "bf16 export lacks torch_dtype bfloat16"
"$METAPO" export --model d --out e --dtype bfloat16 >/dev/null
cmp d/model.safetensors e/model.safetensors || fail "bf16 round trip changed the tensors"
[ ! -e b.partial ] && [ ! -e d.partial ] || fail "partial directory left behind"
echo "ok: export round trips are byte-identical"
