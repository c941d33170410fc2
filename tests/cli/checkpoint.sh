#!/usr/bin/env bash
# Checkpoints (docs/training.md "Checkpoints and resume"): a run resumed from one of its checkpoints
# continues bit-identically on the same layout (1 rank and DP 2 x TP 2 x PP 2, MetaPO with every run
# file: metrics.jsonl, trajectories.jsonl, --meta-trace, metapo.json, final/), within 1e-4 on another
# layout (1x1x1 <-> 2x2x2, a DP change that re-splits the ZeRO shards); `--resume auto` skips a
# truncated and a corrupted checkpoint; a checkpoint of another dataset, model shape, format version
# or command is refused with one line; `metapo export` writes a checkpoint's model.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --seed 3 --flip 0.2 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 2 >/dev/null
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
base="--model init --data d.h5 --batch-size 8 --micro-batch 2 --lr 1e-3 --warmup-steps 1 --keep 0"
# --meta-gate 0: the weights as learned (a 10-step run can keep the significance gate shut, and then the
# policy would not see the weight net)
meta="--weighting metapo --meta-gate 0 --meta-lr 1e-2 --meta-val-batch 8 --stats-refresh-every 2 --stats-refresh-pairs 16"

# compare_runs A B: every per-step and eval line of A/metrics.jsonl equal in B (timings and the restart
# marker aside), and the other run files byte-identical.
compare_runs() {
  python3 - "$1" "$2" <<'P'
import json, sys
def lines(p):
    return [{k: v for k, v in j.items() if k not in ("step_time", "tokens_per_s") and not k.startswith("time/")}
            for j in map(json.loads, open(p)) if "event" not in j]
a, b = lines(sys.argv[1] + "/metrics.jsonl"), lines(sys.argv[2] + "/metrics.jsonl")
assert len(a) == len(b), (len(a), len(b))
for x, y in zip(a, b):
    assert x == y, (x, y)
marks = [j for j in map(json.loads, open(sys.argv[2] + "/metrics.jsonl")) if j.get("event") == "resumed"]
assert len(marks) == 1, marks
print(f"ok: {sys.argv[2]}/metrics.jsonl: {len(a)} lines equal to the uninterrupted run's, restart marked at step {marks[0]['step']}")
P
  local f
  for f in final/model.safetensors metapo.json trace.jsonl trajectories.jsonl; do
    cmp "$1/$f" "$2/$f" || fail "$2/$f differs from the uninterrupted run's"
  done
  echo "ok: $2: final/, metapo.json, the meta trace and the trajectories byte-identical"
}

# --- Bit-identical resume on the same layout: the run copied as it stood at the end, its final/ and
# later checkpoints removed (as a kill after step 9 would leave it, with the files run past step 6).
same_layout() {  # NAME NP LAYOUT...
  local name="$1" np="$2"; shift 2
  $MPIRUN "$np" "$METAPO" train "$@" $base ${GATE_META:-$meta} --max-steps 10 --save-every 3 --eval-every 4 --track-pairs 2 \
    --track-every 3 --out "$name" --meta-trace "$name/trace.jsonl" >"$name.log"
  rm -rf "$name-r" && cp -r "$name" "$name-r"
  rm -rf "$name-r/final" "$name-r/metapo.json" "$name-r/step_00000009.h5"
  $MPIRUN "$np" "$METAPO" train "$@" $base ${GATE_META:-$meta} --max-steps 10 --save-every 3 --eval-every 4 --track-pairs 2 \
    --track-every 3 --out "$name-r" --meta-trace "$name-r/trace.jsonl" --resume auto >"$name-r.log"
  grep -q "^resumed from $name-r/step_00000006.h5 at step 6" "$name-r.log" || { cat "$name-r.log"; fail "$name: no resume from step 6"; }
  compare_runs "$name" "$name-r"
}
same_layout one 1
# Rolling back in the run's own directory (--resume RUN/step_3 of a finished run, --keep 1): what the
# run wrote past step 3 (step_6, step_9, final/, metapo.json) is moved to RUN/abandoned_r1/, the new
# checkpoints are kept (not deleted in favour of the old step_9), the result is the uninterrupted
# run's, and a later --resume auto follows the new continuation.
cp -r one rb
$MPIRUN 1 "$METAPO" train ${base/--keep 0/--keep 1} $meta --max-steps 10 --save-every 3 --eval-every 4 --track-pairs 2 \
  --track-every 3 --out rb --meta-trace rb/trace.jsonl --resume rb/step_00000003.h5 >rb.log
grep -q "^resuming at step 3: moved what the run wrote past it (step_00000006.h5, step_00000009.h5, final, metapo.json) to rb/abandoned_r1" rb.log ||
  { cat rb.log; fail "rollback: the later checkpoints were not set aside"; }
[ "$(ls rb/abandoned_r1 | tr '\n' ' ')" = "final metapo.json step_00000006.h5 step_00000009.h5 " ] || fail "rollback: abandoned_r1 holds $(ls rb/abandoned_r1)"
[ "$(ls rb | grep '^step_' | tr '\n' ' ')" = "step_00000009.h5 " ] && [ "$(cat rb/latest)" = step_00000009.h5 ] ||
  fail "rollback: --keep 1 left $(ls rb | grep '^step_'), latest $(cat rb/latest)"
compare_runs one rb
cmp rb/step_00000009.h5 rb/abandoned_r1/step_00000009.h5 >/dev/null && fail "rollback: the new step_9 is the old file"
rm -rf rb/final rb/metapo.json
$MPIRUN 1 "$METAPO" train ${base/--keep 0/--keep 1} $meta --max-steps 10 --save-every 3 --eval-every 4 --track-pairs 2 \
  --track-every 3 --out rb --meta-trace rb/trace.jsonl --resume auto >rb2.log
grep -q "^resumed from rb/step_00000009.h5 at step 9" rb2.log || { cat rb2.log; fail "rollback: --resume auto did not follow the new run"; }
echo "ok: a rollback in the run's own directory sets aside what it abandons"
# metrics.jsonl shorter than its checkpoint recorded, cut inside a line (a crash before the data
# reached the disk): continued after its last whole line, so every line stays one JSON value.
cp -r one torn && rm -rf torn/final torn/metapo.json torn/step_00000009.h5
truncate -s $(( $(head -n 3 torn/metrics.jsonl | wc -c) + 7 )) torn/metrics.jsonl
$MPIRUN 1 "$METAPO" train $base $meta --max-steps 10 --save-every 3 --eval-every 4 --track-pairs 2 --track-every 3 \
  --out torn --meta-trace torn/trace.jsonl --resume auto >torn.log
grep -q "^warning: torn/metrics.jsonl holds .* after its last whole line (7 bytes of a torn line dropped)" torn.log ||
  { cat torn.log; fail "no warning for the torn line"; }
python3 -c "import json, sys; [json.loads(l) for l in open(sys.argv[1])]" torn/metrics.jsonl || fail "torn/metrics.jsonl has a broken line"
echo "ok: a torn last line of metrics.jsonl is dropped on resume"
# A final/ that does not read back as a model (cut short) is not "complete": --resume auto sets it
# aside and finishes the run from its newest checkpoint, with the uninterrupted run's result.
cp -r one bf && truncate -s 100 bf/final/model.safetensors
$MPIRUN 1 "$METAPO" train $base $meta --max-steps 10 --save-every 3 --eval-every 4 --track-pairs 2 --track-every 3 \
  --out bf --meta-trace bf/trace.jsonl --resume auto >bf.log
grep -q "^--resume auto: bf/final is not a readable model" bf.log && grep -q "^resumed from bf/step_00000009.h5 at step 9" bf.log ||
  { cat bf.log; fail "a broken final/ was taken for a finished run"; }
cmp one/final/model.safetensors bf/final/model.safetensors && [ -d bf/abandoned_r1/final ] || fail "bf: final/ not rewritten or not set aside"
echo "ok: a broken final/ is set aside and the run finished"
# A MetaPO run with final/ but no metapo.json (an older build stopped between the two) is finished too.
cp -r one nm && rm nm/metapo.json
$MPIRUN 1 "$METAPO" train $base $meta --max-steps 10 --save-every 3 --eval-every 4 --track-pairs 2 --track-every 3 \
  --out nm --meta-trace nm/trace.jsonl --resume auto >nm.log
grep -q "^--resume auto: nm/final has no metapo.json beside it" nm.log || { cat nm.log; fail "final/ without metapo.json taken for a finished run"; }
cmp one/metapo.json nm/metapo.json && cmp one/final/model.safetensors nm/final/model.safetensors ||
  fail "nm: the finished run differs from the uninterrupted one"
echo "ok: a MetaPO run without metapo.json is finished from its checkpoint"
# ... but without a checkpoint to finish from, the run is not started again (that would empty its logs).
mkdir -p nock && cp -r bf/final bf/run.json bf/metrics.jsonl nock/ && truncate -s 100 nock/final/model.safetensors
cp nock/metrics.jsonl nock.metrics
expect_error "nock/final is not a readable model .* and the run has no checkpoint to finish it from" "$METAPO" train $base \
  $meta --max-steps 10 --out nock --resume auto
cmp nock/metrics.jsonl nock.metrics || fail "a refused resume changed nock/metrics.jsonl"
same_layout grid 8 --tp 2 --pp 2
# The significance gate's state (/meta/gate) resumes too: its T, logged on every step, continues as in
# the uninterrupted run (compare_runs compares every metrics key, meta/gate_t and meta/gamma included).
GATE_META="${meta/--meta-gate 0/--meta-gate 1e-9}" same_layout gated 1
python3 - <<'P'
import json
t = [j["meta/gate_t"] for j in map(json.loads, open("gated/metrics.jsonl")) if "meta/gate_t" in j]
assert len(t) == 10 and any(v != 0 for v in t), t
P
python3 - <<'P'
import json
w = [j["weights/std"] for j in map(json.loads, open("one/metrics.jsonl")) if "weights/std" in j]
assert max(w) > 1e-3, f"the MetaPO weights never moved (std {max(w)}): the test would not see the weight net"
P

# --- Another layout: saved at 1x1x1, resumed at 2x2x2, and the reverse; DP 2 -> DP 4 x TP 2 re-splits
# the ZeRO shards. 14 steps, resumed at step 4: 10 steps compared.
$MPIRUN 1 "$METAPO" train $base $meta --max-steps 14 --save-every 4 --out l1 >/dev/null
$MPIRUN 8 "$METAPO" train --tp 2 --pp 2 $base $meta --max-steps 14 --save-every 4 --out l8 >/dev/null
$MPIRUN 2 "$METAPO" train $base $meta --max-steps 14 --save-every 4 --out l2 >/dev/null
$MPIRUN 8 "$METAPO" train --tp 2 --pp 2 $base $meta --max-steps 14 --out l1to8 --resume l1/step_00000004.h5 >/dev/null
$MPIRUN 1 "$METAPO" train $base $meta --max-steps 14 --out l8to1 --resume l8/step_00000004.h5 >/dev/null
$MPIRUN 8 "$METAPO" train --tp 2 $base $meta --max-steps 14 --out l2to8 --resume l2/step_00000004.h5 >/dev/null
python3 - <<'P'
import json
def losses(p):
    return {j["step"]: (j["loss"], j["grad_norm"]) for j in map(json.loads, open(p)) if "event" not in j and "loss" in j}
for base, resumed, what in (("l1", "l1to8", "1x1x1 -> 2x2x2"), ("l8", "l8to1", "2x2x2 -> 1x1x1"),
                            ("l2", "l2to8", "DP 2 -> DP 4 x TP 2")):
    a, b = losses(base + "/metrics.jsonl"), losses(resumed + "/metrics.jsonl")
    assert sorted(b) == list(range(5, 15)), sorted(b)
    worst = max(abs(a[s][0] - b[s][0]) / abs(a[s][0]) for s in b)
    gworst = max(abs(a[s][1] - b[s][1]) / abs(a[s][1]) for s in b)
    assert worst < 1e-4 and gworst < 1e-3, (what, worst, gworst)
    print(f"ok: resumed {what} at step 4: max relative loss difference over steps 5-14 {worst:.2e} (grad norm {gworst:.2e})")
P

# --- --resume auto over damaged checkpoints: the newest truncated, the next with flipped bytes in a
# tensor; it resumes from the third and says why it skipped the others.
rm -rf dmg && cp -r l1 dmg && rm -rf dmg/final dmg/metapo.json
truncate -s 100000 dmg/step_00000012.h5
sz=$(stat -c %s dmg/step_00000008.h5)
printf '\x55\xaa\x55\xaa\x55\xaa\x55\xaa' | dd of=dmg/step_00000008.h5 bs=1 seek=$((sz / 2)) conv=notrunc status=none
$MPIRUN 2 "$METAPO" train $base $meta --max-steps 14 --out dmg --resume auto >dmg.log
grep -q "^--resume auto: skipping dmg/step_00000012.h5: " dmg.log || { cat dmg.log; fail "the truncated checkpoint was not skipped"; }
grep -q "^--resume auto: skipping dmg/step_00000008.h5: .*corrupt" dmg.log || { cat dmg.log; fail "the corrupted checkpoint was not skipped"; }
grep -q "^resumed from dmg/step_00000004.h5 at step 4" dmg.log || { cat dmg.log; fail "no resume from step 4"; }
grep "^--resume auto: skipping" dmg.log | sed 's/^/ok: /'
# The scalars carry checksums too: a changed model shape in /state/model_config (a bit flip that used
# to read as "written for another model" and stop the run) and a changed /state/step (that used to
# skip batches silently) are corrupt checkpoints, skipped like the others.
rm -rf dmg2 dmg3 && cp -r l1 dmg2 && rm -rf dmg2/final dmg2/metapo.json && cp -r dmg2 dmg3
python3 - <<'P'
import h5py
def patch(path, name, edit):
    with h5py.File(path, "r") as f:
        off = f[name].id.get_offset()
        n = f[name].id.get_storage_size()
    with open(path, "r+b") as g:
        g.seek(off)
        b = bytearray(g.read(n))
        edit(b)
        g.seek(off)
        g.write(b)
def shape(b):
    k = b.find(b'"intermediate_size":') + len(b'"intermediate_size":')
    b[k] = ord("4") if b[k] != ord("4") else ord("5")
patch("dmg2/step_00000012.h5", "state/model_config", shape)
patch("dmg2/step_00000008.h5", "state/step", lambda b: b.__setitem__(0, b[0] ^ 1))
patch("dmg3/step_00000012.h5", "state/layout", lambda b: b.__setitem__(2, b[2] ^ 1))  # read for its checksum only
P
$MPIRUN 2 "$METAPO" train $base $meta --max-steps 14 --out dmg2 --resume auto >dmg2.log
grep -q "^--resume auto: skipping dmg2/step_00000012.h5: .*state/model_config is corrupt (checksum mismatch)" dmg2.log &&
  grep -q "^--resume auto: skipping dmg2/step_00000008.h5: .*state/step is corrupt (checksum mismatch)" dmg2.log &&
  grep -q "^resumed from dmg2/step_00000004.h5 at step 4" dmg2.log || { cat dmg2.log; fail "a corrupted scalar was not caught"; }
$MPIRUN 1 "$METAPO" train $base $meta --max-steps 14 --out dmg3 --resume auto >dmg3.log
grep -q "^--resume auto: skipping dmg3/step_00000012.h5: .*state/layout is corrupt (checksum mismatch)" dmg3.log &&
  grep -q "^resumed from dmg3/step_00000008.h5 at step 8" dmg3.log || { cat dmg3.log; fail "a corrupted /state/layout was not caught"; }
echo "ok: corrupted scalars (/state/model_config, /state/step, /state/layout) are skipped as corrupt"
# A damaged checkpoint named with --resume is an error, not a fallback.
cp l1/step_00000008.h5 bad.h5 && truncate -s 200000 bad.h5
expect_error "bad.h5: " "$METAPO" train $base $meta --max-steps 14 --out r-bad --resume bad.h5

# --- Refusals: another dataset, another model shape, another format version, another command.
"$METAPO" synth --task sort --seed 4 --flip 0.2 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out other.h5 >/dev/null
"$METAPO" precompute-ref --model init --data other.h5 >/dev/null
expect_error "written for another dataset" "$METAPO" train --model init --data other.h5 --batch-size 8 --micro-batch 2 \
  --lr 1e-3 $meta --max-steps 14 --out r-data --resume l1/step_00000004.h5
sed 's/^intermediate_size = 352/intermediate_size = 256/' "$SRC/configs/presets/tiny.ini" >narrow.ini
"$METAPO" init --preset narrow.ini --out narrow >/dev/null
# (--ref-model init: d.h5's reference log-probs are init's; without it they are refused first.)
expect_error "written for another model (intermediate_size 352, this model has 256)" "$METAPO" train --model narrow \
  --ref-model init --data d.h5 --batch-size 8 --micro-batch 2 --lr 1e-3 $meta --max-steps 14 --out r-shape --resume l1/step_00000004.h5
expect_error "written by a run with --weighting metapo" "$METAPO" train $base --max-steps 14 --out r-w --resume l1/step_00000004.h5
expect_error "a checkpoint of \`metapo train\`, not of \`metapo sft\`" "$METAPO" sft $base --max-steps 14 --out r-sft \
  --resume l1/step_00000004.h5
if python3 -c "import h5py" 2>/dev/null; then
  cp l1/step_00000004.h5 v99.h5
  python3 -c "
import h5py
with h5py.File('v99.h5', 'r+') as f:
    del f['/state/format_version']; f['/state/format_version'] = 99
"
  expect_error "v99.h5: checkpoint format version 99; this metapo reads version 2" "$METAPO" train $base $meta \
    --max-steps 14 --out r-v --resume v99.h5
  # The layout in docs/formats.md, as h5py reads it.
  python3 - <<'P'
import h5py, json
with h5py.File("l8/step_00000008.h5", "r") as f:
    assert f["/state/step"][()] == 8 and f["/state/consumed_samples"][()] == 64
    assert json.loads(f["/state/layout"][()])["pp"] == 2
    assert f["/model/model.layers.3.mlp.down_proj.weight"].shape == (128, 352)
    assert f["/optimizer/exp_avg_sq/model.embed_tokens.weight"].shape == (64, 128)
    rows, fields = f["/meta/pair_stats"].shape
    assert fields == len(json.loads(f["/meta/columns"][()])["pair_stats"]), fields
    print(f"ok: h5py reads the checkpoint: /meta/pair_stats [{rows}, {fields}], step 8")
    # Every array's checksum attribute, recomputed in numpy from the formula in docs/formats.md.
    import numpy as np
    def checksum(a):
        u = np.uint32 if a.dtype.itemsize == 4 else np.uint64
        b = np.ascontiguousarray(a).ravel().view(u).astype(np.uint64)
        i = np.arange(1, b.size + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            x = (b ^ (i * np.uint64(0x9E3779B97F4A7C15))) * np.uint64(0xBF58476D1CE4E5B9)
            return int((x ^ (x >> np.uint64(29))).sum(dtype=np.uint64))
    seen, scalars = [], []
    def check(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        assert "checksum" in obj.attrs, name
        if obj.shape == ():  # a string's bytes, or an integer's bits, as an array of that many terms
            v = obj[()]
            a = np.frombuffer(v, np.uint8).astype(np.uint64) if isinstance(v, bytes) else np.array([v], np.int64).view(np.uint64)
            assert checksum(a) == int(obj.attrs["checksum"]), name
            scalars.append(name)
        else:
            assert checksum(obj[()]) == int(obj.attrs["checksum"]), name
            seen.append(obj.dtype.itemsize)
    f.visititems(check)
    assert 4 in seen and 8 in seen and len(seen) > 100, seen
    assert "state/step" in scalars and "state/model_config" in scalars, scalars
    print(f"ok: numpy recomputes the checksums of all {len(seen)} arrays (float32 and float64) and {len(scalars)} scalars")
P
else
  echo "skipped: h5py not installed (format-version refusal, h5py reading)"
fi
for d in r-bad r-data r-shape r-w r-sft r-v; do [ ! -e "$d" ] || fail "$d was created by a refused run"; done
h5ls -r l8/step_00000008.h5 >h5ls.txt
grep -q "^/meta/pair_stats " h5ls.txt || fail "h5ls -r does not list /meta/pair_stats"

# --- export: a checkpoint, and a run directory meaning its latest checkpoint.
"$METAPO" sft $base --max-steps 4 --save-every 2 --out s4 >/dev/null
"$METAPO" export --model s4 --out ex-latest >/dev/null
cmp ex-latest/model.safetensors s4/final/model.safetensors || fail "export of s4 (latest: step 4, the last) differs from s4/final"
"$METAPO" export --model l1/step_00000004.h5 --out ex4 >/dev/null
$MPIRUN 3 "$METAPO" export --model l1/step_00000004.h5 --out ex4-3 >/dev/null
cmp ex4/model.safetensors ex4-3/model.safetensors || fail "the 3-rank export of a checkpoint differs from the 1-rank one"
"$METAPO" eval --model ex4 --data d.h5 >/dev/null
echo "ok: metapo export of a run directory (its latest checkpoint, the last step: = final/) and of a checkpoint file"
