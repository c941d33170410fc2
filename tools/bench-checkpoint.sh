#!/usr/bin/env bash
# Checkpoint write and read speed against dd on the same disk, in the same run, interleaved.
#
#   tools/bench-checkpoint.sh [--ranks "1 2 4"] [--reps 3] [--dir DIR] [--metapo BIN]
#
# A model of 56M parameters (vocab 32000, hidden 512, 8 layers: 677 MB of training state, parameters
# and both AdamW moments in fp32) trains K steps (--checkpoints, default 3) with a checkpoint after
# each under `mpirun -np R` (pure data parallelism, so the ZeRO-1 shards of the moments come from
# every rank and the model from one replica), then a run resumes from the last. For each rep and
# rank count, in turn: the metapo run writes its K checkpoints (the "checkpoint ... (MiB, s)" lines:
# the non-finite scan, the HDF5 write with its checksums, close, fsync, rename and `latest`); `dd`
# writes K files of the same size (bs=4M, conv=fsync, as the checkpoint is fsynced before its
# rename); the resume reads one checkpoint (the "resumed from ... in S s" line: open, every dataset
# and checksum) and dd reads one file.
#
# Page cache on a virtual machine: a write into pages the host has taken back (a balloon with free
# page reporting returns pages that stayed free for a few seconds) runs 3-5x slower than into pages
# freed just before, so which kind a write gets decides it, for dd as for metapo; a process that has
# just exited leaves several GB of the fast kind for ~5 s. Both are measured on the host's pages
# here: nothing is deleted while they write (the run keeps every checkpoint), and dd waits --pause
# seconds (default 8) before each file, so that it does not write into what the metapo run just
# freed. On a machine without such a balloon the pause changes nothing. Figures are medians over the K
# writes of a rep, then over reps.
#
# Reads are cold when the page cache can be dropped (root), else warm for both.
#
# Then, per rank count, build/tools/bench_checkpoint_io writes the same arrays through the checkpoint
# file layer in one process, interleaved with dd, each write (its and dd's) right after a priming
# write and delete of a file of the same size: both into warm page cache, the I/O path alone.
#
# DIR (default: a temporary directory under build/) must be on the disk you want to measure.
# Prints two tables: MB/s per rank count and the ratio to dd's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ranks="1 2 4" reps=3 k=3 pause=8 dir="" metapo="$here/../build/metapo"
while (($#)); do
  case "$1" in
    --ranks) ranks="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --checkpoints) k="$2"; shift 2 ;;
    --pause) pause="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --metapo) metapo="$2"; shift 2 ;;
    -h|--help) sed -n 2,33p "$0"; exit 0 ;;
    *) echo "bench-checkpoint: unknown option $1" >&2; exit 2 ;;
  esac
done
# Before any work (a non-number would give an empty table after the model is built).
for v in reps k; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "bench-checkpoint: --${v/k/checkpoints} ${!v}: not a positive whole number" >&2; exit 2; }
done
[[ "$pause" =~ ^[0-9]+$ ]] || { echo "bench-checkpoint: --pause $pause: not a whole number of seconds" >&2; exit 2; }
[ -n "${ranks// /}" ] || { echo "bench-checkpoint: --ranks is empty" >&2; exit 2; }
for np in $ranks; do
  [[ "$np" =~ ^[1-9][0-9]*$ ]] || { echo "bench-checkpoint: --ranks: '$np' is not a positive whole number" >&2; exit 2; }
done
metapo="$(cd "$(dirname "$metapo")" && pwd)/$(basename "$metapo")"
io_bench="$(dirname "$metapo")/tools/bench_checkpoint_io"
[ -x "$io_bench" ] || { echo "bench-checkpoint: $io_bench not built" >&2; exit 2; }
[ -x "$metapo" ] || { echo "bench-checkpoint: $metapo not built" >&2; exit 2; }
if [ -z "$dir" ]; then mkdir -p "$here/../build"; dir=$(mktemp -d "$here/../build/bench-ckpt.XXXX"); trap 'rm -rf "$dir"' EXIT; fi
# shellcheck source=tools/out-dir.sh
source "$here/out-dir.sh"
claim_out --dir "$dir" big.ini  # its run/, res/ and big.ini are replaced: never a directory of the user's
cd "$dir"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_orte_tmpdir_base="$dir"
export HDF5_USE_FILE_LOCKING=FALSE
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
cold() { sync; { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null && echo cold || echo warm; }

cat >big.ini <<'INI'
[model]
model_type = llama
vocab_size = 32000
hidden_size = 512
intermediate_size = 1408
num_hidden_layers = 8
num_attention_heads = 8
num_key_value_heads = 4
head_dim = 64
max_position_embeddings = 512
rms_norm_eps = 1e-5
rope_theta = 10000
tie_word_embeddings = false
bos_token_id = 1
eos_token_id = 2
INI
"$metapo" init --preset big.ini --out big >/dev/null
"$metapo" synth --task sort --seed 1 --n-train 64 --n-val 16 --n-test 16 --n-sft 16 --out d.h5 >/dev/null
"$metapo" precompute-ref --model big --data d.h5 --micro-batch 8 >/dev/null
opts=(--model big --data d.h5 --batch-size 4 --micro-batch 1 --max-steps "$k" --save-every 1 --keep 0 --lr 1e-5)

declare -A W R DW DR
for ((rep = 1; rep <= reps; ++rep)); do
  for np in $ranks; do
    rm -rf run res
    OMP_NUM_THREADS=1 mpirun -np "$np" "$metapo" sft "${opts[@]}" --out run >run.log 2>&1 || { tail run.log; exit 1; }
    last=$(printf 'run/step_%08d.h5' "$k")
    bytes=$(stat -c %s "$last")
    w=$(awk '/^checkpoint /{gsub(/[(,]/, ""); print $3 * 1048576 / $5 / 1e6}' run.log | median)
    rm -rf run/final
    state=$(cold)
    OMP_NUM_THREADS=1 mpirun -np "$np" "$metapo" sft "${opts[@]}" --out run --resume auto >res.log 2>&1 || { tail res.log; exit 1; }
    secs=$(sed -n 's/^resumed from .* in \([0-9.]*\) s$/\1/p' res.log)
    r=$(echo "$bytes / $secs / 1000000" | bc -l)
    rm -rf run
    # dd: the same bytes, the same disk, right after; K files, kept until the last is written.
    dws=""
    for ((j = 1; j <= k; ++j)); do
      sleep "$pause"
      t0=$(date +%s.%N); dd if=/dev/zero of="dd$j.bin" bs=4M count=$((bytes / 4194304 + 1)) conv=fsync status=none; t1=$(date +%s.%N)
      dws+="$(echo "($bytes) / ($t1 - $t0) / 1000000" | bc -l) "
    done
    dw=$(echo "$dws" | median)
    cold >/dev/null
    t0=$(date +%s.%N); dd if="dd$k.bin" of=/dev/null bs=4M status=none; t1=$(date +%s.%N)
    dr=$(echo "($bytes) / ($t1 - $t0) / 1000000" | bc -l)
    rm -f dd*.bin
    W[$np]+="$w " R[$np]+="$r " DW[$np]+="$dw " DR[$np]+="$dr "
    printf "rep %d, %d rank(s): checkpoint %.0f MB; write %.0f MB/s (dd %.0f), read %.0f MB/s (dd %.0f, %s)\n" \
      "$rep" "$np" "$(echo "$bytes / 1000000" | bc -l)" "$w" "$dw" "$r" "$dr" "$state"
  done
done
echo
echo "| ranks | write MB/s | dd write MB/s | write / dd | read MB/s | dd read MB/s | read / dd |"
echo "|---|---|---|---|---|---|---|"
for np in $ranks; do
  w=$(echo "${W[$np]}" | median) dw=$(echo "${DW[$np]}" | median) r=$(echo "${R[$np]}" | median) dr=$(echo "${DR[$np]}" | median)
  printf "| %d | %.0f | %.0f | %.2f | %.0f | %.0f | %.2f |\n" "$np" "$w" "$dw" "$(echo "$w / $dw" | bc -l)" "$r" "$dr" \
    "$(echo "$r / $dr" | bc -l)"
done
echo "(the training run's checkpoints, pages the host took back for both; medians of $reps reps, each the median of $k"
echo " writes; checkpoint state: parameters + exp_avg + exp_avg_sq in fp32, plus /state)"
echo
declare -A IW IDW
for np in $ranks; do
  OMP_NUM_THREADS=1 mpirun -np "$np" "$io_bench" big.ini . "$reps" >io.log 2>&1 || { tail io.log; exit 1; }
  grep '^rep ' io.log
  read -r _ _ _ IW[$np] IDW[$np] < <(grep '^summary ' io.log)
done
echo
echo "| ranks | write MB/s (warm pages) | dd write MB/s (warm pages) | write / dd |"
echo "|---|---|---|---|"
for np in $ranks; do
  printf "| %d | %.0f | %.0f | %.2f |\n" "$np" "${IW[$np]}" "${IDW[$np]}" "$(echo "${IW[$np]} / ${IDW[$np]}" | bc -l)"
done
echo "(the checkpoint file layer in one process, interleaved with dd; medians of $reps reps)"
