#!/usr/bin/env bash
# mpirun with its arguments, run a second time when Open MPI 4's launcher loses track of a process
# that exited normally ("mpirun has exited due to process rank N with PID 0 ... exiting improperly",
# open-mpi/ompi#7833 and #12607: a race in the runtime, seen here under heavy load). Everything else,
# failures included, passes through unchanged (stderr reaches the caller when the command ends).
# A TERM or INT (e.g. from `timeout`) is passed on to mpirun.
set -uo pipefail
err=$(mktemp)
pid=
trap 'rm -f "$err"' EXIT
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; exit 143' TERM INT
run() {
  mpirun "$@" 2>"$err" &
  pid=$!
  wait "$pid"
  local rc=$?
  pid=
  cat "$err" >&2
  return "$rc"
}
run "$@"
rc=$?
if [ "$rc" -ne 0 ] && grep -q "with PID 0 on" "$err"; then
  echo "note: Open MPI lost track of a finished process (open-mpi/ompi#7833); running the command again" >&2
  run "$@"
  rc=$?
fi
exit "$rc"
