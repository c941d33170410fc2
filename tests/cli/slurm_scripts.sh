#!/usr/bin/env bash
# The batch scripts in jobs/ (docs/slurm.md): every one parses (bash -n) and passes shellcheck, and
# jobs/submit.sh refuses a missing input with one line before it submits anything. No Slurm needed.
source "$(dirname "$0")/common.sh"
command -v shellcheck >/dev/null || fail "shellcheck not installed (tools/setup.sh installs it)"
n=0
for f in "$SRC"/jobs/*; do
  bash -n "$f" || fail "bash -n $f"
  (cd "$SRC" && shellcheck -x "jobs/$(basename "$f")") || fail "shellcheck $f"
  n=$((n + 1))
done
[ "$n" -ge 6 ] || fail "only $n scripts in jobs/"
echo "ok: $n scripts in jobs/ pass bash -n and shellcheck ($(shellcheck --version | sed -n 's/^version: //p'))"
# submit.sh checks its inputs before calling sbatch (a stand-in sbatch records any call).
mkdir -p fakebin
printf '#!/bin/sh\necho called >>"%s/sbatch.calls"\necho 1\n' "$WORK" >fakebin/sbatch
chmod +x fakebin/sbatch
expect_submit_error() {
  local want=$1
  shift
  local rc=0
  env PATH="$WORK/fakebin:$PATH" "$@" bash "$SRC/jobs/submit.sh" >out.txt 2>err.txt || rc=$?
  [ "$rc" -ne 0 ] || fail "submit.sh accepted: $*"
  grep -q -- "$want" err.txt || { cat err.txt; fail "submit.sh: stderr lacks '$want'"; }
  [ ! -e sbatch.calls ] || fail "submit.sh called sbatch before refusing"
  echo "ok: submit.sh: $(head -1 err.txt)"
}
mkdir -p model && touch data.h5
expect_submit_error "set BASE_MODEL" env -u BASE_MODEL DATA="$WORK/data.h5"
expect_submit_error "BASE_MODEL=$WORK/nope: not a directory" BASE_MODEL="$WORK/nope" DATA="$WORK/data.h5"
expect_submit_error "DATA=$WORK/none.h5: no such file" BASE_MODEL="$WORK/model" DATA="$WORK/none.h5"
expect_submit_error "CONFIG=$WORK/x.ini: no such file" CONFIG="$WORK/x.ini" BASE_MODEL="$WORK/model" DATA="$WORK/data.h5"
