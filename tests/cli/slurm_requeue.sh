#!/usr/bin/env bash
# Pre-emption, time limits and hangs under a real Slurm (docs/slurm.md): jobs/train.sbatch as it is
# shipped, on a private single-node cluster (tests/slurm/cluster.sh), 2 CPU ranks through
# `srun --mpi=pmix`, the tiny model with MetaPO, sized on the command line of sbatch.
#  1. An uninterrupted job: the reference.
#  2. `--time=1 --signal=B:USR1@59`: Slurm's own signal before the time limit (sent at its next
#     time-limit check, every 30 s), twice; then the test raises the limit and the third start
#     finishes. Runs beside the reference, so that at half speed its first start surely outlasts the
#     first signal.
#  3. `scancel --signal=USR1 --full` mid-run: the job checkpoints, exits 124, requeues itself,
#     resumes at the step it stopped at and finishes.
#  4. A SIGSTOPped rank with --hang-timeout 10 (beside 3): the other rank's watchdog names its phase
#     and aborts the job with exit status 125; the job is requeued as a failure and resumes; then a
#     plain scancel (SIGTERM): the ranks checkpoint and the job ends without a requeue.
# The final parameters of 2 and 3 must equal the reference's byte for byte, no step may be lost
# beyond the checkpoint a start stopped at, and the log and run files must show each restart.
source "$(dirname "$0")/common.sh"
source "$SRC/tests/slurm/cluster.sh"
slurm_test_start

"$METAPO" synth --task sort --seed 3 --flip 0.2 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 2 >/dev/null
"$METAPO" precompute-ref --model init --data d.h5 >/dev/null
STEPS=${SLURM_TEST_STEPS:-700}
CYCLES=" ${SLURM_TEST_CYCLES:-sig tl hang} "  # for a look at one cycle (with KEEP_WORK=1)
cat >run.ini <<INI
[train]
weighting = metapo
batch-size = 16
micro-batch = 4
lr = 1e-4
warmup-steps = 1
max-steps = $STEPS
save-every = 50
keep = 2
track-pairs = 0
seed = 3
INI
export CONFIG=$WORK/run.ini MODEL=init DATA=d.h5 SRUN_ARGS=""
# The script's cluster-sized request, cut to this node: 2 ranks, one CPU each, no GPU, and the node
# shared (the script asks for it whole) so that two jobs run side by side.
size=(--nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 --oversubscribe)
t_start=$(date +%s.%N)
since() { printf "%.1f" "$(echo "$(date +%s.%N) - $1" | bc -l)"; }

submit() {  # submit RUN [sbatch options]: prints the job id
  local run=$1
  shift
  RUN=$run sbatch --parsable "${size[@]}" "$@" "$SRC/jobs/train.sbatch" | cut -d';' -f1
}
finish() {  # finish ID RUN: waits for the job, which must complete
  local st
  st=$(slurm_wait_job "$1" 420) || true
  [ "$st" = COMPLETED ] || { cat "logs/metapo-train-$1.out"; fail "job $1 ($2): $st, expected COMPLETED"; }
}

# Every start of job ID after the first resumed at the step the start before it checkpointed and
# stopped at (after a hang, which stops without one: at the newest checkpoint written before);
# prints "resume at step S" per restart. Also checks run.json and metrics.jsonl.
check_restarts() {
  local id=$1 run=$2 want_restarts=$3
  python3 - "logs/metapo-train-$id.out" "$run" "$id" "$want_restarts" <<'P'
import json, re, sys
log, run, job, want = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
text = open(log).read()
# The log cut into starts at the "metapo-job: ... start K (SLURM_RESTART_COUNT=K-1)" lines.
cuts = [m for m in re.finditer(r"^metapo-job: .* start (\d+) \(SLURM_RESTART_COUNT=(\d+)\)", text, re.M)]
assert len(cuts) == want + 1, f"{len(cuts)} starts in the log, expected {want + 1}"
assert [int(m.group(1)) for m in cuts] == list(range(1, want + 2)), [m.group(0) for m in cuts]
parts = [text[m.start():(cuts[k + 1].start() if k + 1 < len(cuts) else len(text))] for k, m in enumerate(cuts)]
out = []
for k in range(1, len(parts)):
    before, now = parts[k - 1], parts[k]
    r = re.search(r"^resumed from (\S+) at step (\d+)", now, re.M)
    assert r, f"start {k + 1} did not resume"
    step = int(r.group(2))
    assert r.group(1).endswith(f"step_{step:08d}.h5"), r.group(0)
    stop = re.search(r"^stopping at step (\d+) of \d+ on \S+: checkpointed", before, re.M)
    if stop:
        assert step == int(stop.group(1)), f"start {k + 1} resumed at step {step}, start {k} stopped at {stop.group(1)}"
    else:  # no stop line: the newest checkpoint the start before wrote
        written = [int(c) for c in re.findall(r"^checkpoint \S+/step_(\d+)\.h5", before, re.M)]
        assert written and step == max(written), f"start {k + 1} resumed at step {step}, newest checkpoint {written[-1:]}"
    out.append(f"resume at step {step}")
rj = json.load(open(f"{run}/run.json"))
assert rj["restarts"] == want, f"run.json restarts {rj['restarts']}, expected {want}"
sl = rj["slurm"]
assert sl["job_id"] == job and sl["restart_count"] == want and sl["node_list"], sl
ev = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"event":"resumed"' in l]
assert [e["slurm"]["restart_count"] for e in ev] == list(range(1, want + 1)), [e.get("slurm") for e in ev]
print(f"{', '.join(out)}; run.json: restarts {rj['restarts']}, slurm job {sl['job_id']} "
      f"restart_count {sl['restart_count']} on {sl['node_list']}; metrics.jsonl marks {len(ev)} restart(s)")
P
}

# The final parameters, the weight net and every step's metrics equal the reference's.
same_as_reference() {
  local run=$1
  cmp -s "ref/final/model.safetensors" "$run/final/model.safetensors" || fail "$run: final/ differs from the reference"
  cmp -s "ref/metapo.json" "$run/metapo.json" || fail "$run: metapo.json differs from the reference"
  python3 - "$run" <<'P' || fail "$run: metrics.jsonl differs from the reference"
import json, sys
def steps(p):
    drop = ("step_time", "tokens_per_s")
    return [{k: v for k, v in json.loads(l).items() if k not in drop and not k.startswith("time/")}
            for l in open(p) if '"event"' not in l]
a, b = steps("ref/metrics.jsonl"), steps(sys.argv[1] + "/metrics.jsonl")
assert a == b, f"{len(a)} vs {len(b)} lines"
P
  echo "ok: $run: final/, metapo.json and all $STEPS metrics lines byte-identical to the uninterrupted job"
}

# --- 1 and 2: the reference and the time-limit job, side by side.
t0=$(date +%s.%N)
ref=$(submit ref)
if [[ "$CYCLES" == *" tl "* ]]; then
  tl=$(submit tl --time=1 --signal=B:USR1@59)
  slurm_release "$tl"
  # Two lead-signal cycles show it; then the limit is raised so that the rest runs in one start.
  (slurm_log_wait "logs/metapo-train-$tl.out" "metapo-job: .* start 3 " 600 && scontrol update JobId="$tl" TimeLimit=30) \
    >/dev/null 2>&1 &
  raise=$!
fi
finish "$ref" ref
grep -q "metapo-job: .* start 1 (SLURM_RESTART_COUNT=0)" "logs/metapo-train-$ref.out" || fail "no start line"
grep -q "metapo-job: .* metapo train finished (exit 0)" "logs/metapo-train-$ref.out" || fail "no finish line"
[ "$(python3 -c 'import json; print(json.load(open("ref/run.json"))["slurm"]["restart_count"])')" = 0 ] || fail "ref: run.json"
echo "ok: reference job $ref: $STEPS steps uninterrupted in $(since "$t0") s"
if [[ "$CYCLES" == *" tl "* ]]; then
  finish "$tl" tl
  kill "$raise" 2>/dev/null || true
  log="logs/metapo-train-$tl.out"
  n=$(grep -c "^stopping at step [0-9]* of $STEPS on SIGUSR1: checkpointed" "$log" || true)
  [ "$n" -ge 1 ] || { cat "$log"; fail "tl: the run finished before Slurm's USR1 lead fired (make SLURM_TEST_STEPS larger)"; }
  grep -q "DUE TO TIME LIMIT" "$log" && fail "tl: a start reached the time limit"
  stops=$(sed -n 's/^stopping at step \([0-9]*\) of .* on SIGUSR1: checkpointed.*/\1/p' "$log" | paste -sd, -)
  times=$(grep "metapo-job: .* SIGUSR1 received" "$log" | cut -d' ' -f2 | cut -dT -f2 | paste -sd, -)
  r=$(check_restarts "$tl" tl "$n") || fail "tl: the restarts are not as expected"
  echo "ok: --time=1 --signal=B:USR1@59: Slurm's lead signal at $times, checkpoint and stop at steps $stops," \
       "$n requeue(s), finished $(since "$t0") s after submission; $r"
  same_as_reference tl
fi

# --- 3 and 4: scancel --signal=USR1 --full, and a hung rank, side by side.
t0=$(date +%s.%N)
[[ "$CYCLES" == *" sig "* ]] && { sig=$(submit sig); slurm_release "$sig"; }
if [[ "$CYCLES" == *" hang "* ]]; then
  hang=$(EXTRA_ARGS="--hang-timeout 10" MAX_FAILURES=1 submit hang)
  slurm_release "$hang"
fi
if [[ "$CYCLES" == *" sig "* ]]; then
  log="logs/metapo-train-$sig.out"
  slurm_log_wait "$log" '^checkpoint sig/step_00000100\.h5' 300 || fail "sig: no checkpoint at step 100"
  t_sig=$(since "$t0")
  scancel --signal=USR1 --full "$sig"
fi
if [[ "$CYCLES" == *" hang "* ]]; then
  log="logs/metapo-train-$hang.out"
  slurm_log_wait "$log" '^checkpoint hang/step_00000100\.h5' 300 || fail "hang: no checkpoint at step 100"
  victim=$(pgrep -f "^$METAPO train .*--out hang" | tail -1)
  [ -n "$victim" ] || fail "hang: no rank to stop"
  t_stop=$(date +%s.%N)
  kill -STOP "$victim"
  slurm_log_wait "$log" "metapo-job: .* a rank hung \(exit 125" 120 || { cat "$log"; fail "hang: the job did not end as hung"; }
  t_hung=$(since "$t_stop")
  kill -0 "$victim" 2>/dev/null && fail "hang: the stopped rank $victim outlived its start"
  msg=$(grep -m1 "error: rank .* no step completed" "$log") || { cat "$log"; fail "hang: no watchdog message"; }
  echo "$msg" | grep -q "waiting in '[^']*' of step [0-9]*" || fail "hang: the message names no phase: $msg"
  grep -q "requeueing the job as failure 1 of at most 1" "$log" || fail "hang: not requeued as a failure"
  echo "ok: SIGSTOP of rank pid $victim: its job's start ended $t_hung s later (--hang-timeout 10) with exit 125:"
  echo "    ${msg#*error: }"
  # The requeued start resumes from the newest checkpoint; then a plain scancel (SIGTERM to the batch
  # shell and the ranks): they checkpoint, and the script does not requeue.
  slurm_log_wait "$log" "^resumed from hang/step_[0-9]*\.h5 at step [0-9]*" 120 || { cat "$log"; fail "hang: no resume"; }
  slurm_log_wait "$log" "^step +[0-9]+/$STEPS" 60 || fail "hang: no step after the resume"
  resumed=$(sed -n 's/^resumed from \(hang\/step_[0-9]*\.h5\) at step.*/\1/p' "$log")
  scancel "$hang"
  st=$(slurm_wait_job "$hang" 120) || true
  [ "$st" = CANCELLED ] || fail "hang: after scancel the job is $st, expected CANCELLED"
  slurm_log_wait "$log" "metapo-job: .* checkpointed after SIGTERM \(exit 124\): not requeued" 30 ||
    { cat "$log"; fail "hang: no checkpoint after SIGTERM"; }
  last=$(cat hang/latest)
  r=$(check_restarts "$hang" hang 1) || fail "hang: the restart is not as expected"
  echo "ok: requeued as failure 1, resumed from $resumed (the newest periodic checkpoint); then scancel:" \
       "SIGTERM, checkpoint $last, exit 124, not requeued ($st); $r"
fi
if [[ "$CYCLES" == *" sig "* ]]; then
  finish "$sig" sig
  log="logs/metapo-train-$sig.out"
  grep -q "metapo-job: .* SIGUSR1 received" "$log" || fail "sig: the batch shell did not log the signal"
  stop=$(sed -n 's/^stopping at step \([0-9]*\) of .* on SIGUSR1: checkpointed; exit status 124.*/\1/p' "$log" | head -1)
  [ -n "$stop" ] || fail "sig: no checkpoint-and-stop line"
  grep -q "metapo-job: .* checkpointed (exit 124): requeueing the job (requeue 1)" "$log" || fail "sig: no requeue line"
  t_back=$(grep "metapo-job: .* start 2 " "$log" | cut -d' ' -f2 | cut -dT -f2)
  r=$(check_restarts "$sig" sig 1) || fail "sig: the restart is not as expected"
  echo "ok: scancel --signal=USR1 --full ${t_sig} s after submission: checkpoint and stop at step $stop, exit 124," \
       "requeued, start 2 at $t_back, $r"
  same_as_reference sig
fi
echo "ok: all Slurm cycles in $(since "$t_start") s"
