#!/usr/bin/env bash
# Writes that fill the disk (docs/training.md "A full disk"), on small tmpfs mounts (as root, or in a
# user namespace; the test skips, exit 77, where neither can mount one). Each command ends with exit status 1 and one error line naming the file and
# the cause; no hang, no crash at exit, nothing half-written under a final name, no .partial or
# .reserve file left, and the run resumes once there is room:
# - the checkpoint file when a transfer fails, under 1, 2 and 3 ranks (tests/test_disk_full_mpi.cpp);
# - train (1 and 2 ranks): a checkpoint the file system has no room for is refused before it is written;
# - synth, precompute-ref: the dataset file (precompute-ref leaves the original as it was);
# - metrics.jsonl: a line that cannot be appended stops the run, and no torn line stays.
# Not root: in a user namespace of its own, where mounting a tmpfs is allowed (where the kernel lets
# users make one).
if [ "$(id -u)" != 0 ] && [ -z "${METAPO_IN_USERNS:-}" ] && unshare -rm true 2>/dev/null; then
  METAPO_IN_USERNS=1 exec unshare -rm bash "$0" "$@"
fi
source "$(dirname "$0")/common.sh"
export HDF5_USE_FILE_LOCKING=FALSE
mkdir t
if ! mount -t tmpfs -o size=1M tmpfs t 2>/dev/null; then
  echo "SKIP: cannot mount a tmpfs here (root, or a user namespace, is needed)"
  exit 77
fi
umount t
trap 'umount "$WORK/t" 2>/dev/null || true; rm -rf "$WORK"' EXIT
mnt() { mount -t tmpfs -o "size=$1" tmpfs t; }
no_leftovers() {
  local left; left=$(find t -name '*.partial*' -o -name '*.reserve' -o -name '*.tmp')
  [ -z "$left" ] || fail "$1 left $left"
}

# --- The checkpoint file: a transfer that fails (no room check before it).
for np in 1 2 3; do
  mnt 6M
  METAPO_FULL_DIR="$WORK/t" run_mpi_gtest test_disk_full_mpi "$np"
  no_leftovers "the checkpoint file on $np ranks"
  umount t
done

"$METAPO" synth --task sort --seed 1 --n-train 128 --n-val 16 --n-test 16 --n-sft 32 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 1 >/dev/null

# --- train: the second checkpoint (9 MB each) does not fit in 20 MB beside the first.
run="--model init --data d.h5 --batch-size 8 --max-steps 6 --save-every 2 --keep 0"
for np in 1 2; do
  mnt 20M
  launch=(); [ "$np" -eq 1 ] || launch=($MPIRUN "$np")
  rc=0
  timeout 120 "${launch[@]}" "$METAPO" train $run --out t/run >out.txt 2>err.txt || rc=$?
  [ "$rc" -eq 1 ] || { cat err.txt; fail "train on $np rank(s) on a full disk: exit $rc, expected 1"; }
  grep -q "t/run: no room for the checkpoint of step 4 (step_00000004.h5): it needs about .* MiB and the file system has .* MiB free; the newest checkpoint is t/run/step_00000002.h5" err.txt ||
    { cat err.txt; fail "no line naming the checkpoint and the room"; }
  [ "$(cat t/run/latest)" = step_00000002.h5 ] || fail "latest does not name the last whole checkpoint"
  no_leftovers "train on $np rank(s)"
  echo "ok: train on $np rank(s): $(grep -m1 -o 'no room.*MiB free' err.txt)"
  cp -a t/run saved && umount t && mnt 64M && mv saved t/run  # (a remount to resize fails in a user namespace)
  timeout 120 "${launch[@]}" "$METAPO" train $run --out t/run --resume auto >out.txt 2>err.txt ||
    { cat err.txt; fail "the resume after freeing room failed"; }
  grep -q "resumed from t/run/step_00000002.h5" out.txt || { cat out.txt; fail "did not resume from step 2"; }
  [ -f t/run/final/model.safetensors ] || fail "the resumed run wrote no final/"
  echo "ok: train on $np rank(s) resumed from step 2 once there was room"
  umount t
done

# --- synth and precompute-ref: the dataset file (about 300 KB: 64K fails a data write, 160K and 240K
# the metadata's flush at the close).
for room in 64K 160K 240K; do
  mnt "$room"
  rc=0
  timeout 60 "$METAPO" synth --task sort --seed 1 --n-train 128 --out t/s.h5 >out.txt 2>err.txt || rc=$?
  [ "$rc" -eq 1 ] || { cat err.txt; fail "synth on a full disk ($room): exit $rc, expected 1"; }
  grep -q "t/s.h5: .*(No space left on device)" err.txt || { cat err.txt; fail "synth ($room): the line lacks the cause"; }
  [ "$(grep -c . err.txt)" -eq 1 ] || { cat err.txt; fail "synth ($room): more than one line"; }
  [ ! -e t/s.h5 ] || fail "synth left t/s.h5"
  no_leftovers "synth ($room)"
  echo "ok: synth in $room: $(cat err.txt)"
  umount t
done
size=$(stat -c %s d.h5)
mnt "$(( (size * 3 / 2) / 1024 ))K"  # the dataset and half a copy
cp d.h5 t/d.h5
rc=0
timeout 60 "$METAPO" precompute-ref --model init --data t/d.h5 >out.txt 2>err.txt || rc=$?
[ "$rc" -eq 1 ] || { cat err.txt; fail "precompute-ref on a full disk: exit $rc, expected 1"; }
grep -q "t/d.h5: cannot copy to t/d.h5.partial (No space left on device)" err.txt ||
  { cat err.txt; fail "precompute-ref: the line lacks the cause"; }
cmp d.h5 t/d.h5 || fail "precompute-ref changed its input on a full disk"
no_leftovers precompute-ref
echo "ok: precompute-ref: $(cat err.txt)"
umount t

# --- metrics.jsonl: no checkpoints, a file system that holds a few pages.
mnt 16K
rc=0
timeout 120 "$METAPO" train --model init --data d.h5 --batch-size 8 --max-steps 40 --save-every 0 --track-pairs 0 --out t/run \
  >out.txt 2>err.txt || rc=$?
[ "$rc" -eq 1 ] || { cat err.txt; fail "train with metrics.jsonl on a full disk: exit $rc, expected 1"; }
grep -q "t/run/metrics.jsonl: cannot append (No space left on device)" err.txt || { cat err.txt; fail "metrics: no cause"; }
python3 - t/run/metrics.jsonl <<'P'
import json, sys
lines = open(sys.argv[1]).read().split("\n")
assert lines[-1] == "", "metrics.jsonl ends inside a line"
rows = [json.loads(l) for l in lines[:-1]]
assert rows and all("step" in r or "event" in r for r in rows), rows[:3]
print(f"ok: metrics.jsonl: {len(rows)} whole lines, none torn")
P
echo "ok: metrics: $(grep -m1 -o 'error: .*' err.txt)"
umount t
echo "PASS"
