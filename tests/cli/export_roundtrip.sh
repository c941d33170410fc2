#!/usr/bin/env bash
# metapo export: what it writes reads back bit-identically (export of an export is byte-equal), and
# bf16 exports reload; several ranks write the same bytes; a split into several files reads back.
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
# Under 3 ranks each rank reads and writes a third of the model: the same bytes.
$MPIRUN 3 "$METAPO" export --model a --out b3 >/dev/null
$MPIRUN 3 "$METAPO" export --model a --out d3 --dtype bfloat16 >/dev/null
cmp b/model.safetensors b3/model.safetensors || fail "the 3-rank export differs"
cmp d/model.safetensors d3/model.safetensors || fail "the 3-rank bf16 export differs"
echo "ok: an export by 3 ranks is byte-identical to one by 1 rank"
# Split into files of at most 400 KB (9 files and an index), by 3 ranks; read back and exported to
# one file again: the original bytes. transformers loads the split directory where torch is installed.
$MPIRUN 3 "$METAPO" export --model a --out sh --max-shard-size 400KB >/dev/null
[ -f sh/model.safetensors.index.json ] && [ ! -e sh/model.safetensors ] || fail "no index for a split export"
n=$(ls sh/model-*-of-*.safetensors | wc -l)
[ "$n" -gt 1 ] || fail "a split export wrote $n file(s)"
"$METAPO" export --model sh --out back >/dev/null
cmp a/model.safetensors back/model.safetensors || fail "the split export does not read back to the same tensors"
echo "ok: an export split into $n files with an index reads back byte-identically"
if python3 -c "import torch, transformers" 2>/dev/null; then
  python3 - <<'P' || fail "transformers does not load the split export"
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained("sh", dtype=torch.float32)
sd, ref = m.state_dict(), load_file("a/model.safetensors")
assert all(torch.equal(sd[k], v) for k, v in ref.items())
print(f"ok: transformers loads the split export: {len(ref)} tensors equal to the source")
P
else
  echo "skipped: transformers loading the split export (no torch here)"
fi
# An --out that is not a model directory is refused before anything is read.
mkdir mine && touch mine/notes.txt
expect_error "mine: exists and is not a model directory" "$METAPO" export --model a --out mine
expect_error "--dtype float64: unknown (valid: float32, bfloat16, float16)" "$METAPO" export --model a --out z --dtype float64
