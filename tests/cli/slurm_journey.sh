#!/usr/bin/env bash
# The whole journey as a chain of Slurm jobs (jobs/submit.sh: sft -> precompute-ref -> train ->
# eval + generate, each afterok the one before) on a private single-node cluster, 2 CPU ranks per
# job, the tiny model on the sort task, launched with the scripts' mpirun variant (LAUNCHER=mpirun;
# tests/cli/slurm_requeue.sh uses srun). Every job must complete, in order, and the eval job's
# figures must equal `metapo eval` run directly on the trained model.
source "$(dirname "$0")/common.sh"
source "$SRC/tests/slurm/cluster.sh"
slurm_test_start

"$METAPO" synth --task sort --seed 5 --flip 0.2 --n-train 64 --n-val 16 --n-test 32 --n-sft 64 --out d.h5 >/dev/null
"$METAPO" init --preset tiny --out init --seed 4 >/dev/null
cat >journey.ini <<'INI'
[sft]
epochs = 1
batch-size = 16
micro-batch = 8
lr = 1e-3
seed = 1
[precompute-ref]
micro-batch = 16
[train]
weighting = metapo
epochs = 1
batch-size = 16
micro-batch = 8
lr = 5e-5
seed = 1
[eval]
split = test
[generate]
split = test
max-new-tokens = 16
limit = 8
INI
out=$(BASE_MODEL=init DATA=d.h5 RUNS=runs CONFIG="$WORK/journey.ini" LAUNCHER=mpirun \
      SBATCH_ARGS="--nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0" bash "$SRC/jobs/submit.sh")
echo "$out" | sed 's/^/    /'
ids=$(echo "$out" | sed -n 's/^[a-z-]*: *job \([0-9]*\).*/\1/p')
[ "$(echo "$ids" | wc -l)" -eq 4 ] || fail "expected 4 job ids from submit.sh"
for id in $ids; do
  st=$(slurm_wait_job "$id" 400) || true
  [ "$st" = COMPLETED ] || { cat logs/*-"$id".out; fail "job $id: $st, expected COMPLETED"; }
done
# In order: each job started after the one before it ended.
prev_end=0
for id in $ids; do
  s=$(date -d "$(scontrol -o show job "$id" | sed -n 's/.* StartTime=\([^ ]*\).*/\1/p')" +%s)
  e=$(date -d "$(scontrol -o show job "$id" | sed -n 's/.* EndTime=\([^ ]*\).*/\1/p')" +%s)
  [ "$s" -ge "$prev_end" ] || fail "job $id started before the job it depends on ended"
  prev_end=$e
done
grep -q "metapo-job: .* start 1 .* tasks: mpirun -np 2 " logs/metapo-train-*.out || fail "the jobs did not launch through mpirun"
echo "ok: sft, precompute-ref, train and eval jobs completed in dependency order ($(echo $ids | tr ' ' ',')), launched by mpirun"
[ -f runs/sft/final/config.json ] && [ -f runs/dpo/final/config.json ] || fail "no final/ models"
grep -q '"slurm"' runs/dpo/run.json || fail "run.json has no slurm record"
ev_id=$(echo "$ids" | tail -1)
ev_line=$(grep -m1 '^{' "logs/metapo-eval-$ev_id.out") || { cat "logs/metapo-eval-$ev_id.out"; fail "no eval result"; }
direct=$($MPIRUN 2 "$METAPO" eval --config "$WORK/journey.ini" --model runs/dpo/final --data d.h5 | grep -m1 '^{')
python3 - "$ev_line" "$direct" <<'P' || fail "the eval job's figures differ from a direct metapo eval"
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
keys = [k for k in a if not k.endswith("seconds") and "per_s" not in k]
assert keys and all(a[k] == b[k] for k in keys), (a, b)
print(f"ok: the eval job's {len(keys)} figures equal a direct metapo eval (test preference accuracy {a['pref_acc']:.3f} over {a['n']:.0f} pairs)")
P
gen=$(ls runs/dpo/generations-"$ev_id".jsonl 2>/dev/null) || fail "no generations file"
[ "$(wc -l <"$gen")" -eq 8 ] || fail "$gen: expected 8 lines"
echo "ok: $gen: 8 greedy answers"
