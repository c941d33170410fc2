# A private single-node Slurm cluster for tests: munged, slurmctld and slurmd run as this user in a
# directory of their own, on free loopback ports, with this machine's CPUs (no cgroups:
# proctrack/linuxproc, task/none; select/cons_tres by CPU). Nothing outside the directory is touched,
# so it runs beside a system Slurm, and two test scripts can each run their own.
#
#   source tests/slurm/cluster.sh
#   slurm_start DIR [CPUS]   # starts the daemons (CPUS: the node's CPU count, default 8, more than
#                            # the machine's cores is fine: ranks oversubscribe as under mpirun)
#                            # and exports SLURM_CONF; returns 1 with a line on stderr saying why
#                            # when Slurm cannot start here (the caller skips)
#   slurm_stop               # stops them (also from an EXIT trap); idempotent
#   slurm_wait_job ID SECS   # waits until job ID has ended (COMPLETED, FAILED, ...); prints its state
#
# The daemons log to DIR/{munged,slurmctld,slurmd}.log; jobs' state lives in DIR/state.

_slurm_dir=""

_slurm_free_port() {  # a TCP port nothing listens on, from the kernel
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

slurm_start() {
  local dir=$1 cpus=${2:-8}
  local why=""
  for b in munged slurmctld slurmd sbatch srun scontrol squeue sacct; do
    command -v "$b" >/dev/null 2>&1 || { echo "slurm: $b not installed (tools/setup.sh installs slurm-wlm and munge)" >&2; return 1; }
  done
  mkdir -p "$dir"/{state,spool,munge,tmp}
  chmod 700 "$dir" "$dir/munge"
  _slurm_dir=$(cd "$dir" && pwd)
  local d=$_slurm_dir node
  node=$(hostname -s)
  # munge: a fresh key and a private socket.
  dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 status=none
  chmod 400 "$d/munge/munge.key"
  munged --force --socket="$d/munge/munge.sock" --key-file="$d/munge/munge.key" --pid-file="$d/munge/munged.pid" \
    --log-file="$d/munged.log" --seed-file="$d/munge/seed" >"$d/munged.out" 2>&1 || {
    echo "slurm: munged would not start: $(tail -1 "$d/munged.out")" >&2; return 1; }
  local ctld_port slurmd_port
  ctld_port=$(_slurm_free_port) slurmd_port=$(_slurm_free_port)
  cat >"$d/slurm.conf" <<CONF
ClusterName=metapo-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=$(id -un)
SlurmdUser=$(id -un)
AuthType=auth/munge
AuthInfo=socket=$d/munge/munge.sock
CredType=cred/munge
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/slurmctld.log
SlurmdLogFile=$d/slurmd.log
TmpFS=$d/tmp
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=pmix
ReturnToService=2
SlurmdParameters=config_overrides
JobRequeue=1
KillWait=10
MinJobAge=600
SchedulerParameters=sched_interval=2
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=4096 State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$d/slurm.conf
  slurmctld -i -f "$SLURM_CONF" >"$d/slurmctld.out" 2>&1 || why="slurmctld would not start: $(tail -1 "$d/slurmctld.out")"
  [ -z "$why" ] && { slurmd -f "$SLURM_CONF" -N "$node" >"$d/slurmd.out" 2>&1 || why="slurmd would not start: $(tail -1 "$d/slurmd.out")"; }
  if [ -z "$why" ]; then
    local t
    for t in $(seq 1 60); do
      sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && return 0
      sleep 0.5
    done
    why="the node did not come up in 30 s ($(sinfo -h -o '%T %E' 2>&1 | head -1); see $d/slurmd.log)"
  fi
  echo "slurm: $why" >&2
  slurm_stop
  return 1
}

slurm_stop() {
  [ -n "$_slurm_dir" ] || return 0
  local d=$_slurm_dir f
  _slurm_dir=""
  for f in slurmd slurmctld munge/munged; do
    [ -f "$d/$f.pid" ] && kill "$(cat "$d/$f.pid")" 2>/dev/null
  done
  # Jobs' processes outlive slurmd under proctrack/linuxproc only until they notice; give it a moment.
  for f in $(seq 1 20); do
    local alive=0
    for p in slurmd slurmctld munge/munged; do [ -f "$d/$p.pid" ] && kill -0 "$(cat "$d/$p.pid")" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.25
  done
  return 0
}

slurm_wait_job() {
  local id=$1 secs=${2:-300} state t
  for ((t = 0; t < secs * 2; ++t)); do
    state=$(scontrol -o show job "$id" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    case "$state" in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED) echo "$state"; return 0 ;;
    esac
    sleep 0.5
  done
  echo "TIMEOUT_WAITING($state)"
  return 1
}

# ---- for the CLI tests (tests/cli/slurm_*.sh, after tests/cli/common.sh) ----------------------------

# slurm_test_start: a cluster in $WORK/cluster for this test, stopped when the test exits; or, when
# Slurm cannot start here, a line saying why and exit 0 (the test is skipped). Exports what the batch
# scripts read (METAPO_HOME, METAPO) and makes logs/ for their --output.
slurm_test_start() {
  if ! slurm_start "$WORK/cluster" 8 2>"$WORK/slurm-start.err"; then
    echo "skipped: Slurm cannot start here: $(sed 's/^slurm: //' "$WORK/slurm-start.err" | head -1)"
    exit 0
  fi
  # KEEP_WORK=1 keeps the test's directory (logs, runs, the cluster's logs) for a look afterwards.
  trap 'slurm_stop; [ -n "${KEEP_WORK:-}" ] && echo "kept $WORK" || rm -rf "$WORK"' EXIT
  export METAPO_HOME="$SRC" METAPO="$METAPO" HDF5_USE_FILE_LOCKING=FALSE
  mkdir -p logs
  echo "ok: a single-node Slurm cluster ($(sinfo -h -o '%c CPUs, %T') on $(hostname -s)) in $WORK/cluster"
}

# slurm_release ID: a requeued job waits ~2 minutes for its begin time (Slurm's delay so the old
# start is cleaned up everywhere: its step ids come again, and a step whose predecessor's PMIx
# socket is still there fails to launch; its job credential was revoked at a one-second resolution,
# and a start within that second is refused). Here it is started once the old start's slurmstepd
# processes are gone and it has waited 3 s. Runs in the background until the job ends; prints nothing.
slurm_release() {
  local id=$1
  (
    local waited=0
    while :; do
      local s
      s=$(scontrol -o show job "$id" 2>/dev/null) || break
      case "$s" in
        *JobState=PENDING*Reason=BeginTime*)
          waited=$((waited + 1))
          if [ "$waited" -ge 6 ] && ! pgrep -f "^slurmstepd: \[$id\." >/dev/null; then
            scontrol update JobId="$id" StartTime=now 2>/dev/null
          fi ;;
        *JobState=COMPLETED*|*JobState=FAILED*|*JobState=CANCELLED*|*JobState=TIMEOUT*) break ;;
        *) waited=0 ;;
      esac
      sleep 0.5
    done
  ) >/dev/null 2>&1 &
}

# slurm_log_wait FILE PATTERN SECS: waits until FILE has a line matching PATTERN (grep -E).
slurm_log_wait() {
  local t
  for ((t = 0; t < $3 * 10; ++t)); do
    grep -qE "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
