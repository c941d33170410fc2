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
expect_error "--dtype float64: unknown (valid: auto, float32, bfloat16, float16)" "$METAPO" export --model a --out z --dtype float64
cp a/model.safetensors a.before
expect_error "--out a/: is --model itself" "$METAPO" export --model a --out a/ --dtype bfloat16
cmp a/model.safetensors a.before || fail "an export into its own source changed it"
# The tokenizer travels with the model, as save_pretrained keeps it: an export, a run's final/ (also
# of 2 ranks) and an export of the run's checkpoint copy the tokenizer files and generation_config.json
# of the model they came from, and config.json keeps the keys metapo does not manage.
cp -r a tok && echo '{"version": "1.0", "model": {"type": "WordLevel"}}' > tok/tokenizer.json
echo '{"chat_template": "{{ m }}"}' > tok/tokenizer_config.json
echo '{"bos_token_id": 1, "eos_token_id": 2, "do_sample": true, "temperature": 0.6}' > tok/generation_config.json
python3 - <<'P'
import json
c = json.load(open("tok/config.json")); c["pad_token_id"] = 0; c["eos_token_id"] = [c["eos_token_id"], 5]
json.dump(c, open("tok/config.json", "w"), indent=2)
P
"$METAPO" synth --task sort --n-train 32 --n-val 8 --n-test 8 --n-sft 8 --out d.h5 >/dev/null
"$METAPO" export --model tok --out tok_x >/dev/null
$MPIRUN 2 "$METAPO" train --model tok --data d.h5 --out run --max-steps 2 --batch-size 8 --save-every 2 >/dev/null
"$METAPO" export --model run --out tok_ckpt >/dev/null
for d in tok_x run/final tok_ckpt; do
  for f in tokenizer.json tokenizer_config.json generation_config.json; do
    cmp tok/$f $d/$f || fail "$d: $f is not the source model's"
  done
  python3 -c "
import json, sys
c = json.load(open('$d/config.json'))
assert c['pad_token_id'] == 0 and c['eos_token_id'] == [2, 5], c
" || fail "$d/config.json lost pad_token_id or the eos_token_id list"
done
echo "ok: exports, a run's final/ and an export of its checkpoint keep the tokenizer and the config's other keys"
cp run/final/model.safetensors final.before
expect_error "--out run/final: the model a run wrote" "$METAPO" export --model run/step_00000002.h5 --out run/final
cmp run/final/model.safetensors final.before || fail "an export replaced the run's final/"
# A model keeps the dtype it came in (--dtype / --save-dtype auto, the default), as transformers 5's
# from_pretrained + save_pretrained keep it: a bf16 model's export, a run's final/ and an export of the
# run's checkpoint are bf16; an fp32 model's stay fp32 (b above); a dtype given wins.
"$METAPO" export --model d --out d_auto >/dev/null
cmp d/model.safetensors d_auto/model.safetensors || fail "the export of a bf16 model (dtype auto) is not its bf16 bytes"
$MPIRUN 2 "$METAPO" train --model d --data d.h5 --out run16 --max-steps 2 --batch-size 8 --save-every 2 >/dev/null
$MPIRUN 2 "$METAPO" train --model d --data d.h5 --out run32 --max-steps 2 --batch-size 8 --save-dtype float32 >/dev/null
"$METAPO" export --model run16 --out run16_x >/dev/null
st_dtypes() { python3 -c "
import json, struct, sys
f = open(sys.argv[1] + '/model.safetensors', 'rb'); h = json.loads(f.read(struct.unpack('<Q', f.read(8))[0]))
c = json.load(open(sys.argv[1] + '/config.json'))
print(' '.join(sorted({v['dtype'] for k, v in h.items() if k != '__metadata__'})), c['torch_dtype'])" "$1"; }
for x in run16/final run16_x; do
  [ "$(st_dtypes $x)" = "BF16 bfloat16" ] || fail "$x of a bf16 model: $(st_dtypes $x), not BF16 bfloat16"
done
[ "$(st_dtypes run32/final)" = "F32 float32" ] || fail "--save-dtype float32: $(st_dtypes run32/final)"
[ "$(st_dtypes b)" = "F32 float32" ] || fail "the export of an fp32 model: $(st_dtypes b)"
echo "ok: a bf16 model's export, final/ and checkpoint export stay bf16; --save-dtype float32 gives fp32"
# A save works in DIR.partial and moves an old DIR to DIR.old: a user's directories of those names
# are refused before anything is read, and kept; what a crashed save left (marked) is cleared. A link
# as --out is refused (it would be replaced by a directory).
cp -r a mine2.old && echo notes >mine2.old/notes.txt
expect_error "mine2.old: exists and was not left by a metapo save" "$METAPO" export --model a --out mine2
mkdir -p mine3.partial/junk
expect_error "mine3.partial: exists and was not left by a metapo save" "$METAPO" export --model a --out mine3
[ -f mine2.old/notes.txt ] && [ -d mine3.partial/junk ] && [ ! -e mine2 ] && [ ! -e mine3 ] || fail "a refused export touched the user's directories"
"$METAPO" export --model a --out mine4 >/dev/null
mkdir mine4.partial && touch mine4.partial/.metapo-save mine4.partial/model.safetensors
"$METAPO" export --model a --out mine4 --dtype bfloat16 >/dev/null
[ ! -e mine4.partial ] && [ ! -e mine4.old ] && [ ! -e mine4/.metapo-save ] || fail "a save left its working directories or mark"
ln -s mine4 link4
expect_error "link4: is a symbolic link; give the directory itself (mine4)" "$METAPO" export --model a --out link4
echo "ok: a save keeps a user's DIR.old and DIR.partial, clears its own, and refuses a link"
# A value past float16's range is refused before anything is written (it used to be saved as
# infinity, which every reader then called a diverged model), at 1 and 3 ranks; bfloat16 holds it.
cp -r a big && python3 - <<'P'
import json, struct
raw = bytearray(open("big/model.safetensors", "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
struct.pack_into("<f", raw, 8 + n + h["model.layers.0.mlp.up_proj.weight"]["data_offsets"][0] + 20, 1e5)
open("big/model.safetensors", "wb").write(raw)
P
expect_error "f16b: tensor model.layers.0.mlp.up_proj.weight holds 100000, past float16's range" \
  "$METAPO" export --model big --out f16b --dtype float16
expect_error "f16b: tensor model.layers.0.mlp.up_proj.weight holds 100000, past float16's range" \
  $MPIRUN 3 "$METAPO" export --model big --out f16b --dtype float16
[ ! -e f16b ] && [ ! -e f16b.partial ] || fail "a refused float16 export left a directory"
"$METAPO" export --model big --out bf16b --dtype bfloat16 >/dev/null
echo "ok: a value past float16's range is refused, not saved as infinity"
# Inside a run directory final.partial and final.old are the run's own: an unmarked one (a crash under
# an older build) is cleared by the final save, not refused after the training.
"$METAPO" train --model a --data d.h5 --out runp --max-steps 1 --batch-size 8 --save-every 1 >/dev/null
rm -rf runp/final && mkdir runp/final.partial && touch runp/final.partial/junk
"$METAPO" train --model a --data d.h5 --out runp --max-steps 2 --batch-size 8 --resume auto >/dev/null
[ -f runp/final/config.json ] && [ ! -e runp/final.partial ] || fail "the final save did not clear the run's final.partial"
echo "ok: a run's final save clears its own final.partial"
# A run whose float16 final/ cannot hold its weights (here the start's 1e5, which a learning rate of
# 1e-12 keeps) checkpoints the trained state before it stops, at 1 rank and under TP 2, and names the
# ways on; --resume auto with another --save-dtype then writes final/ from that checkpoint.
expect_error "runf/final: tensor model.layers.0.mlp.up_proj.weight holds 100000, past float16's range.*the trained state is in runf/step_00000002.h5: --resume auto --save-dtype bfloat16" \
  "$METAPO" train --model big --data d.h5 --out runf --max-steps 2 --batch-size 8 --lr 1e-12 --save-dtype float16
expect_error "the trained state is in runf2/step_00000002.h5" \
  $MPIRUN 2 "$METAPO" train --model big --data d.h5 --out runf2 --tp 2 --max-steps 2 --batch-size 8 --lr 1e-12 --save-dtype float16
# The value on the last pipeline stage (rank 1) only: the line still names it.
cp -r a bigl && python3 - <<'P'
import json, struct
raw = bytearray(open("bigl/model.safetensors", "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
name = sorted(k for k in h if "mlp.up_proj" in k)[-1]
struct.pack_into("<f", raw, 8 + n + h[name]["data_offsets"][0] + 20, 1e5)
open("bigl/model.safetensors", "wb").write(raw)
P
last=$(python3 -c "import json; print(json.load(open('a/config.json'))['num_hidden_layers'] - 1)")
expect_error "runf3/final: tensor model.layers.$last.mlp.up_proj.weight holds 100000.*the trained state is in runf3/step_00000002.h5" \
  $MPIRUN 2 "$METAPO" train --model bigl --data d.h5 --out runf3 --pp 2 --max-steps 2 --batch-size 8 --lr 1e-12 --save-dtype float16
[ ! -e runf/final ] && [ ! -e runf/final.partial ] && [ ! -e runf2/final ] || fail "a refused float16 final/ left a directory"
"$METAPO" train --model big --data d.h5 --out runf --max-steps 2 --batch-size 8 --lr 1e-12 --save-dtype bfloat16 --resume auto >/dev/null
grep -q '"bfloat16"' runf/final/config.json || fail "the resumed run did not write a bfloat16 final/"
"$METAPO" export --model runf2/step_00000002.h5 --out f2 --dtype float32 >/dev/null
echo "ok: a float16 final/ out of range keeps the trained state in a checkpoint"
