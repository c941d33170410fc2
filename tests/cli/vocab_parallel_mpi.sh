#!/usr/bin/env bash
# Vocab-parallel embedding and log-probs (tests/test_vocab_parallel_mpi.cpp) under 1, 2 and 3 ranks:
# every rank holds its vocabulary shard; log-probs, dh, row dots, the gathered dW / dE (padding zero)
# and the embedding equal the single-rank kernels on the full matrices.
source "$(dirname "$0")/common.sh"
BIN="$(dirname "$METAPO")/tests/test_vocab_parallel_mpi"
[ -x "$BIN" ] || fail "test program not built: $BIN"
for np in 1 2 3; do
  rc=0
  timeout 120 $MPIRUN "$np" --tag-output "$BIN" --gtest_brief=1 >"out$np.txt" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || { cat "out$np.txt"; fail "test_vocab_parallel_mpi on $np ranks (exit $rc)"; }
  grep -q "SKIPPED" "out$np.txt" && { cat "out$np.txt"; fail "tests skipped on $np ranks: MPI not detected"; }
  n=$(grep -c "PASSED" "out$np.txt" || true)
  [ "$n" -eq "$np" ] || { cat "out$np.txt"; fail "expected PASSED from each of $np ranks, got $n"; }
  # the largest errors measured (the figure is the third field from the end of an [err] line)
  { grep "\[err\]" "out$np.txt" || true; } | awk '{print $(NF-2), $0}' | sort -g | tail -n 2 | cut -d' ' -f2-
  echo "ok: vocab-parallel embedding and log-probs on $np rank(s)"
done
