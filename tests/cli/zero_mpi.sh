#!/usr/bin/env bash
# ZeRO-1 (tests/test_zero_mpi.cpp) under 1, 2 and 3 ranks: sharded AdamW equals AdamW on the summed
# gradient, parameters identical on every rank, padding zero, state split, volumes as the formula.
source "$(dirname "$0")/common.sh"
BIN="$(dirname "$METAPO")/tests/test_zero_mpi"
[ -x "$BIN" ] || fail "test program not built: $BIN"
for np in 1 2 3; do
  rc=0
  timeout 120 $MPIRUN "$np" --tag-output "$BIN" --gtest_brief=1 >"out$np.txt" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || { cat "out$np.txt"; fail "test_zero_mpi on $np ranks (exit $rc)"; }
  grep -q "SKIPPED" "out$np.txt" && { cat "out$np.txt"; fail "tests skipped on $np ranks: MPI not detected"; }
  n=$(grep -c "PASSED" "out$np.txt" || true)
  [ "$n" -eq "$np" ] || { cat "out$np.txt"; fail "expected PASSED from each of $np ranks, got $n"; }
  echo "ok: ZeRO-1 on $np rank(s)"
done
