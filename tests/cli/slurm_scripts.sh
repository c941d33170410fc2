#!/usr/bin/env bash
# The batch scripts in jobs/ (docs/slurm.md): every one parses (bash -n) and passes shellcheck, and
# jobs/submit.sh refuses a missing input with one line before it submits anything; jobs/lib.sh ends
# the job (done, requeue, requeue as a failure, give up) as its table of exit statuses says. No Slurm needed.
source "$(dirname "$0")/common.sh"
command -v shellcheck >/dev/null || fail "shellcheck not installed (tools/setup.sh installs it)"
n=0
for f in "$SRC"/jobs/*; do
  bash -n "$f" || fail "bash -n $f"
  (cd "$SRC" && shellcheck -x "jobs/$(basename "$f")") || fail "shellcheck $f"
  n=$((n + 1))
done
[ "$n" -ge 6 ] || fail "only $n scripts in jobs/"
echo "ok: $n scripts in jobs/ pass bash -n and shellcheck ($(shellcheck --version | sed -n 's/^version: //p'))"
# submit.sh checks its inputs before calling sbatch (a stand-in sbatch records any call).
mkdir -p fakebin
printf '#!/bin/sh\necho called >>"%s/sbatch.calls"\necho 1\n' "$WORK" >fakebin/sbatch
chmod +x fakebin/sbatch
expect_submit_error() {
  local want=$1
  shift
  local rc=0
  env PATH="$WORK/fakebin:$PATH" "$@" bash "$SRC/jobs/submit.sh" >out.txt 2>err.txt || rc=$?
  [ "$rc" -ne 0 ] || fail "submit.sh accepted: $*"
  grep -q -- "$want" err.txt || { cat err.txt; fail "submit.sh: stderr lacks '$want'"; }
  [ ! -e sbatch.calls ] || fail "submit.sh called sbatch before refusing"
  echo "ok: submit.sh: $(head -1 err.txt)"
}
mkdir -p model && touch data.h5
expect_submit_error "set BASE_MODEL" env -u BASE_MODEL DATA="$WORK/data.h5"
expect_submit_error "BASE_MODEL=$WORK/nope: not a directory" BASE_MODEL="$WORK/nope" DATA="$WORK/data.h5"
expect_submit_error "DATA=$WORK/none.h5: no such file" BASE_MODEL="$WORK/model" DATA="$WORK/none.h5"
expect_submit_error "CONFIG=$WORK/x.ini: no such file" CONFIG="$WORK/x.ini" BASE_MODEL="$WORK/model" DATA="$WORK/data.h5"
# jobs/lib.sh checks its limits and the status directory before it launches anything: a non-number
# would make every limit test fail (a job requeued forever), a missing directory would make every
# run read as a failed launch.
expect_launch_error() {
  local want=$1
  shift
  local rc=0
  (export METAPO="$METAPO" LAUNCHER=mpirun "$@"; source "$SRC/jobs/lib.sh"; metapo_launch --version) >out.txt 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || { cat out.txt; fail "lib.sh exited $rc, expected 2: $*"; }
  grep -q -- "$want" out.txt || { cat out.txt; fail "lib.sh: output lacks '$want'"; }
  ! grep -q "start 1" out.txt || fail "lib.sh launched before refusing: $*"
  echo "ok: lib.sh: $(grep -m1 metapo-job out.txt | sed 's/^metapo-job: [^ ]* job [^:]*: //')"
}
expect_launch_error "MAX_REQUEUES=abc: not a non-negative integer" MAX_REQUEUES=abc
expect_launch_error "MAX_FAILURES=-1: not a non-negative integer" MAX_FAILURES=-1
expect_launch_error "METAPO_STATUS_DIR=$WORK/nodir: not a writable directory" METAPO_STATUS_DIR="$WORK/nodir"
# LAUNCHER=mpirun binds each rank to its --cpus-per-task cores (PE=), as srun --cpu-bind=cores does,
# not to one core with OMP_NUM_THREADS threads piled on it; metapo's threads follow the mask.
if command -v mpirun >/dev/null; then
  cat > "$WORK/mask.sh" <<'S'
#!/usr/bin/env bash
echo "mask $(sed -n 's/^Cpus_allowed_list:\s*//p' /proc/self/status) omp $OMP_NUM_THREADS"
S
  chmod +x "$WORK/mask.sh"
  (export METAPO="$WORK/mask.sh" LAUNCHER=mpirun SLURM_NTASKS=1 SLURM_NTASKS_PER_NODE=1 SLURM_CPUS_PER_TASK=2 \
     METAPO_STATUS_DIR="$WORK"; unset OMP_NUM_THREADS; source "$SRC/jobs/lib.sh"; metapo_env; metapo_launch_cmd
   echo "launch ${LAUNCH[*]}"; "${LAUNCH[@]}" "$METAPO") >mask.txt 2>&1 || true
  grep -q "ppr:1:node:PE=2" mask.txt || { cat mask.txt; fail "lib.sh: mpirun does not map PE=cpus-per-task"; }
  grep -q "^mask 0-1 omp 2" mask.txt || { cat mask.txt; fail "lib.sh: the mpirun rank is not bound to its 2 cores"; }
  echo "ok: lib.sh: LAUNCHER=mpirun binds a rank to its --cpus-per-task cores ($(grep '^mask' mask.txt))"
fi
# What lib.sh does with each exit status (its header's table), with stand-ins for srun (runs the
# command), scontrol (records each call; the job's Comment from a file) and metapo (leaves the given
# status in METAPO_STATUS_FILE, as metapo's rank 0 does, and exits with it).
cat > fakebin/srun <<'S'
#!/usr/bin/env bash
while [[ "$1" == -* ]]; do shift; done
exec "$@"
S
cat > fakebin/scontrol <<S
#!/bin/sh
echo "\$*" >>"$WORK/scontrol.calls"
[ "\$1 \$2" = "-o show" ] && echo "JobId=7 JobName=t Comment=\$(cat "$WORK/comment" 2>/dev/null || echo '(null)') Priority=1"
exit 0
S
cat > fake-metapo <<'S'
#!/usr/bin/env bash
[ -n "$FAKE_NO_STATUS" ] || echo "$FAKE_RC" >"$METAPO_STATUS_FILE"
exit "$FAKE_RC"
S
chmod +x fakebin/srun fakebin/scontrol fake-metapo
expect_finish() {  # RC COMMENT SAYS CALLS [VAR=value...]: the job's log line and its scontrol calls
  local rc=$1 comment=$2 says=$3 calls=$4 got=0
  shift 4
  rm -f scontrol.calls comment
  [ -n "$comment" ] && echo "$comment" >comment
  (export PATH="$WORK/fakebin:$PATH" METAPO="$WORK/fake-metapo" LAUNCHER=srun SRUN_ARGS="" SLURM_JOB_ID=7 \
     METAPO_STATUS_DIR="$WORK" FAKE_RC="$rc" "$@"
   source "$SRC/jobs/lib.sh"; metapo_run train) >out.txt 2>&1 || got=$?
  local want=$rc
  [ -n "${FAKE_NO_STATUS_WANT:-}" ] && want=$FAKE_NO_STATUS_WANT
  [ "$got" -eq "$want" ] || { cat out.txt; fail "lib.sh after exit $rc: the job exited $got, expected $want"; }
  grep -q -- "$says" out.txt || { cat out.txt; fail "lib.sh after exit $rc: the log lacks '$says'"; }
  [ "$(tr '\n' ';' <scontrol.calls 2>/dev/null)" = "$calls" ] ||
    fail "lib.sh after exit $rc: scontrol calls '$(tr '\n' ';' <scontrol.calls 2>/dev/null)', expected '$calls'"
  echo "ok: lib.sh: exit $rc${comment:+ ($comment)}: $(grep -m1 -- "$says" out.txt | sed 's/^metapo-job: [^ ]* job [^:]*: //')"
}
expect_finish 0 "" "metapo train finished (exit 0)" ""
expect_finish 124 "" "checkpointed (exit 124): requeueing the job (requeue 1)" "requeue 7;"
expect_finish 124 "" "requeued 100 times (MAX_REQUEUES): giving up" "" SLURM_RESTART_COUNT=100
expect_finish 2 "" "failed (exit 2): not requeued" ""
expect_finish 75 "" "another start still held the run directory (exit 75, METAPO_LOCK_WAIT_S): requeueing the job as failure 1 of at most 3" \
  "-o show job 7;update JobId=7 Comment=metapo-failures:1;requeue 7;"
expect_finish 125 "metapo-failures:2" "a rank hung (exit 125, --hang-timeout): requeueing the job as failure 3 of at most 3" \
  "-o show job 7;update JobId=7 Comment=metapo-failures:3;requeue 7;"
expect_finish 75 "metapo-failures:3" "already failed 3 times (MAX_FAILURES): giving up" "-o show job 7;"
FAKE_NO_STATUS_WANT=134 expect_finish 0 "" "the ranks did not start (a failed launch): requeueing the job as failure 1" \
  "-o show job 7;update JobId=7 Comment=metapo-failures:1;requeue 7;" FAKE_NO_STATUS=1
