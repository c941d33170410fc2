# shellcheck shell=bash
# jobs/lib.sh: what the batch scripts in jobs/ share; sourced, not run. docs/slurm.md explains it.
#
# Variables it reads (all optional; a batch script sets its own on top):
#   METAPO_HOME   the metapo checkout (default: the directory sbatch was called from)
#   METAPO        the binary (default: $METAPO_HOME/build/metapo)
#   LAUNCHER      srun (default: srun --mpi=pmix, one rank per task) or mpirun (Open MPI's mpirun
#                 inside the allocation; it starts its daemons through Slurm on the other nodes)
#   SRUN_ARGS     extra srun options (default: --cpu-bind=cores; set empty for none)
#   MPIRUN_ARGS   extra mpirun options (default: --bind-to core:overload-allowed
#                 --map-by ppr:<tasks per node>:node:PE=<cpus per task>, each rank bound to its
#                 --cpus-per-task cores, as srun's --cpu-bind=cores; set empty for none)
#   MAX_REQUEUES  starts after which a clean checkpoint (exit 124) is no longer requeued (default 100);
#                 counted by Slurm (SLURM_RESTART_COUNT), so pre-emptions and failures count too
#   MAX_FAILURES  requeues after a hang (exit 125), a rank killed by a signal or a failed launch
#                 (default 3)
#   METAPO_STATUS_DIR  where metapo's rank 0 leaves its exit status for this script (METAPO_STATUS_FILE;
#                 default: the submit directory, which every node sees); removed once read
#
# metapo's exit status decides what happens to the job (docs/training.md):
#   0    done.
#   124  checkpointed on SIGUSR1 or --max-time, "requeue me": the job is requeued (scontrol requeue)
#        and its next start continues with --resume auto. Not after a SIGTERM the script received
#        itself: that is scancel, a pre-emption (Slurm requeues a pre-empted job on its own) or the
#        time limit, and the job ends.
#   125  a rank's hang watchdog aborted the job (--hang-timeout), or >128: a rank died of a signal
#        (a node failure), or the launcher exited 0 without metapo having run (srun does that when a
#        step fails to launch): requeued as a failure, at most MAX_FAILURES times (counted in the
#        job's Comment field, which survives requeues). Likewise 75: the run directory was still held
#        by another start (a restart while the ranks of a killed launcher are ending).
#   any other: an error that a restart would only repeat (bad input, a bug): the job fails.
#
# Every line this file prints starts with "metapo-job:", so `grep metapo-job: logs/*.out` gives a
# job's history: each start with its restart count, each signal, each exit and requeue.

METAPO_HOME=${METAPO_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
METAPO=${METAPO:-$METAPO_HOME/build/metapo}
LAUNCHER=${LAUNCHER:-srun}
MAX_REQUEUES=${MAX_REQUEUES:-100}
MAX_FAILURES=${MAX_FAILURES:-3}

job_say() { echo "metapo-job: $(date '+%Y-%m-%dT%H:%M:%S') job ${SLURM_JOB_ID:-?}: $*"; }

# The environment every rank inherits.
metapo_env() {
  # One BLAS/OpenMP thread team per rank, as large as its CPUs (sbatch --cpus-per-task).
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  # Checkpoints and datasets are shared by every rank: no POSIX locks on parallel file systems.
  export HDF5_USE_FILE_LOCKING=FALSE
  # Open MPI takes UCX by itself where there is InfiniBand or RoCE (and shared memory inside a
  # node). Per cluster, if at all: OMPI_MCA_pml=ucx to insist on it, UCX_NET_DEVICES=mlx5_0:1 to
  # pick the HCA, UCX_TLS=rc,sm,self to leave out TCP.
  # NCCL (the CUDA backend's collectives): warnings only; the InfiniBand HCAs and the socket
  # interface are per cluster (ibstat, ip link): set NCCL_IB_HCA / NCCL_SOCKET_IFNAME if NCCL picks
  # the wrong ones. Asynchronous error handling lets a failed collective end the job instead of hanging.
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export NCCL_ASYNC_ERROR_HANDLING=${NCCL_ASYNC_ERROR_HANDLING:-1}
  # GPUs: each rank sees its node's GPUs and the CUDA backend takes the one at SLURM_LOCALID, so
  # the eight ranks of a node (one tensor-parallel group with --tp 8) share NVLink.
}

# The launch command for the allocation's tasks, into the array LAUNCH.
metapo_launch_cmd() {
  case "$LAUNCHER" in
    srun)
      # shellcheck disable=SC2206  # SRUN_ARGS is a list of options
      LAUNCH=(srun --mpi=pmix --kill-on-bad-exit=1 ${SRUN_ARGS---cpu-bind=cores}) ;;
    mpirun)
      local per_node=${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE%%(*}}
      # shellcheck disable=SC2206
      LAUNCH=(mpirun -np "${SLURM_NTASKS:-1}" ${MPIRUN_ARGS---bind-to core:overload-allowed --map-by ppr:${per_node:-1}:node:PE=${SLURM_CPUS_PER_TASK:-1}}
              -x OMP_NUM_THREADS -x HDF5_USE_FILE_LOCKING -x NCCL_DEBUG -x NCCL_ASYNC_ERROR_HANDLING) ;;
    *) job_say "LAUNCHER=$LAUNCHER: unknown (srun or mpirun)"; exit 2 ;;
  esac
}

_job_signal=""
_job_child=""
# A signal to the batch shell (sbatch --signal=B:USR1@lead, scancel --signal=USR1 --batch/--full,
# or SIGTERM at pre-emption and the time limit) is passed on to the launcher as SIGUSR1, which srun
# and mpirun forward to every rank: each finishes its step, checkpoints and exits 124.
_job_on_signal() {
  _job_signal="$1"
  job_say "SIG$1 received: asking the ranks to checkpoint and stop (SIGUSR1 to the launcher)"
  [ -n "$_job_child" ] && kill -USR1 "$_job_child" 2>/dev/null
  return 0
}

# The job's failure count, kept in its Comment field (it survives requeues; no file is written).
_job_failures() {
  scontrol -o show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/.* Comment=metapo-failures:\([0-9]*\).*/\1/p'
}

# metapo_launch SUBCOMMAND ARGS...: runs `metapo SUBCOMMAND ARGS...` on the allocation's tasks and
# sets JOB_RC to its exit status. Signals to the batch shell reach the ranks meanwhile.
metapo_launch() {
  # A non-number would make every limit test fail and the job requeue forever.
  local v
  for v in MAX_REQUEUES MAX_FAILURES; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || { job_say "$v=${!v}: not a non-negative integer"; exit 2; }
  done
  # Without its status file every run would read as a failed launch and be requeued.
  local status_dir="${METAPO_STATUS_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}"
  if [ ! -d "$status_dir" ] || [ ! -w "$status_dir" ]; then
    job_say "METAPO_STATUS_DIR=$status_dir: not a writable directory (metapo leaves its exit status there)"
    exit 2
  fi
  metapo_env
  metapo_launch_cmd
  [ -x "$METAPO" ] || { job_say "METAPO=$METAPO: not an executable (build it with tools/setup.sh, or set METAPO)"; exit 2; }
  job_say "start $((${SLURM_RESTART_COUNT:-0} + 1)) (SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}) on" \
          "${SLURM_JOB_NODELIST:-?}, ${SLURM_NTASKS:-1} tasks: ${LAUNCH[*]} $METAPO $*"
  # metapo's rank 0 writes its exit status here: srun exits 0 when a step fails to launch at all.
  export METAPO_STATUS_FILE="$status_dir/.metapo-status-${SLURM_JOB_ID:-$$}"
  rm -f "$METAPO_STATUS_FILE"
  trap '_job_on_signal USR1' USR1
  trap '_job_on_signal TERM' TERM
  "${LAUNCH[@]}" "$METAPO" "$@" &
  _job_child=$!
  JOB_RC=0
  # `wait` returns early when a trapped signal arrives; wait again until the launcher has exited.
  while :; do
    wait "$_job_child"
    JOB_RC=$?
    kill -0 "$_job_child" 2>/dev/null || break
  done
  # Interrupted just as the launcher exited: its status is still there to collect (127: it was not).
  local again=0
  wait "$_job_child" 2>/dev/null || again=$?
  [ "$again" -ne 127 ] && JOB_RC=$again
  trap - USR1 TERM
  _job_child=""
  local reported=""
  _job_launch_failed=0
  [ -f "$METAPO_STATUS_FILE" ] && reported=$(cat "$METAPO_STATUS_FILE")
  rm -f "$METAPO_STATUS_FILE"
  if [ "$JOB_RC" -eq 0 ] && [ -z "$reported" ]; then
    job_say "$LAUNCHER exited 0 but metapo reported no exit status: the ranks did not run (a failed launch)"
    JOB_RC=$((128 + 6)) _job_launch_failed=1  # requeued as a failure
  elif [ "$JOB_RC" -eq 0 ] && [ "$reported" != 0 ]; then
    JOB_RC=$reported
  fi
}

# metapo_finish SUBCOMMAND: ends the batch script as JOB_RC says (see the top of this file).
metapo_finish() {
  local what="metapo $1" restarts=${SLURM_RESTART_COUNT:-0}
  case "$JOB_RC" in
    0)
      job_say "$what finished (exit 0)"
      exit 0 ;;
    124)
      if [ "$_job_signal" = TERM ]; then
        job_say "$what checkpointed after SIGTERM (exit 124): not requeued by this script" \
                "(scancel, a pre-emption that Slurm requeues itself, or the time limit)"
        exit 124
      fi
      if [ "$restarts" -ge "$MAX_REQUEUES" ]; then
        job_say "$what checkpointed (exit 124), but the job was requeued $restarts times (MAX_REQUEUES): giving up"
        exit 124
      fi
      job_say "$what checkpointed (exit 124): requeueing the job (requeue $((restarts + 1)))"
      scontrol requeue "$SLURM_JOB_ID"
      exit 124 ;;  # not reached when the requeue went through: Slurm ends this shell
    *)
      if [ "$JOB_RC" -ne 125 ] && [ "$JOB_RC" -ne 75 ] && [ "$JOB_RC" -le 128 ] && [ -n "$_job_signal" ]; then
        # scancel and pre-emption signal the launcher too: it may end with its own status before the
        # ranks' checkpoint-and-stop is reported. Not an error of the run.
        job_say "$what ended (exit $JOB_RC) after SIG$_job_signal, the launcher stopped with it: not requeued by this" \
                "script (scancel, or a pre-emption that Slurm requeues itself); --resume auto continues from the newest checkpoint"
        exit "$JOB_RC"
      fi
      if [ "$JOB_RC" -ne 125 ] && [ "$JOB_RC" -ne 75 ] && [ "$JOB_RC" -le 128 ]; then
        job_say "$what failed (exit $JOB_RC): not requeued (a restart would repeat the error above)"
        exit "$JOB_RC"
      fi
      local failures why="a rank hung (exit 125, --hang-timeout)"
      failures=$(_job_failures)
      failures=${failures:-0}
      [ "$JOB_RC" -gt 128 ] && why="a rank was killed by signal $((JOB_RC - 128)) (exit $JOB_RC)"
      [ "$JOB_RC" -eq 75 ] && why="another start still held the run directory (exit 75, METAPO_LOCK_WAIT_S)"
      [ "${_job_launch_failed:-0}" = 1 ] && why="the ranks did not start (a failed launch)"
      if [ "$failures" -ge "$MAX_FAILURES" ]; then
        job_say "$what: $why; the job already failed $failures times (MAX_FAILURES): giving up"
        exit "$JOB_RC"
      fi
      job_say "$what: $why: requeueing the job as failure $((failures + 1)) of at most $MAX_FAILURES"
      scontrol update JobId="$SLURM_JOB_ID" Comment="metapo-failures:$((failures + 1))"
      scontrol requeue "$SLURM_JOB_ID"
      exit "$JOB_RC" ;;
  esac
}

# metapo_run SUBCOMMAND ARGS...: metapo_launch, then metapo_finish. Does not return.
metapo_run() {
  metapo_launch "$@"
  metapo_finish "$1"
}

# metapo_args_from_vars --out|--no-out: the options the batch scripts take from variables, into the
# array ARGS (each only when its variable is set; otherwise the INI or metapo's default decides):
#   CONFIG (--config), MODEL (--model), DATA (--data), RUN (--out, with --out), TP (--tp), PP (--pp),
#   EXTRA_ARGS (more options, split on spaces).
metapo_args_from_vars() {
  ARGS=()
  [ -n "${CONFIG:-}" ] && ARGS+=(--config "$CONFIG")
  [ -n "${MODEL:-}" ] && ARGS+=(--model "$MODEL")
  [ -n "${DATA:-}" ] && ARGS+=(--data "$DATA")
  [ -n "${RUN:-}" ] && [ "$1" = --out ] && ARGS+=(--out "$RUN")
  [ -n "${TP:-}" ] && ARGS+=(--tp "$TP")
  [ -n "${PP:-}" ] && ARGS+=(--pp "$PP")
  # shellcheck disable=SC2206  # a list of options
  [ -n "${EXTRA_ARGS:-}" ] && ARGS+=(${EXTRA_ARGS})
  return 0
}
