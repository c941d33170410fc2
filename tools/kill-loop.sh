#!/usr/bin/env bash
# The kill loop: a `metapo train` run is killed with SIGKILL at random moments -- during steps and
# during checkpoint writes, one rank or the whole job -- and restarted with `--resume auto` each
# time; at the end its final parameters must be byte-identical to an uninterrupted run's, and its
# metrics.jsonl must hold every step once with the uninterrupted run's values (timings aside).
#
#   tools/kill-loop.sh [--kills N] [--np P] [--layout "--tp 2 --pp 2"] [--steps S] [--weighting W]
#                      [--metapo BIN] [--work DIR] [--seed S]
#
# Defaults: 20 kills, 8 ranks as DP 2 x TP 2 x PP 2, MetaPO, 300 steps of the tiny model on the
# built-in sort task, a checkpoint every 2 steps. Prints one line per kill and a summary; exits
# non-zero when a restart fails to resume or the final parameters differ. The CTest variant
# (tests/cli/checkpoint_signals.sh) runs 3 kills on 2 ranks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kills=20 np=8 layout="--tp 2 --pp 2" steps=300 weighting=metapo metapo="$here/../build/metapo" work="" seed=1
while (($#)); do
  case "$1" in
    --kills) kills="$2"; shift 2 ;;
    --np) np="$2"; shift 2 ;;
    --layout) layout="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --weighting) weighting="$2"; shift 2 ;;
    --metapo) metapo="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "kill-loop: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$metapo" ] || { echo "kill-loop: $metapo is not built (run tools/setup.sh)" >&2; exit 2; }
metapo="$(cd "$(dirname "$metapo")" && pwd)/$(basename "$metapo")"
if [ -z "$work" ]; then work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi
mkdir -p "$work" && cd "$work"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_orte_tmpdir_base="$work" OMP_NUM_THREADS=1
RANDOM=$seed

"$metapo" synth --task sort --seed 3 --flip 0.2 --n-train 96 --n-val 16 --n-test 16 --n-sft 32 --out d.h5 >/dev/null
"$metapo" init --preset tiny --out init --seed 2 >/dev/null
"$metapo" precompute-ref --model init --data d.h5 >/dev/null
opts=(--model init --data d.h5 --batch-size 8 --micro-batch 2 --max-steps "$steps" --lr 1e-3 --warmup-steps 2
      --weighting "$weighting" --eval-every 25 --track-pairs 2 --track-every 10 --save-every 2 --keep 2)
[ "$weighting" = metapo ] && opts+=(--meta-lr 1e-2 --meta-val-batch 8)
launch() { "$here/mpirun-retry.sh" -np "$np" "$metapo" train $layout "${opts[@]}" "$@"; }

t0=$(date +%s.%N)
launch --out ref >ref.log 2>&1 || { tail -20 ref.log; echo "kill-loop: the uninterrupted run failed"; exit 1; }
t_ref=$(echo "$(date +%s.%N) - $t0" | bc)
echo "kill-loop: uninterrupted run of $steps steps on $np ranks ($layout) took ${t_ref}s"

rm -rf run
resumed=0 fresh=0 in_write=0
for ((k = 1; k <= kills; ++k)); do
  setsid mpirun -np "$np" "$metapo" train $layout "${opts[@]}" --out run --resume auto >"start$k.log" 2>&1 &
  pid=$!
  # Wait until this start is training (from the second start on it resumes first).
  for ((w = 0; w < 6000; ++w)); do
    grep -q '^step ' "start$k.log" 2>/dev/null && [ -f run/latest ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  kill -0 "$pid" 2>/dev/null || { tail -20 "start$k.log"; echo "kill-loop: start $k ended before it was killed (too few --steps?)"; exit 1; }
  if ((k % 2)); then
    # During a checkpoint write: kill as soon as a step_*.h5.partial appears (or after 5 s).
    for ((w = 0; w < 1000; ++w)); do
      compgen -G "run/step_*.h5.partial" >/dev/null && break
      sleep 0.005
    done
  else
    sleep "0.$((RANDOM % 400 + 50))"  # somewhere in the steps
  fi
  partial=$(compgen -G "run/step_*.h5.partial" >/dev/null && echo yes || echo no)
  sid=$(ps -o sid= -p "$pid" | tr -d ' ')
  ranks=($(pgrep -s "$sid" -f "metapo train" | grep -v "^$pid$" || true))
  if ((RANDOM % 2)) && ((${#ranks[@]})); then
    victim=${ranks[$((RANDOM % ${#ranks[@]}))]}
    what="one rank (pid $victim)"
    kill -9 "$victim" 2>/dev/null || true
    sleep 0.2
  else
    what="the whole job"
  fi
  pkill -9 -s "$sid" 2>/dev/null || true
  { wait "$pid"; } 2>/dev/null || true
  [ "$partial" = yes ] && in_write=$((in_write + 1))
  if grep -q "^resumed from" "start$k.log"; then resumed=$((resumed + 1)); from=$(grep -m1 "^resumed from" "start$k.log" | awk '{print $3}')
  else fresh=$((fresh + 1)); from="(new run)"; fi
  last=$(grep -c '"loss"' run/metrics.jsonl 2>/dev/null || echo 0)
  echo "kill $k: SIGKILL to $what, during a checkpoint write: $partial; this start began from $from; metrics.jsonl had $last step lines"
done
launch --out run --resume auto >final.log 2>&1 || { tail -20 final.log; echo "kill-loop: the last restart failed"; exit 1; }
grep -q "^resumed from" final.log && resumed=$((resumed + 1)) || fresh=$((fresh + 1))

python3 - "$kills" <<'P'
import json, sys
def lines(p):
    drop = ("step_time", "tokens_per_s")
    out = []
    for l in open(p):
        j = json.loads(l)
        if "event" in j:
            continue
        out.append({k: v for k, v in j.items() if k not in drop and not k.startswith("time/")})
    return out
a, b = lines("ref/metrics.jsonl"), lines("run/metrics.jsonl")
assert len(a) == len(b), f"metrics.jsonl: {len(b)} lines after the kills, {len(a)} uninterrupted"
bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
assert not bad, f"metrics.jsonl differs from the uninterrupted run at lines {bad[:5]}: {a[bad[0]]} vs {b[bad[0]]}"
events = sum(1 for l in open("run/metrics.jsonl") if '"event":"resumed"' in l)
print(f"kill-loop: metrics.jsonl holds each of the {len(a)} lines once with the uninterrupted values; {events} restarts marked")
P
for f in final/model.safetensors trajectories.jsonl $( [ "$weighting" = metapo ] && echo metapo.json ); do
  cmp -s "ref/$f" "run/$f" || { echo "kill-loop: FAIL: run/$f differs from the uninterrupted run's"; exit 1; }
done
echo "kill-loop: $kills kills ($in_write during a checkpoint write), $resumed/$((kills)) restarts resumed from a checkpoint" \
     "($fresh started anew), final parameters byte-identical to the uninterrupted run"
[ "$resumed" -eq "$kills" ] || { echo "kill-loop: FAIL: $fresh restarts did not resume"; exit 1; }
