# Sourced by the CLI tests: $1 = metapo binary, $2 = source dir. Each test works in its own temp dir.
set -euo pipefail
METAPO="$1"
SRC="$2"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# Each test's own OpenMPI session directory: concurrent mpiruns (ctest -j) otherwise share
# /tmp/ompi.<host>.<uid>, and two jobs whose 16-bit job family (a hash of the mpirun PID) collides
# remove each other's files, which ends one with "exiting improperly".
export OMPI_MCA_orte_tmpdir_base="$WORK"
MPIRUN="$SRC/tools/mpirun-retry.sh --oversubscribe -np"
fail() { echo "FAIL: $*"; exit 1; }
# expect_error "substring" cmd...: the command must exit non-zero, print exactly one stderr line
# containing the substring (plus nothing else from metapo), and finish within 60 s.
expect_error() {
  local want="$1"; shift
  local rc=0
  timeout 60 "$@" >out.txt 2>err.txt || rc=$?
  [ "$rc" -ne 0 ] || fail "expected failure: $*"
  [ "$rc" -ne 124 ] || fail "hung: $*"
  grep -q -- "$want" err.txt || { cat err.txt; fail "stderr lacks '$want': $*"; }
  local n; n=$(grep -c "error:" err.txt)
  [ "$n" -ge 1 ] || fail "no error line: $*"
  echo "ok: $(grep -m1 'error:' err.txt)"
}
# run_mpi_gtest NAME NP...: runs the gtest program NAME (built next to metapo, under tests/) under
# mpirun with each rank count; every rank must print PASSED and no test may be skipped (a skip means
# the program did not see MPI).
run_mpi_gtest() {
  local name="$1"; shift
  local bin; bin="$(dirname "$METAPO")/tests/$name"
  [ -x "$bin" ] || fail "test program not built: $bin"
  local np rc n
  for np in "$@"; do
    rc=0
    timeout 120 $MPIRUN "$np" --tag-output "$bin" --gtest_brief=1 >"out$np.txt" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] || { cat "out$np.txt"; fail "$name on $np ranks (exit $rc)"; }
    grep -q "SKIPPED" "out$np.txt" && { cat "out$np.txt"; fail "tests skipped on $np ranks: MPI not detected"; }
    n=$(grep -c "PASSED" "out$np.txt" || true)
    [ "$n" -eq "$np" ] || { cat "out$np.txt"; fail "expected PASSED from each of $np ranks, got $n"; }
    echo "ok: $name on $np rank(s)"
  done
}
# same_ref_logps A.h5 B.h5 WHAT: every pair split's reference log-probs in B agree with A's within 1e-4.
same_ref_logps() {
  local split f
  for split in train val test; do
    for f in ref_logp_chosen ref_logp_rejected; do
      h5diff -d 1e-4 "$1" "$2" /$split/$f /$split/$f >/dev/null || fail "$3: /$split/$f differs from 1 rank"
    done
  done
  echo "ok: $3 agrees with 1 rank within 1e-4"
}
