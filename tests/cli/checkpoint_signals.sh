#!/usr/bin/env bash
# Stopping and restarting (docs/training.md "Checkpoints and resume"): SIGUSR1 and SIGTERM and
# --max-time finish the step, checkpoint and exit 124, and the resumed run ends byte-identical to an
# uninterrupted one; a diverging run (--lr 1e30) skips its non-finite steps, counts them and stops
# after --max-skipped-steps with nothing non-finite written; eval and score refuse a non-finite model;
# --out refusals come before any work; and the kill loop (tools/kill-loop.sh) with 3 kills.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --seed 3 --flip 0.2 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 2 >/dev/null
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
long="--model init --data d.h5 --batch-size 8 --micro-batch 2 --lr 1e-4 --warmup-steps 1 --max-steps 400"

# stop_with SIGNAL NAME CMD...: starts CMD in the background, sends SIGNAL once it has logged a step
# (to CMD, or with to_ranks=1 to CMD's children: the ranks under mpirun, as slurmstepd signals each
# task), expects exit status 124, the stop line and a checkpoint.
stop_with() {
  local sig="$1" name="$2"; shift 2
  "$@" --out "$name" >"$name.log" 2>&1 &
  local pid=$! rc=0 w
  for ((w = 0; w < 3000; ++w)); do grep -q '^step ' "$name.log" 2>/dev/null && break; sleep 0.01; done
  if [ "${to_ranks:-0}" = 1 ]; then pkill "-$sig" -P "$pid"; else kill "-$sig" "$pid"; fi
  wait "$pid" || rc=$?
  [ "$rc" -eq 124 ] || { cat "$name.log"; fail "$name: SIG$sig: exit status $rc, expected 124"; }
  grep -q "^stopping at step [0-9]* of 400 on SIG$sig: checkpointed; exit status 124" "$name.log" ||
    { cat "$name.log"; fail "$name: no stop line"; }
  [ -f "$name/latest" ] && [ -f "$name/$(cat "$name/latest")" ] || fail "$name: no checkpoint after SIG$sig"
  [ ! -e "$name/final" ] || fail "$name: final/ written by a stopped run"
  echo "ok: SIG$sig to $name: $(grep -m1 '^stopping' "$name.log")"
}
# Under mpirun: SIGUSR1 is forwarded to every rank; mpirun exits with the ranks' 124.
stop_with USR1 usr1 mpirun -np 2 "$METAPO" train $long
# One process (as srun starts each rank): SIGTERM.
stop_with TERM term "$METAPO" train $long
# SIGTERM to every rank of an mpirun job (mpirun does not forward a SIGTERM sent to itself: it tears
# the job down; docs/training.md); mpirun exits with the ranks' 124.
to_ranks=1 stop_with TERM mterm mpirun -np 2 "$METAPO" train $long
# Each resumes to the uninterrupted run's final parameters, byte for byte.
$MPIRUN 2 "$METAPO" train $long --out ref2 >/dev/null
"$METAPO" train $long --out ref1 >/dev/null
$MPIRUN 2 "$METAPO" train $long --out usr1 --resume auto >/dev/null
"$METAPO" train $long --out term --resume auto >/dev/null
$MPIRUN 2 "$METAPO" train $long --out mterm --resume auto >/dev/null
cmp usr1/final/model.safetensors ref2/final/model.safetensors || fail "usr1: resumed final/ differs"
cmp mterm/final/model.safetensors ref2/final/model.safetensors || fail "mterm: resumed final/ differs"
cmp term/final/model.safetensors ref1/final/model.safetensors || fail "term: resumed final/ differs"
echo "ok: the stopped runs resumed to the uninterrupted runs' final parameters (byte-identical)"
# A finished run: --resume auto has nothing to do and says so.
"$METAPO" train $long --out term --resume auto | grep -q "the run is complete" || fail "no 'run is complete' on a finished run"

# --max-time: checkpoint and exit 124 before the budget runs out.
rc=0; "$METAPO" sft --model init --data d.h5 --batch-size 8 --micro-batch 2 --max-steps 100000 --max-time 0:03 \
  --out mt >mt.log 2>&1 || rc=$?
[ "$rc" -eq 124 ] || { cat mt.log; fail "--max-time: exit status $rc"; }
grep -q "on --max-time: checkpointed" mt.log || fail "--max-time: no stop line"
echo "ok: --max-time 0:03: $(grep -m1 '^stopping' mt.log)"
expect_error "--max-time 3x: not a duration" "$METAPO" sft $long --out mt2 --max-time 3x

# --- A diverging run: every non-finite step skipped on all ranks and counted, then an error after
# --max-skipped-steps; no final/, and every checkpoint finite.
rc=0
$MPIRUN 2 "$METAPO" train --model init --data d.h5 --batch-size 8 --micro-batch 2 --lr 1e30 --warmup-steps 1 \
  --max-steps 40 --save-every 1 --keep 0 --max-skipped-steps 3 --out nan >nan.log 2>nan.err || rc=$?
[ "$rc" -ne 0 ] || fail "the diverging run exited 0"
grep -q "4 steps skipped for a non-finite loss or gradient norm, more than --max-skipped-steps 3" nan.err ||
  { cat nan.err; fail "no skipped-steps error"; }
[ ! -e nan/final ] || fail "a diverging run wrote final/"
# Within --max-skipped-steps the run ends with final/, and says once more at the end what it skipped.
"$METAPO" train --model init --data d.h5 --batch-size 8 --micro-batch 2 --lr 1e30 --warmup-steps 1 --max-steps 4 \
  --out nan4 >nan4.log
grep -q "^warning: 3 of the run's 4 steps were skipped for a non-finite loss or gradient norm; nan4/final is" nan4.log ||
  { cat nan4.log; fail "no closing warning for the skipped steps"; }
python3 - <<'P'
import json
lines = [json.loads(l) for l in open("nan/metrics.jsonl")]
skipped = [j for j in lines if j.get("skipped")]
assert [j["skipped_steps"] for j in skipped] == [1, 2, 3, 4], skipped
assert all(j["loss"] is None or j["grad_norm"] is None for j in skipped), skipped
print(f"ok: diverging run: steps {[j['step'] for j in skipped]} skipped and counted in metrics.jsonl")
P
n=0
for ck in nan/step_*.h5; do
  "$METAPO" export --model "$ck" --out "ex-$n" >/dev/null  # reads every tensor back, checksums included
  "$METAPO" eval --model "ex-$n" --data d.h5 --limit 4 >/dev/null || fail "$ck: its model does not evaluate"
  n=$((n + 1))
done
if python3 -c "import h5py, numpy" 2>/dev/null; then
  python3 - <<'P'
import glob, h5py, numpy as np
files = sorted(glob.glob("nan/step_*.h5"))
for p in files:
    with h5py.File(p, "r") as f:
        def check(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "f":
                assert np.isfinite(obj[()]).all(), (p, name)
        f.visititems(check)
print(f"ok: all {len(files)} checkpoints of the diverging run hold only finite values")
P
fi
echo "ok: $n checkpoints of the diverging run export and evaluate"

# --- eval and score on a model with a NaN weight: one error line.
cp -r init nanmodel
sz=$(stat -c %s nanmodel/model.safetensors)
printf '\xff\xff\xff\xff' | dd of=nanmodel/model.safetensors bs=1 seek=$((sz - 4)) conv=notrunc status=none
expect_error "non-finite values" "$METAPO" eval --model nanmodel --data d.h5
echo '{"tokens": [1, 5, 6, 2]}' >seqs.jsonl
expect_error "non-finite values" "$METAPO" score --model nanmodel --input seqs.jsonl --output scores.jsonl
[ ! -e scores.jsonl ] || fail "score wrote output for a non-finite model"

# --- --out safety: refused before any work, nothing written.
mkdir mine && echo "my notes" >mine/notes.txt
expect_error "--out mine: exists and is not a metapo run directory" "$METAPO" train $long --out mine
expect_error "--out ref1: an existing run directory (pass --resume auto to continue it" "$METAPO" train $long --out ref1
expect_error "--out mine/notes.txt: exists and is not a directory" "$METAPO" train $long --out mine/notes.txt
expect_error "--out ref1: a run of \`metapo train\`, not of \`metapo sft\`" "$METAPO" sft $long --out ref1 --resume auto
expect_error "--resume nope: no such file" "$METAPO" train $long --out new --resume nope
expect_error "is not one of its checkpoints" "$METAPO" train $long --out ref2 --resume usr1/$(cat usr1/latest)
[ "$(cat mine/notes.txt)" = "my notes" ] && [ "$(ls mine)" = notes.txt ] || fail "mine/ was touched"
[ ! -e new ] || fail "new/ was made by a refused run"
$MPIRUN 2 "$METAPO" train $long --out ref1 >mpi.out 2>mpi.err && fail "2 ranks: an existing run directory was accepted"
grep -q "an existing run directory" mpi.err || { cat mpi.err; fail "2 ranks: no refusal line"; }
echo "ok: --out refusals (also on 2 ranks)"

# --- The kill loop, short: 3 SIGKILLs on 2 ranks, resumed each time, final parameters identical.
bash "$SRC/tools/kill-loop.sh" --kills 3 --np 2 --layout "" --steps 80 --metapo "$METAPO" --work "$WORK/kill" 2>&1 |
  grep -v "Killed" | tee kill.log | tail -2
grep -q "3/3 restarts resumed" kill.log || fail "kill loop"
