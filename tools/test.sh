#!/usr/bin/env bash
# Every test: sets up (tools/setup.sh), then runs the CTest suite (unit, golden, CLI and MPI tests).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
# The Python tests (tools/prepare_data.py) need h5py, pytest and the Hugging Face tokenizer stack (no
# torch). Installed when missing and PyPI answers; otherwise those tests report "skipped".
if ! python3 -c "import h5py, pytest, transformers, tokenizers" 2>/dev/null; then
  python3 -m pip install -q h5py pytest transformers tokenizers >/dev/null 2>&1 ||
    echo "test.sh: could not install h5py/pytest/transformers; the Python tests will be skipped"
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
cd build
ctest --output-on-failure --timeout 900 "$@"
