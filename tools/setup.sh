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

# cuDNN's fused attention (src/kernels/cuda/attention_cudnn.cpp) is built against the cuDNN front end,
# header-only, from PyPI's nvidia-cudnn-frontend wheel (not committed): fetched once into
# .cudnn-frontend/include, with the CUDA toolkit's cudnn*.h beside it, so that folder is all a GPU machine
# without them needs (tools/gpu-check.sh). Without PyPI the CUDA attention is the plain kernel only.
fe_dir=.cudnn-frontend/include
if [ -x /usr/local/cuda/bin/nvcc ] && [ ! -f "$fe_dir/cudnn_frontend.h" ]; then
  tmp=$(mktemp -d)
  if python3 -m pip download -q --no-deps --only-binary=:all: nvidia-cudnn-frontend==1.32.0 -d "$tmp" >/dev/null 2>&1 &&
     python3 - "$tmp" "$fe_dir" <<'P'
import glob, os, shutil, sys, zipfile
tmp, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(tmp + "/*.whl")[0]) as z:
    for n in z.namelist():
        if n.startswith("include/") and not n.endswith("/"):
            dst = os.path.join(tmp, "x", n)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with z.open(n) as f, open(dst, "wb") as g:
                shutil.copyfileobj(f, g)
for h in glob.glob("/usr/local/cuda/include/cudnn*.h"):
    shutil.copy(h, os.path.join(tmp, "x", "include"))
os.makedirs(os.path.dirname(out), exist_ok=True)
shutil.rmtree(out, ignore_errors=True)
shutil.move(os.path.join(tmp, "x", "include"), out)
P
  then
    echo "setup: cuDNN front end headers in $fe_dir"
    # configure again, so cmake/cudnn_attention.cmake finds them
    [ ! -f build/CMakeCache.txt ] || cmake -S . -B build >build/cmake.log 2>&1 || { cat build/cmake.log; exit 1; }
  else
    echo "setup: could not fetch nvidia-cudnn-frontend from PyPI: CUDA attention on the plain kernel only"
  fi
  rm -rf "$tmp"
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
