#!/usr/bin/env bash
# The seams of docs/architecture.md hold in the sources: no CPU kernel called outside the kernels (the
# model, generation, parallel code and optimizers go through ops/ops.h), no MPI outside comm/ (everything
# else talks through Comm), and no OpenMP loop outside the kernels but the file readers and writers (io/).
source "$(dirname "$0")/common.sh"
cd "$SRC"
[ -d src/model ] && [ -d include/metapo ] || fail "$SRC is not the source tree"
check() {  # what pattern allowed-prefix-regex
  local what=$1 pattern=$2 allowed=$3 hits
  hits=$(grep -rnE "$pattern" src include | grep -vE "$allowed" || true)
  [ -z "$hits" ] || { echo "$hits"; fail "$what outside its backend"; }
  echo "ok: no $what outside ${allowed//\\/}"
}
check "cpu:: call" 'cpu::' '^(src/kernels/|include/metapo/kernels/)'
check "MPI call or header" 'MPI_|<mpi\.h>' '^(src/comm/|include/metapo/comm/)'
check "OpenMP loop" '#pragma omp' '^(src/kernels/|include/metapo/kernels/|src/io/)'
