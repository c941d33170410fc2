#!/usr/bin/env bash
# Bad options of `metapo train` and `metapo sft`: each is refused with one error line naming the
# option, before the run directory exists (nothing is left behind, so the corrected command can use
# the same --out), and no input file is ever overwritten. Also the --config file mistakes, options
# that only MetaPO reads given without it (said, not refused), and what a resume refuses beside
# checkpoint.sh's: another --batch-size or --seed (the data order), and a checkpoint past the run's steps.
source "$(dirname "$0")/common.sh"
"$METAPO" synth --task sort --flip 0.3 --seed 1 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 2 >/dev/null
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
cp d.h5 d.orig.h5
T="--model init --data d.h5 --batch-size 16 --micro-batch 8"
M="--weighting metapo"

# refused NAME WANT COMMAND...: one error line matching WANT (a grep pattern), and NAME (the --out) does
# not exist.
refused() {
  local name="$1" want="$2"; shift 2
  expect_error "$want" "$@" --out "$name"
  [ ! -e "$name" ] || fail "a refused run left $name behind: $*"
}
for cmd in train sft; do
  refused x "--save-dtype bf16: unknown (valid: auto, float32, bfloat16, float16)" "$METAPO" $cmd $T --max-steps 2 --save-dtype bf16
  refused x "--lr-schedule Cosine: unknown" "$METAPO" $cmd $T --max-steps 2 --lr-schedule Cosine
  refused x "--adam-eps 0: must be finite and positive" "$METAPO" $cmd $T --max-steps 2 --adam-eps 0
  refused x "--adam-beta1 2: must be in .0, 1)" "$METAPO" $cmd $T --max-steps 2 --adam-beta1 2
  refused x "--adam-beta2 -1: must be in .0, 1)" "$METAPO" $cmd $T --max-steps 2 --adam-beta2 -1
  refused x "--lr inf: must be finite and positive" "$METAPO" $cmd $T --max-steps 2 --lr inf
  refused x "--weight-decay nan: must be finite and >= 0" "$METAPO" $cmd $T --max-steps 2 --weight-decay nan
  refused x "--min-lr-ratio 2: must be in .0, 1.$" "$METAPO" $cmd $T --max-steps 2 --min-lr-ratio 2
  refused x "--max-grad-norm -1: must be finite and >= 0" "$METAPO" $cmd $T --max-steps 2 --max-grad-norm -1
  refused x "--warmup-steps -1: must be >= 0" "$METAPO" $cmd $T --max-steps 2 --warmup-steps -1
  refused x "--epochs and --max-steps must be >= 0" "$METAPO" $cmd $T --max-steps -1
  expect_error "--out must not be empty" "$METAPO" $cmd $T --max-steps 2 --out ""
  expect_error "--data must not be empty" "$METAPO" $cmd --model init --data "" --max-steps 2 --out x
done
refused x "--eval-every -1: must be >= 0" "$METAPO" train $T --max-steps 2 --eval-every -1
refused x "--track-every 0: must be at least 1" "$METAPO" train $T --max-steps 2 --track-every 0
refused x "--ref-model nosuch: not a directory" "$METAPO" train $T --max-steps 2 --ref-model nosuch

# MetaPO's: those that need the data or the layout too, before --out exists.
refused x "--meta-val-batch 17 is larger than d.h5: /val (16 pairs)" "$METAPO" train $T --max-steps 2 $M --meta-val-batch 17
refused x "--meta-val-batch 3 is not divisible by the 2 data-parallel ranks" $MPIRUN 2 "$METAPO" train $T --max-steps 2 $M --meta-val-batch 3
refused x "--hypergrad bogus: unknown (valid: ghost, exact, fd)" "$METAPO" train $T --max-steps 2 $M --hypergrad bogus
refused x "--hypergrad exact is not supported with --tp 2" $MPIRUN 2 "$METAPO" train --tp 2 $T --max-steps 2 $M --hypergrad exact
refused x "--stats-refresh-every 1 and --stats-refresh-pairs 0: a refresh needs both" "$METAPO" train $T --max-steps 2 $M --stats-refresh-every 1

# MetaPO's pair table has a row per sample id: ids far past what fits are refused before any work.
cp d.h5 bigid.h5
python3 -c "import h5py; f = h5py.File('bigid.h5', 'r+'); s = f['train/sample_id']; a = s[:]; a[3] = 10**12; s[...] = a"
refused x "bigid.h5: /train has sample ids up to 1000000000000; the pair table (a row per id, .* needs .* GiB, more than this machine's" \
  "$METAPO" train --model init --data bigid.h5 --batch-size 16 --micro-batch 8 --max-steps 2 $M

# --meta-trace never overwrites a file metapo did not write, nor one of the run's own.
cp -r init init2
refused x "--meta-trace d.h5: exists and is not this run's trace" "$METAPO" train $T --max-steps 2 $M --meta-trace d.h5
refused x "exists and is not this run's trace" "$METAPO" train --model init2 --data d.h5 --batch-size 16 --max-steps 2 $M \
  --meta-trace init2/model.safetensors
refused x "--meta-trace x/metrics.jsonl: a file of the run itself" "$METAPO" train $T --max-steps 2 $M --meta-trace x/metrics.jsonl
refused x "--meta-trace nodir/t.jsonl: " "$METAPO" train $T --max-steps 2 $M --meta-trace nodir/t.jsonl
cmp d.h5 d.orig.h5 || fail "the dataset was changed"
cmp init/model.safetensors init2/model.safetensors || fail "the model was changed"
echo "ok: no input was overwritten"
# A trace of its own is continued by --resume auto (and one inside --out may be named as a new run's).
"$METAPO" train $T --max-steps 4 --save-every 2 $M --meta-trace t1/trace.jsonl --out t1 >/dev/null
rm -r t1/final t1/metapo.json
"$METAPO" train $T --max-steps 4 --save-every 2 $M --meta-trace t1/trace.jsonl --out t1 --resume auto >/dev/null
[ "$(wc -l <t1/trace.jsonl)" -eq 4 ] || fail "the resumed trace has $(wc -l <t1/trace.jsonl) lines, expected 4"
# ... and so is one outside --out, given by a relative path, when the resume starts elsewhere.
"$METAPO" train $T --max-steps 4 --save-every 2 $M --meta-trace t2.jsonl --out t2 >/dev/null
rm -r t2/final t2/metapo.json
mkdir sub
(cd sub && "$METAPO" train --model ../init --data ../d.h5 --batch-size 16 --micro-batch 8 --max-steps 4 --save-every 2 $M \
  --meta-trace ../t2.jsonl --out ../t2 --resume auto >/dev/null) || fail "the resume from another directory was refused"
[ "$(wc -l <t2.jsonl)" -eq 4 ] || fail "the trace resumed from another directory has $(wc -l <t2.jsonl) lines, expected 4"
echo "ok: a resumed run continues its own trace"
# Checked once loaded (a checkpoint of another model): nothing left behind either. (The stored
# reference log-probs are init's: --ref-model init, else they are refused first, below.)
"$METAPO" init --preset tiny --layers 1 --out narrow >/dev/null
refused x "written for another model" "$METAPO" train --model narrow --ref-model init --data d.h5 --batch-size 16 --max-steps 4 --resume t1/step_00000002.h5 \
  $M --meta-trace x/trace.jsonl

# A bad --weighting column value is refused before the first step, naming the pair by its sample id.
cp d.h5 col.h5
python3 - <<'P'
import h5py, numpy as np
with h5py.File("col.h5", "r+") as f:
    w = np.ones(len(f["train/sample_id"]), dtype=np.float32)
    w[37] = -1
    f.create_dataset("train/columns/w", data=w)
    print(int(f["train/sample_id"][37]), file=open("sid37", "w"))
P
refused x "col.h5: /train/columns/w: value -1 of pair 37 (sample_id $(cat sid37)) is not a finite number >= 0" \
  "$METAPO" train --model init --data col.h5 --batch-size 16 --max-steps 2 --weighting column --weight-column w
# An --out that is a link to nothing: refused, and the link stays (it used to be removed).
ln -s "$WORK/nonexist" dl
expect_error "--out dl: a symbolic link to $WORK/nonexist, which does not exist" "$METAPO" train $T --max-steps 1 --out dl
[ -L dl ] && [ ! -e nonexist ] || fail "a refused --out link was removed or followed"
# A first step that fails (all weights 0: found when the batch is weighed) leaves nothing behind
# either, so the corrected command can use the same --out (run.json used to stay and refuse it).
python3 - <<'P'
import h5py, numpy as np
with h5py.File("col.h5", "r+") as f:
    f["train/columns/w"][...] = 0
P
refused x "step 1: the pair weights of the batch sum to 0 (--weighting column)" \
  "$METAPO" train --model init --data col.h5 --batch-size 16 --max-steps 2 --weighting column --weight-column w

# One start at a time in a run directory (RUN/.lock, held by another process here with flock(1)): a
# start waits for the holder, and past METAPO_LOCK_WAIT_S gives up with one line, changing nothing.
"$METAPO" train $T --max-steps 4 --save-every 2 --out lk >/dev/null
rm -r lk/final && cp lk/metrics.jsonl lk.metrics
flock lk/.lock sleep 6 & holder=$!
sleep 0.5
METAPO_LOCK_WAIT_S=1 expect_error "--out lk: another metapo run is using this directory (lk/.lock is locked)" \
  "$METAPO" train $T --max-steps 4 --save-every 2 --out lk --resume auto
cmp lk/metrics.jsonl lk.metrics && [ ! -e lk/final ] || fail "a start refused for the lock changed the run"
METAPO_LOCK_WAIT_S=30 "$METAPO" train $T --max-steps 4 --save-every 2 --out lk --resume auto >lk.log
wait "$holder"
grep -q "^--out lk: another metapo start holds lk/.lock; waiting up to 30 s" lk.log && grep -q "^resumed from lk/step_00000004.h5" lk.log ||
  { cat lk.log; fail "the start did not wait for the lock's holder"; }
# A start refused for the lock exits 75 (transient: a job script requeues it), on 1 rank and on 2.
flock -o lk/.lock sleep 60 & holder=$!  # -o: the lock is flock's alone, so killing it frees the lock
sleep 0.5
rc=0; METAPO_LOCK_WAIT_S=0 "$METAPO" train $T --max-steps 4 --save-every 2 --out lk --resume auto >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 75 ] || fail "a start refused for the lock exited $rc, not 75"
rc=0; METAPO_LOCK_WAIT_S=0 $MPIRUN 2 "$METAPO" train $T --max-steps 4 --save-every 2 --out lk --resume auto >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 75 ] || fail "a 2-rank start refused for the lock exited $rc, not 75"
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null || true
# A start waiting for the lock that gets SIGTERM (scancel of a queued duplicate) ends without
# touching the run, rather than going on once the lock is free.
cp lk/metrics.jsonl lk.metrics
flock lk/.lock sleep 20 & holder=$!
sleep 0.5
METAPO_LOCK_WAIT_S=30 "$METAPO" train $T --max-steps 4 --save-every 2 --out lk --resume auto >lkt.log 2>&1 & waiter=$!
for _ in $(seq 1 100); do grep -q "waiting up to 30 s" lkt.log && break; sleep 0.2; done
kill -TERM "$waiter"
rc=0; wait "$waiter" || rc=$?
kill "$holder"; wait "$holder" 2>/dev/null || true
[ "$rc" -eq 1 ] && grep -q "stopped by SIGTERM while waiting for lk/.lock; nothing was changed" lkt.log ||
  { cat lkt.log; fail "a waiting start did not end on SIGTERM (exit $rc)"; }
cmp lk/metrics.jsonl lk.metrics || fail "a start stopped while waiting changed lk/metrics.jsonl"
# METAPO_LOCK_WAIT_S=off: no lock (a file system whose locks outlive a dead node).
rm -r lk/final
flock lk/.lock sleep 4 & holder=$!
sleep 0.5
METAPO_LOCK_WAIT_S=off "$METAPO" train $T --max-steps 4 --save-every 2 --out lk --resume auto >lk2.log || fail "METAPO_LOCK_WAIT_S=off waited"
! grep -q "waiting" lk2.log || fail "METAPO_LOCK_WAIT_S=off waited: $(cat lk2.log)"
wait "$holder"
METAPO_LOCK_WAIT_S=soon expect_error "METAPO_LOCK_WAIT_S=soon: not a whole number of seconds" "$METAPO" train $T --max-steps 4 \
  --out lk --resume auto
# A new run's lock file in an empty --out is no obstacle, and a refused start leaves no lock behind.
mkdir lk2 && : > lk2/.lock
"$METAPO" train $T --max-steps 1 --out lk2 >/dev/null || fail "a lone lk2/.lock made --out lk2 unusable"
mkdir lk3
refused lk3/x "--save-dtype bf16" "$METAPO" train $T --max-steps 2 --save-dtype bf16
expect_error "--meta-val-batch 17 is larger" "$METAPO" train $T --max-steps 2 $M --meta-val-batch 17 --out lk3
[ -z "$(ls -A lk3)" ] || fail "a refused start left $(ls -A lk3) in an empty --out"
echo "ok: one start at a time in a run directory"

# Options read only by MetaPO, given without it: a warning line each, and the run goes on.
"$METAPO" train $T --max-steps 1 --out w1 --meta-lr 1e-3 --stats-ema 0.2 >w1.log
grep -q "^warning: --meta-lr has no effect without --weighting metapo" w1.log || { cat w1.log; fail "no warning for --meta-lr"; }
grep -q "^warning: --stats-ema has no effect" w1.log || fail "no warning for --stats-ema"
! grep -q "warning: --meta-val-batch" w1.log || fail "a warning for an option not given"
# A loss's or a weighting's own parameter beside another loss or weighting: said too.
"$METAPO" train $T --max-steps 1 --out w4 --simpo-gamma 2 --margin-tau 3 --weight-column foo >w4.log
grep -q "^warning: --simpo-gamma has no effect with --loss sigmoid --weighting uniform" w4.log || { cat w4.log; fail "no warning for --simpo-gamma"; }
grep -q "^warning: --margin-tau has no effect" w4.log && grep -q "^warning: --weight-column has no effect" w4.log || fail "no warning for --margin-tau/--weight-column"
! grep -q "warning: --discopop-tau\|warning: --wpo-alpha" w4.log || fail "a warning for an option not given"
"$METAPO" train $T --max-steps 2 --out w2 $M --meta-warmup 5 >w2.log
grep -q "^warning: --meta-warmup 5: the run has 2 steps, so the weight net is never updated" w2.log || { cat w2.log; fail "no --meta-warmup warning"; }
# A traced run continued without --meta-trace: said (its trace ends there).
"$METAPO" train $T --max-steps 2 --save-every 2 --out w5 $M --meta-trace w5/trace.jsonl >/dev/null
"$METAPO" train $T --max-steps 3 --save-every 2 --out w5 $M --resume auto >w5.log
grep -q "^note: the run's --meta-trace .*w5/trace.jsonl is not continued" w5.log || { cat w5.log; fail "no note for the trace"; }
# --ref-model beside stored reference log-probs: checked to be their model (no note then); used
# as they are with --trust-stored-ref, and then said.
"$METAPO" train $T --max-steps 1 --out w3 --ref-model init >w3.log
! grep -q "note: --ref-model" w3.log || { cat w3.log; fail "a --ref-model note for the model the log-probs came from"; }
"$METAPO" init --preset tiny --out init9 --seed 9 >/dev/null
"$METAPO" train $T --max-steps 1 --out w8 --ref-model init9 --trust-stored-ref >w8.log
grep -q "^note: --ref-model init9 is not used" w8.log || { cat w8.log; fail "no --ref-model note"; }
echo "ok: warnings for options that have no effect"
# Stored reference log-probs of another model: refused before any work, at 1 and 2 ranks (the policy
# and the reference are init2; the file's are init's); the model they came from named with --ref-model,
# or a copy of it, is accepted.
"$METAPO" init --preset tiny --out init2 --seed 3 >/dev/null
refused x "d.h5: /train: the reference log-probs were computed with another model (init, fingerprint [0-9a-f]*) than this run's reference init2 (--model" \
  "$METAPO" train --model init2 --data d.h5 --batch-size 16 --max-steps 1
refused x "this run's reference init2 (--ref-model" $MPIRUN 2 "$METAPO" train $T --max-steps 1 --ref-model init2 $M
"$METAPO" train --model init2 --ref-model init --data d.h5 --batch-size 16 --max-steps 1 --out w6 >/dev/null
"$METAPO" train --model init2 --trust-stored-ref --data d.h5 --batch-size 16 --max-steps 1 --out w9 >/dev/null
python3 -c "import json, sys; sys.exit(0 if json.load(open('w9/run.json'))['trust_stored_ref'] is True and json.load(open('w6/run.json'))['trust_stored_ref'] is False else 1)" \
  || fail "run.json does not record --trust-stored-ref"
cp -r init initcopy
"$METAPO" train --model initcopy --data d.h5 --batch-size 16 --max-steps 1 --out w7 >/dev/null
echo "ok: reference log-probs of another model are refused; those of --ref-model or a copy of --model are used"
# An empty /val where evaluation or MetaPO needs it: refused before the first step (it used to train
# until the first evaluation and then ask for reference log-probs).
if python3 -c "import h5py" 2>/dev/null; then
  cp d.orig.h5 dv.h5
  python3 - <<'P'
import h5py, numpy as np
with h5py.File("dv.h5", "r+") as f:
    g = f["val"]
    if "columns" in g:
        del g["columns"]
    for k in [k for k in g.keys() if isinstance(g[k], h5py.Dataset)]:
        d = g[k]
        dt, off = d.dtype, k.endswith("_offsets")
        del g[k]
        g.create_dataset(k, data=np.zeros(1 if off else 0, dtype=dt))
P
  refused x "dv.h5: /val holds no pairs, and --eval-every evaluates on it" "$METAPO" train --model init --data dv.h5 --batch-size 16 --max-steps 4 --eval-every 2
  refused x "dv.h5: /val holds no pairs, and --weighting metapo draws its validation batches from it" "$METAPO" train --model init --data dv.h5 --batch-size 16 --max-steps 4 $M
fi
# export of a run directory without checkpoints names what to export instead.
expect_error "--model w1: a run directory without checkpoints (no .latest.); export its model with --model w1/final" \
  "$METAPO" export --model w1 --out ex

# --config mistakes.
printf 'lr = 1e-3\n[train]\n' >nosec.ini
printf '[Train]\nlr = 1e-3\n' >badsec.ini
printf '[train]\nconfig = other.ini\n' >nested.ini
refused x "--config nosec.ini:1: a key before any .command. section" "$METAPO" train $T --max-steps 1 --config nosec.ini
refused x "--config badsec.ini:1: .Train. is not a metapo command" "$METAPO" train $T --max-steps 1 --config badsec.ini
refused x "--config nested.ini .train.: config: a config file cannot include another" "$METAPO" train $T --max-steps 1 --config nested.ini
refused x "--config $WORK: is a directory" "$METAPO" train $T --max-steps 1 --config "$WORK"
# A parse error names the option once (no doubled "metapo train:" prefix).
expect_error "the argument ('nan') for option '--batch-size' is invalid (see metapo train --help)" "$METAPO" train --model init --data d.h5 --out x --batch-size nan
! grep -q "error: metapo train" err.txt || fail "doubled prefix: $(cat err.txt)"

# What a resume refuses: the data order's options, and a checkpoint past the run's steps.
"$METAPO" train $T --max-steps 6 --save-every 2 --keep 0 --out r >/dev/null
refused x "r/step_00000004.h5: written by a run with --batch-size 16 (this run: 8)" "$METAPO" train --model init --data d.h5 \
  --batch-size 8 --max-steps 6 --resume r/step_00000004.h5
refused x "r/step_00000004.h5: written by a run with --seed 0 (this run: 5)" "$METAPO" train $T --seed 5 --max-steps 6 --resume r/step_00000004.h5
refused x "r/step_00000004.h5: at step 4, past this run's 3 steps" "$METAPO" train $T --max-steps 3 --resume r/step_00000004.h5
refused x "r/step_00000004.h5: written by a run with --max-length 0 (this run: 12)" "$METAPO" train $T --max-length 12 \
  --max-steps 6 --resume r/step_00000004.h5
refused x "r/step_00000004.h5: written by a run with --loss \"sigmoid\" (this run: \"ipo\")" "$METAPO" train $T --max-steps 6 \
  --loss ipo --resume r/step_00000004.h5
refused x "r/step_00000004.h5: written by a run with --beta 0.1 (this run: 0.5)" "$METAPO" train $T --max-steps 6 --beta 0.5 \
  --resume r/step_00000004.h5
refused x "r/step_00000004.h5: written by a run with --weighting \"uniform\" (this run: \"wpo\")" "$METAPO" train $T \
  --max-steps 6 --weighting wpo --resume r/step_00000004.h5
"$METAPO" train $T --max-steps 6 --save-every 2 --keep 0 $M --out rm >/dev/null
refused x "written by a run with --meta-features \"all\" (this run: \"temporal\")" "$METAPO" train $T --max-steps 6 $M \
  --meta-features temporal --resume rm/step_00000002.h5
# A refused resume in place leaves the run directory's run.json as it was (no new options, no restart),
# and never rewrites it at all (the same inode: a start killed before its first step could not have
# put it back); a resume that runs rewrites it after its first step.
cp -r r rr && rm -r rr/final && cp rr/run.json run.before
ino=$(stat -c %i rr/run.json)
expect_error "rr/step_00000006.h5: written by a run with --batch-size 16 (this run: 8)" "$METAPO" train --model init \
  --data d.h5 --batch-size 8 --max-steps 8 --out rr --resume auto
cmp rr/run.json run.before || fail "a refused resume rewrote rr/run.json"
[ "$(stat -c %i rr/run.json)" = "$ino" ] || fail "a refused resume wrote rr/run.json again (same content, new file)"
"$METAPO" train --model init --data d.h5 --batch-size 16 --micro-batch 8 --max-steps 8 --out rr --resume auto >/dev/null
python3 -c "import json; j = json.load(open('rr/run.json')); assert j['restarts'] == 1 and j['max_steps'] == 8, j" ||
  fail "the resume that ran did not record itself in rr/run.json"
python3 -c "import json; j = json.load(open('r/run.json')); assert j['device'] == 'cpu' and 'hang_timeout_s' in j, j"
python3 -c "import json; m = json.load(open('rm/run.json'))['meta']; assert m['gate'] == 2 and m['gate_ema'] == 0.02, m"
# The same values resume (the micro-batching and the step count may change).
"$METAPO" train --model init --data d.h5 --batch-size 16 --micro-batch 4 --max-steps 8 --resume r/step_00000004.h5 --out ok >/dev/null
[ -f ok/final/config.json ] || fail "a resume with another --micro-batch and more steps did not finish"
echo "ok: train/sft option checks"
