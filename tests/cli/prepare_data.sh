#!/usr/bin/env bash
# tools/prepare_data.py: its pytest suite (tests/python/test_prepare_data.py), then a file it writes
# checked from outside Python: structure and types with h5dump, and read by metapo itself
# (precompute-ref reads every split with all the reader's checks) once the binary has that command;
# an --out that is an input, or a file of the tokenizer, is refused and left as it was.
# Skipped, exit 0, when python3 lacks pytest, transformers, tokenizers, h5py or numpy.
source "$(dirname "$0")/common.sh"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || { echo "skipped: no $PY"; exit 0; }
missing=$("$PY" - <<'EOF'
import importlib.util
print(" ".join(m for m in ("pytest", "transformers", "tokenizers", "h5py", "numpy")
               if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  echo "skipped: $PY lacks $missing (pip install $missing)"
  exit 0
fi
export TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1

# 1. The Python tests (in-process; the `datasets` test skips itself when that package is missing).
"$PY" -m pytest -q -p no:cacheprovider "$SRC/tests/python/test_prepare_data.py" ||
  fail "tests/python/test_prepare_data.py failed"

# 2. A file from the command line, with the tokenizer the tests build.
"$PY" - "$SRC/tests/python" tok <<'EOF'
import sys
sys.path.insert(0, sys.argv[1])
from test_prepare_data import _build_tokenizer
_build_tokenizer(sys.argv[2])
EOF
D="$SRC/tests/python/data"
"$PY" "$SRC/tools/prepare_data.py" --tokenizer tok --out data.h5 "$D/standard.jsonl" --val "$D/val.jsonl" --test "$D/test.jsonl" \
  --sft "$D/sft.jsonl" \
  --columns weight,difficulty >out.txt 2>err.txt || { cat err.txt; fail "prepare_data.py failed"; }
[ ! -e data.h5.partial ] || fail "data.h5.partial left behind"

# --out never overwrites what the run reads (an input, --val/--test/--sft file, a file of the
# tokenizer's directory), however it is spelled; refused before anything is read, with one error line.
cp "$D/standard.jsonl" in.jsonl && cp "$D/val.jsonl" v.jsonl && cp tok/tokenizer.json tokenizer.orig
PD="$SRC/tools/prepare_data.py"
expect_error1() {
  expect_error "$@"
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; fail "not one stderr line: ${*:2}"; }
}
expect_error1 "prepare_data: error: --out in.jsonl: is input in.jsonl" \
  "$PY" "$PD" --tokenizer tok --out in.jsonl in.jsonl
expect_error1 "--out ./sub/../in.jsonl: is input in.jsonl" bash -c 'mkdir -p sub && "$@"' _ \
  "$PY" "$PD" --tokenizer tok --out ./sub/../in.jsonl in.jsonl
expect_error1 "--out v.jsonl: is --val v.jsonl" "$PY" "$PD" --tokenizer tok --out v.jsonl in.jsonl --val v.jsonl
expect_error1 "--out tok/tokenizer.json: is inside --tokenizer tok" \
  "$PY" "$PD" --tokenizer tok --out tok/tokenizer.json in.jsonl
cmp -s in.jsonl "$D/standard.jsonl" && cmp -s v.jsonl "$D/val.jsonl" && cmp -s tok/tokenizer.json tokenizer.orig ||
  fail "a refused --out changed an input"
echo "a file" > afile
expect_error1 "--out afile/x.h5: cannot write there" "$PY" "$PD" --tokenizer tok --out afile/x.h5 in.jsonl

if command -v h5dump >/dev/null; then
  h5dump -H data.h5 >h.txt || fail "h5dump cannot read data.h5"
  # dtype of a dataset: the DATATYPE line after its DATASET line.
  dtype() { awk -v n="DATASET \"$1\"" 'index($0, n) {f = 1; next} f && /DATATYPE/ {print $2; exit}' h.txt; }
  for g in train val test; do
    grep -q "GROUP \"$g\"" h.txt || fail "no /$g group"
  done
  grep -q 'GROUP "sft"' h.txt || fail "no /sft group"
  for x in prompt chosen rejected answer; do
    [ "$(dtype ${x}_tokens)" = H5T_STD_I32LE ] || fail "${x}_tokens is not int32 little-endian"
    [ "$(dtype ${x}_offsets)" = H5T_STD_I64LE ] || fail "${x}_offsets is not int64 little-endian"
  done
  [ "$(dtype sample_id)" = H5T_STD_I64LE ] || fail "sample_id is not int64"
  [ "$(dtype quality)" = H5T_IEEE_F32LE ] || fail "quality is not float32"
  for a in format format_version tokenizer vocab_size bos_token_id eos_token_id pad_token_id task source; do
    grep -q "ATTRIBUTE \"$a\"" h.txt || fail "root attribute $a missing"
  done
  h5dump -a format data.h5 | grep -q '"metapo-dataset"' || fail "format attribute is not metapo-dataset"
  echo "ok: h5dump sees the groups, datasets, types and attributes of docs/formats.md"
else
  echo "note: no h5dump (apt-get install hdf5-tools); structure checked by the Python tests only"
fi

# 3. metapo reads the file: precompute-ref with a random model whose vocabulary is the tokenizer's.
if "$METAPO" --help 2>&1 | grep -q "precompute-ref"; then
  V=$("$PY" -c 'import h5py, sys; print(int(h5py.File(sys.argv[1], "r").attrs["vocab_size"]))' data.h5)
  sed "s/^vocab_size *=.*/vocab_size = $V/" "$SRC/configs/presets/tiny.ini" >tok_model.ini
  "$METAPO" init --preset "$PWD/tok_model.ini" --out model --seed 1 >/dev/null
  "$METAPO" precompute-ref --model model --data data.h5 >pr.txt 2>&1 || { cat pr.txt; fail "metapo cannot read data.h5"; }
  "$PY" - data.h5 <<'EOF' || fail "reference log-probs missing after precompute-ref"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "r") as f:
    for s in ("train", "val", "test"):
        g = f[s]
        n = g["sample_id"].shape[0]
        for k in ("ref_logp_chosen", "ref_logp_rejected"):
            v = g[k][...]
            assert v.shape == (n,) and np.all(np.isfinite(v)) and np.all(v < 0), (s, k)
EOF
  echo "ok: metapo precompute-ref read every split of a prepare_data.py file"
else
  echo "note: this metapo has no precompute-ref yet; C++ read-back not checked"
fi
echo "ok: prepare_data"
