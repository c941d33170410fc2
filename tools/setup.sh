#!/usr/bin/env bash
# Installs what metapo needs on a Debian machine (only what is missing) and builds Release into build/.
# Idempotent: a second run installs nothing and rebuilds only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(cmake g++ make libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools
      libboost-program-options-dev libopenblas-dev libopenblas-openmp-dev nlohmann-json3-dev
      libgtest-dev
      # The Slurm tests (tests/cli/slurm_*.sh) start a private single-node cluster; shellcheck
      # checks the batch scripts in jobs/.
      slurm-wlm munge shellcheck)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
if [ ! -f build/CMakeCache.txt ]; then
  mkdir -p build
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >build/cmake.log 2>&1 || { cat build/cmake.log; exit 1; }
fi
if ! cmake --build build -j"$jobs" >build/build.log 2>&1; then
  grep -E -B2 -A6 "error" build/build.log | head -60
  echo "setup: build failed; full log in build/build.log"
  exit 1
fi
echo "setup: build/metapo is up to date"
