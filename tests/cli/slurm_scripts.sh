#!/usr/bin/env bash
# The batch scripts in jobs/ (docs/slurm.md): every one parses (bash -n) and passes shellcheck, and
# jobs/submit.sh refuses a missing input with one line before it submits anything. No Slurm needed.
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
  echo "ok: lib.sh: $(grep -m1 metapo-job out.txt | sed 's/.*: job [^:]*: //')"
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
