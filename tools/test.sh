#!/usr/bin/env bash
# Every test: sets up (tools/setup.sh), then runs the CTest suite (unit, golden, CLI and MPI tests).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
cd build
ctest --output-on-failure --timeout 900 "$@"
