#!/usr/bin/env bash
# The distributed pair statistics table and MpiComm (tests/test_pair_stats_mpi.cpp) under 1, 2 and 3
# ranks: every run must reproduce the one-process table bit for bit, fetch any ids from any rank, and
# reload a table saved at its rank count under every smaller one (3 -> 2 included).
source "$(dirname "$0")/common.sh"
BIN="$(dirname "$METAPO")/tests/test_pair_stats_mpi"
[ -x "$BIN" ] || fail "test program not built: $BIN"
for np in 1 2 3; do
  rc=0
  timeout 120 $MPIRUN "$np" --tag-output "$BIN" --gtest_brief=1 >"out$np.txt" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || { cat "out$np.txt"; fail "test_pair_stats_mpi on $np ranks (exit $rc)"; }
  grep -q "SKIPPED" "out$np.txt" && { cat "out$np.txt"; fail "tests skipped on $np ranks: MPI not detected"; }
  n=$(grep -c "PASSED" "out$np.txt" || true)
  [ "$n" -eq "$np" ] || { cat "out$np.txt"; fail "expected PASSED from each of $np ranks, got $n"; }
  echo "ok: pair statistics and MpiComm on $np rank(s)"
done
