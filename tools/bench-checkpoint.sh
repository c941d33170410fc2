#!/usr/bin/env bash
# Checkpoint write and read speed against dd on the same disk, in the same run, interleaved.
#
#   tools/bench-checkpoint.sh [--ranks "1 2 4"] [--reps 3] [--dir DIR] [--metapo BIN]
#
# A model of 56M parameters (vocab 32000, hidden 512, 8 layers: 677 MB of training state, parameters
# and both AdamW moments in fp32) trains 2 steps with a checkpoint after each under `mpirun -np R`
# (pure data parallelism, so the ZeRO-1 shards of the moments come from every rank and the model
# from one replica), then a run resumes from the first checkpoint. For each rep and rank count, in
# turn: `dd` writes a file of the checkpoint's size (bs=4M, conv=fsync, as the checkpoint is fsynced
# before its rename) and reads it back; the metapo run writes its checkpoints (the "checkpoint ...
# (MiB, s)" lines: the non-finite scan, the collective HDF5 write, close, fsync, rename and `latest`)
# and the resume reads one (the "resumed from ... in S s" line: open, every dataset and checksum).
# Reads are cold when the page cache can be dropped (root), else warm for both. DIR (default: a
# temporary directory under build/) must be on the disk you want to measure.
# Prints one table: MB/s per rank count (median over reps) and the ratio to dd's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ranks="1 2 4" reps=3 dir="" metapo="$here/../build/metapo"
while (($#)); do
  case "$1" in
    --ranks) ranks="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --metapo) metapo="$2"; shift 2 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "bench-checkpoint: unknown option $1" >&2; exit 2 ;;
  esac
done
metapo="$(cd "$(dirname "$metapo")" && pwd)/$(basename "$metapo")"
[ -x "$metapo" ] || { echo "bench-checkpoint: $metapo not built" >&2; exit 2; }
if [ -z "$dir" ]; then mkdir -p "$here/../build"; dir=$(mktemp -d "$here/../build/bench-ckpt.XXXX"); trap 'rm -rf "$dir"' EXIT; fi
mkdir -p "$dir" && cd "$dir"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_orte_tmpdir_base="$dir"
export HDF5_USE_FILE_LOCKING=FALSE
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
opts=(--model big --data d.h5 --batch-size 4 --micro-batch 1 --max-steps 2 --save-every 1 --keep 0 --lr 1e-5)

declare -A W R DW DR
for ((rep = 1; rep <= reps; ++rep)); do
  for np in $ranks; do
    rm -rf run res
    OMP_NUM_THREADS=1 mpirun -np "$np" "$metapo" sft "${opts[@]}" --out run >run.log 2>&1 || { tail run.log; exit 1; }
    bytes=$(stat -c %s run/step_00000001.h5)
    # metapo write: the better of its two checkpoints (the first can pay for page-cache warm-up).
    w=$(awk '/^checkpoint /{gsub(/[(,]/, ""); print $3 * 1048576 / $5 / 1e6}' run.log | sort -g | tail -1)
    rm -f run/step_00000002.h5 && rm -rf run/final && echo step_00000001.h5 >run/latest
    state=$(cold)
    OMP_NUM_THREADS=1 mpirun -np "$np" "$metapo" sft "${opts[@]}" --out run --resume auto >res.log 2>&1 || { tail res.log; exit 1; }
    secs=$(sed -n 's/^resumed from .* in \([0-9.]*\) s$/\1/p' res.log)
    r=$(echo "$bytes / $secs / 1000000" | bc -l)
    # dd: the same bytes, the same disk, right after.
    t0=$(date +%s.%N); dd if=/dev/zero of=dd.bin bs=4M count=$((bytes / 4194304 + 1)) conv=fsync status=none; t1=$(date +%s.%N)
    dw=$(echo "($bytes) / ($t1 - $t0) / 1000000" | bc -l)
    cold >/dev/null
    t0=$(date +%s.%N); dd if=dd.bin of=/dev/null bs=4M status=none; t1=$(date +%s.%N)
    dr=$(echo "($bytes) / ($t1 - $t0) / 1000000" | bc -l)
    rm -f dd.bin
    W[$np]+="$w " R[$np]+="$r " DW[$np]+="$dw " DR[$np]+="$dr "
    printf "rep %d, %d rank(s): checkpoint %.0f MB; write %.0f MB/s (dd %.0f), read %.0f MB/s (dd %.0f, %s)\n" \
      "$rep" "$np" "$(echo "$bytes / 1000000" | bc -l)" "$w" "$dw" "$r" "$dr" "$state"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
echo
echo "| ranks | write MB/s | dd write MB/s | write / dd | read MB/s | dd read MB/s | read / dd |"
echo "|---|---|---|---|---|---|---|"
for np in $ranks; do
  w=$(echo "${W[$np]}" | median) dw=$(echo "${DW[$np]}" | median) r=$(echo "${R[$np]}" | median) dr=$(echo "${DR[$np]}" | median)
  printf "| %d | %.0f | %.0f | %.2f | %.0f | %.0f | %.2f |\n" "$np" "$w" "$dw" "$(echo "$w / $dw" | bc -l)" "$r" "$dr" \
    "$(echo "$r / $dr" | bc -l)"
done
echo "(medians of $reps reps; checkpoint state: parameters + exp_avg + exp_avg_sq in fp32, plus /state)"
