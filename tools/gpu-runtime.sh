#!/usr/bin/env bash
# Makes .gpu-runtime/: the built metapo binary with every library it needs that a bare Linux lacks, so
# that the real binary runs on the lent GPU machine (which has the CUDA toolkit and PyTorch but no MPI,
# HDF5, Boost or OpenBLAS) when the device call carries this folder (docs/gpu.md, "Running metapo
# itself"). Run it here, on Debian/Ubuntu, after building metapo with CUDA; no root install is needed
# (`apt-get download` and `dpkg -x` only).
#
# What it does:
#   1. resolves the packages: the owner (`dpkg -S`) of every library that `ldd` finds for metapo and for
#      OpenMPI's singleton helpers (a lone `metapo` starts `orted` to be its MPI runtime; its PMIx plugin
#      needs libpmix), minus libc6 (libc, libm, libresolv, ld-linux: any Linux has them, and a libc must
#      match the loader that runs it); libstdc++ and libgcc_s are kept, since an image may lack them or
#      hold older ones. Plus openmpi-common (OpenMPI's help texts) and openmpi-bin (orted, mpirun and the
#      system MCA settings: no OFI, openib or UCX transports; to which this script adds `plm = isolated`,
#      since OpenMPI's default starts even the local daemon through ssh, which the device lacks).
#   2. downloads the installed versions (`apt-get download`, into $BUILD/gpu-runtime-debs, kept for the
#      next run) and unpacks them (`dpkg -x`) into a fresh tree;
#   3. prunes it: documentation, man pages, locales; every MCA plugin whose libraries are not in the tree
#      (InfiniBand, OFI, UCX, PSM: none of them on a one-GPU machine); every library nothing in the tree
#      needs; OpenMPI's other programs;
#   4. copies $BUILD/metapo in as bin/metapo and writes the launcher `.gpu-runtime/metapo`, which sets
#      LD_LIBRARY_PATH (its libraries first, then the caller's: cuBLASLt is found there), OPAL_PREFIX,
#      OPAL_SYSCONFDIR, PMIx's folders and an empty hwloc plugin folder (hwloc's plugins would bring X11
#      and OpenCL) for the tree wherever it lies, and runs bin/metapo;
#   5. checks that it runs from the tree alone: `metapo init` under `env -i` with LD_DEBUG=libs, every
#      library it loads from the tree or from libc6; and, where `unshare` works (root or user
#      namespaces), init, synth, sft, precompute-ref, train and eval inside a chroot that holds only
#      libc6's libraries, /bin/sh and the tree (set CHECK=0 to skip the checks);
#      (with /proc, /sys and /dev: hwloc reads the topology there);
#   6. prints its size, and fails if it is over LIMIT_MIB (default 60: the device tool carries 64 MiB).
# The largest library, OpenBLAS (36 MB: every x86 CPU's kernels), is stored xz-compressed
# (lib...so.xz, about 4 MB) and unpacked by the launcher on its first run, which alone brings the tree
# under the limit.
#
#   tools/gpu-runtime.sh                 # from build/metapo into .gpu-runtime/
#   BUILD=build-rel tools/gpu-runtime.sh # another build folder
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
RT=.gpu-runtime
LIMIT_MIB=${LIMIT_MIB:-60}
CHECK=${CHECK:-1}
die() { echo "gpu-runtime: error: $*" >&2; exit 1; }
say() { echo "gpu-runtime: $*"; }

bin=$BUILD/metapo
[ -x "$bin" ] || die "no $bin: build it first: cmake -S . -B $BUILD -DCMAKE_BUILD_TYPE=Release && cmake --build $BUILD -j2 --target metapo"
grep -q 'libcublasLt\.so' "$bin" ||
  die "$bin was built without CUDA (CMake found no nvcc): configure with /usr/local/cuda/bin on PATH and rebuild"
for tool in apt-get dpkg dpkg-query ldd objdump xz; do
  command -v "$tool" >/dev/null || die "$tool not found: this script needs a Debian or Ubuntu machine with xz-utils"
done
orted=$(command -v orted) || die "orted not found: install openmpi-bin (the MPI metapo was built with)"
orterun=$(dirname "$orted")/orterun
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
mca_dir=$(dirname "$(readlink -f "$(ldd "$bin" | awk '$1 == "libmpi.so.40" {print $3}')")")/openmpi/lib/openmpi3
[ -f "$mca_dir/mca_pmix_ext3x.so" ] || die "$mca_dir/mca_pmix_ext3x.so not found: metapo is not linked with Debian's OpenMPI 4"

# owner FILE: the package that installed FILE (as ldd names it, or the file it links to; merged /usr
# means dpkg may know it under /lib or /usr/lib).
owner() {
  local real p
  real=$(readlink -f "$1")
  for p in "$1" "$real" "${real#/usr}" "/usr$real"; do
    dpkg -S "$p" 2>/dev/null | head -1 | cut -d: -f1 && return 0
  done
  die "no package owns $1 (ldd found it; a library installed by hand cannot be carried)"
}
# deps FILE...: the libraries ldd resolves for each file ("not found" is fatal here, on the build machine).
deps() {
  local f
  for f in "$@"; do
    ! ldd "$f" | grep -q "not found" || die "ldd $f: $(ldd "$f" | grep 'not found' | head -1 | xargs)"
    ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// {print $3}'
  done
}

# --- 1. The packages.
needs=$(deps "$bin" "$orted" "$orterun" "$mca_dir/mca_pmix_ext3x.so" | sort -u)
packages=$( { for f in $needs "$orted" /usr/share/openmpi/help-mpi-runtime.txt; do owner "$f"; done; } |
            sort -u | grep -vx libc6)
# --- 2. Download the installed versions; unpack into a fresh tree.
debs=$BUILD/gpu-runtime-debs
mkdir -p "$debs"
stage=$BUILD/gpu-runtime-stage
rm -rf "$stage" && mkdir -p "$stage"
: >"$stage/MANIFEST"
# cached PACKAGE VERSION: the downloaded .deb of that version, if any.
cached() {
  local d
  for d in "$debs/${1}_"*.deb; do
    [ -f "$d" ] && [ "$(dpkg-deb -f "$d" Version)" = "$2" ] && { echo "$d"; return; }
  done
  true
}
for p in $packages; do
  # The installed version; if the archive no longer has it (a binNMU since), the candidate: same ABI.
  v=$(dpkg-query -W -f='${Version}' "$p:$(dpkg --print-architecture)" 2>/dev/null || dpkg-query -W -f='${Version}' "$p")
  cand=$(apt-cache policy "$p" | awk '$1 == "Candidate:" {print $2}')
  deb=$(cached "$p" "$v")
  [ -n "$deb" ] || deb=$(cached "$p" "$cand")
  if [ -z "$deb" ]; then
    { (cd "$debs" && apt-get download -q "$p=$v") || (cd "$debs" && apt-get download -q "$p=$cand"); } \
      >"$BUILD/gpu-runtime-apt.log" 2>&1 ||
      die "apt-get download $p ($v or $cand) failed: $(grep -m1 '^E:' "$BUILD/gpu-runtime-apt.log"); try apt-get update"
    deb=$(cached "$p" "$v")
    [ -n "$deb" ] || deb=$(cached "$p" "$cand")
  fi
  dpkg -x "$deb" "$stage"
  echo "$p $(dpkg-deb -f "$deb" Version) (installed here: $v)" >>"$stage/MANIFEST"
done
say "$(wc -l <"$stage/MANIFEST") packages unpacked (list: $RT/MANIFEST)"

# --- 3. Prune.
lib=usr/lib/$multiarch
rm -rf "$stage"/usr/share/{doc,man,locale,lintian,gdb,gcc,bug,info,doc-base} "$stage"/usr/include "$stage/$lib/pkgconfig"
find "$stage" \( -name '*.a' -o -name '*.la' \) -delete
# The directories the loader searches, in the launcher's order.
libdirs="$lib $lib/openblas-openmp $lib/pmix2/lib lib/$multiarch"
stage_path() { local d out=; for d in $libdirs; do out=$out${out:+:}$stage/$d; done; echo "$out"; }
# outside FILE: the libraries FILE would load from outside the tree, libc6's aside.
libc6_files=$(dpkg -L libc6 | grep '\.so' | xargs -n1 basename | sort -u)
outside() {
  LD_LIBRARY_PATH=$(stage_path) ldd "$1" | awk -v s="$stage/" '$2 == "=>" && index($3, s) != 1 {print $1}' |
    grep -vxF "$libc6_files" || true
}
mca=$stage/$lib/openmpi/lib/openmpi3
dropped=
for plugin in "$mca"/*.so "$stage/$lib"/pmix2/lib/pmix/*.so; do
  # OpenSHMEM's plugins (liboshmem) are of no use to an MPI program.
  if [ -n "$(outside "$plugin")" ] || LD_LIBRARY_PATH=$(stage_path) ldd "$plugin" | grep -q liboshmem; then
    dropped="$dropped $(basename "$plugin" .so)"
    rm "$plugin"
  fi
done
say "dropped the plugins whose libraries a one-GPU machine does not need:${dropped}"
find "$stage/usr/bin" -mindepth 1 -maxdepth 1 ! -name orted ! -name orterun ! -name mpirun ! -name ompi_info -exec rm -rf {} +
rm -rf "$stage/usr/sbin" "$stage/sbin" "$stage/bin"
# The libraries something in the tree needs: metapo, the programs, the plugins.
mkdir -p "$stage/bin"
cp "$bin" "$stage/bin/metapo"
echo "bin/metapo from $bin ($(stat -c %y "$bin" | cut -d. -f1); source at $(git rev-parse --short HEAD 2>/dev/null || echo '?'))" >>"$stage/MANIFEST"
needed=$(for f in "$stage/bin/metapo" "$stage/usr/bin/orted" "$stage/usr/bin/orterun" "$stage/usr/bin/ompi_info" \
                  "$mca"/*.so "$stage/$lib"/pmix2/lib/pmix/*.so; do
           LD_LIBRARY_PATH=$(stage_path) ldd "$f" | awk '$2 == "=>" {print $3}' | xargs -r readlink -f
         done | sort -u)
while read -r f; do
  case $f in "$mca"/*|"$stage/$lib"/pmix2/lib/pmix/*) continue ;; esac
  grep -qxF "$(readlink -f "$f")" <<<"$needed" || rm "$f"
done < <(find "$stage" -type f -name '*.so*')
find "$stage" -xtype l -delete
find "$stage" -depth -type d -empty -delete
for f in "$stage/bin/metapo" "$stage/usr/bin/orted"; do
  [ -z "$(outside "$f")" ] || die "$f would still load $(outside "$f" | xargs) from outside the tree"
done
# OpenMPI's system settings (Debian's: no OFI, openib or UCX) come from the tree, not /etc.
[ -f "$stage/etc/openmpi/openmpi-mca-params.conf" ] || die "openmpi-bin's etc/openmpi/openmpi-mca-params.conf missing"
# The singleton's daemon starts through the plm framework, whose default (rsh) insists on an ssh or rsh
# program even for the local node: the device image and a bare container have none. This tree serves one
# machine.
cat >>"$stage/etc/openmpi/openmpi-mca-params.conf" <<'EOF'

# tools/gpu-runtime.sh: start processes on this machine only (plm rsh needs ssh, which a device lacks).
plm = isolated
EOF
# The newest glibc symbol version anything in the tree asks for: the device's glibc must be at least that.
glibc=$(find "$stage" -type f \( -name '*.so*' -o -path '*/bin/*' \) -exec objdump -T {} + 2>/dev/null |
        grep -o 'GLIBC_2\.[0-9]*' | sort -uV | tail -1)
echo "needs glibc >= ${glibc#GLIBC_} (the loader and libc6 are the machine's own)" >>"$stage/MANIFEST"
# PMIx's settings name its plugin folder absolutely; the launcher names ours (PMIX_PKGLIBDIR).
sed -i 's/^mca_base_component_path/# (set by the launcher) &/' "$stage/$lib/pmix2/share/pmix-mca-params.conf"
# OpenBLAS, compressed: the launcher unpacks it once.
blas=$(readlink -f "$stage/$lib/openblas-openmp/libopenblas.so.0")
xz -T2 -6 "$blas"

# --- 4. The launcher.
cat >"$stage/metapo" <<EOF
#!/bin/sh
# Runs bin/metapo with the libraries, OpenMPI and PMIx of this folder (made by tools/gpu-runtime.sh).
# The caller's LD_LIBRARY_PATH comes after this folder's libraries: cuBLASLt is found there.
case \$0 in */*) R=\${0%/*} ;; *) R=. ;; esac
R=\$(cd "\$R" && pwd)
L=\$R/$lib
blas=\$L/openblas-openmp/$(basename "$blas")
if [ ! -f "\$blas" ]; then
  xz -dkc "\$blas.xz" >"\$blas.\$\$" 2>/dev/null ||
    python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())' "\$blas.xz" >"\$blas.\$\$" ||
    { echo "\$R/metapo: cannot unpack \$blas.xz (neither xz nor python3 works)" >&2; exit 127; }
  mv -f "\$blas.\$\$" "\$blas"
fi
export LD_LIBRARY_PATH="\$L:\$L/openblas-openmp:\$L/pmix2/lib:\$R/lib/$multiarch\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export OPAL_PREFIX="\$R/usr" OPAL_SYSCONFDIR="\$R/etc/openmpi"
export PMIX_SYSCONFDIR="\$L/pmix2/share" PMIX_PKGLIBDIR="\$L/pmix2/lib/pmix" PMIX_PKGDATADIR="\$L/pmix2/share/pmix"
export HWLOC_PLUGINS_PATH="\$L/hwloc"
exec "\$R/bin/metapo" "\$@"
EOF
chmod +x "$stage/metapo"
rm -rf "$RT" && mv "$stage" "$RT"

# --- 5. Checks: from the tree alone.
if [ "$CHECK" = 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  run_env() { env -i PATH=/usr/bin:/bin HOME="$tmp" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
                OMPI_MCA_orte_tmpdir_base="$tmp" "$@"; }
  run_env LD_DEBUG=libs LD_DEBUG_OUTPUT="$tmp/ld" "$RT/metapo" init --preset configs/presets/tiny.ini \
    --out "$tmp/init" >"$tmp/init.log" 2>&1 || { cat "$tmp/init.log"; die "$RT/metapo init failed under env -i"; }
  # The loader's log of each process; the launcher's own helpers (dirname, xz, mv) aside.
  loaded=$(for f in "$tmp"/ld.*; do
             grep -qE 'initialize program: .*(metapo|orted)$' "$f" && awk '/calling init:/ {print $NF}' "$f"
           done | sort -u)
  [ -n "$loaded" ] || die "no loader log of metapo (LD_DEBUG=libs): cannot check where its libraries come from"
  foreign=$(grep -vF "$PWD/$RT/" <<<"$loaded" | while read -r f; do
              grep -qxF "$(basename "$f")" <<<"$libc6_files" || echo "$f"; done)
  [ -z "$foreign" ] || die "metapo loaded from outside $RT: $(echo $foreign)"
  say "checked: metapo init under env -i loads $(grep -cF "$PWD/$RT/" <<<"$loaded") libraries from $RT (orted too), the others from libc6 ($(grep -vF "$PWD/$RT/" <<<"$loaded" | xargs -n1 basename | xargs))"
  # Real root needs no user namespace; anyone else maps to root in one. A new PID namespace lets /proc mount.
  ns="-m -p -f"; [ "$(id -u)" = 0 ] || ns="-r $ns"
  if unshare $ns true 2>/dev/null; then
    # A root with libc6's libraries, /bin/sh and the tree (bind-mounted at /rt), nothing else: a metapo that
    # needed any other system file fails here.
    root=$tmp/root
    mkdir -p "$root"/{rt,proc,sys,dev,tmp,work,bin,lib64,lib/$multiarch}
    dpkg -L libc6 | grep -E "/lib/$multiarch/[^/]*\.so" | while read -r f; do cp -L "$f" "$root/lib/$multiarch/"; done
    cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
    cp -L /bin/sh "$root/bin/sh"
    # The launcher's helpers for its first run (unpacking OpenBLAS), with their libraries: any Linux has them.
    for t in xz mv; do
      cp -L "$(command -v $t)" "$root/bin/"
      for f in $(ldd "$(command -v $t)" | awk '$2 == "=>" {print $3}'); do cp -nL "$f" "$root/lib/$multiarch/"; done
    done
    cp configs/presets/tiny.ini "$root/work/"
    rm -f "$RT/$lib/openblas-openmp/$(basename "$blas")"  # the launcher's unpacking, checked too
    cat >"$root/work/run.sh" <<'EOF'
set -e
cd /work
export PATH=/bin OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_orte_tmpdir_base=/tmp HOME=/tmp HDF5_USE_FILE_LOCKING=FALSE
m=/rt/metapo
$m init --preset tiny.ini --out init --seed 2
$m synth --task sort --seed 3 --flip 0.2 --n-train 64 --n-val 16 --n-test 16 --n-sft 64 --out d.h5
c="--batch-size 8 --micro-batch 2 --max-steps 3 --lr 1e-3 --warmup-steps 1"
$m sft --model init --data d.h5 --out sft $c
$m precompute-ref --model sft/final --data d.h5
$m train --model sft/final --data d.h5 --out dpo $c
$m train --model sft/final --data d.h5 --out meta $c --weighting metapo --meta-gate 0 --meta-val-batch 8
$m eval --model dpo/final --data d.h5
EOF
    mount_run="mount --bind $PWD/$RT $root/rt && mount -t proc proc $root/proc && mount --rbind /dev $root/dev && mount --rbind /sys $root/sys && chroot $root /bin/sh /work/run.sh"
    if unshare $ns sh -c "$mount_run" >"$tmp/chroot.log" 2>&1; then
      say "checked: init, synth, sft, precompute-ref, train (DPO, MetaPO) and eval ran in a chroot holding only libc6's libraries, /bin/sh, xz, mv and $RT"
    else
      tail -20 "$tmp/chroot.log"
      die "the run in a chroot with only libc6 and $RT failed (log above)"
    fi
  else
    say "not checked in a chroot: unshare $ns does not work here (no root, no user namespaces)"
  fi
  rm -f "$RT/$lib/openblas-openmp/$(basename "$blas")"  # carried compressed
fi

# --- 6. Size.
bytes=$(du -sb "$RT" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
say "$RT: $mib MiB ($bytes bytes; $(find "$RT" -type f | wc -l) files; metapo $(( $(stat -c %s "$RT/bin/metapo") / 1048576 )) MiB); $(grep '^needs' "$RT/MANIFEST")"
[ "$mib" -le "$LIMIT_MIB" ] || die "$RT is $mib MiB, over LIMIT_MIB=$LIMIT_MIB (the device tool carries 64 MiB in all)"
say "carry it: device run with carry [\"$RT\"], command: PART=cli tools/gpu-check.sh (docs/gpu.md)"
