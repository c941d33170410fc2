#!/bin/bash
# The whole journey as a chain of Slurm jobs, each starting when the one before it succeeded
# (sbatch --dependency=afterok): sft -> precompute-ref -> train -> eval (docs/slurm.md).
#
#   BASE_MODEL=models/Llama-3.1-8B DATA=data/prefs.h5 jobs/submit.sh
#   SKIP_SFT=1 BASE_MODEL=runs/sft/final DATA=data/prefs.h5 jobs/submit.sh   # DPO from a model you have
#
# Run it from the directory the jobs should work in: relative paths, logs/ and the runs are there.
#
# Variables (the INI file holds the training settings; these say what to work on):
#   CONFIG       INI file with [sft], [precompute-ref], [train], [eval], [generate] sections
#                (default: configs/slurm-dpo.ini of this checkout)
#   BASE_MODEL   the Hugging Face model directory to start from (required)
#   DATA         the dataset .h5 from tools/prepare_data.py (required); precompute-ref adds the
#                reference log-probs to it
#   RUNS         where the run directories go: RUNS/sft, RUNS/dpo (default runs/<date>-<time>)
#   SKIP_SFT=1   no SFT: BASE_MODEL is the reference and the policy's start
#   SBATCH_ARGS  more sbatch options for every job (e.g. "--account=proj --partition=gpu")
# and whatever the batch scripts read (TP, PP, LAUNCHER, EXTRA_ARGS, ...), passed through the
# environment. Prints the job ids; the logs go to logs/.
set -euo pipefail
home=$(cd "$(dirname "$0")/.." && pwd)
CONFIG=${CONFIG:-$home/configs/slurm-dpo.ini}
RUNS=${RUNS:-runs/$(date +%Y%m%d-%H%M%S)}
: "${BASE_MODEL:?set BASE_MODEL to the Hugging Face model directory to start from}"
: "${DATA:?set DATA to the dataset .h5 (tools/prepare_data.py)}"
[ -f "$CONFIG" ] || { echo "submit.sh: CONFIG=$CONFIG: no such file" >&2; exit 2; }
[ -d "$BASE_MODEL" ] || { echo "submit.sh: BASE_MODEL=$BASE_MODEL: not a directory" >&2; exit 2; }
[ -f "$DATA" ] || { echo "submit.sh: DATA=$DATA: no such file" >&2; exit 2; }
mkdir -p logs
export CONFIG DATA METAPO_HOME="$home"
# shellcheck disable=SC2206  # a list of options
extra=(${SBATCH_ARGS:-})
submit() {  # submit DEPENDENCY SCRIPT VAR=VALUE...: prints the job id
  local dep=$1 script=$2
  shift 2
  local d=()
  [ -n "$dep" ] && d=(--dependency="afterok:$dep" --kill-on-invalid-dep=yes)
  env "$@" sbatch --parsable "${extra[@]}" "${d[@]}" "$script" | cut -d';' -f1
}
dep=""
ref=$BASE_MODEL
if [ "${SKIP_SFT:-0}" != 1 ]; then
  sft=$(submit "" "$home/jobs/sft.sbatch" MODEL="$BASE_MODEL" RUN="$RUNS/sft")
  echo "sft:            job $sft -> $RUNS/sft"
  dep=$sft ref=$RUNS/sft/final
fi
pre=$(submit "$dep" "$home/jobs/precompute-ref.sbatch" MODEL="$ref")
echo "precompute-ref: job $pre (reference: $ref)"
train=$(submit "$pre" "$home/jobs/train.sbatch" MODEL="$ref" RUN="$RUNS/dpo")
echo "train:          job $train -> $RUNS/dpo"
ev=$(submit "$train" "$home/jobs/eval.sbatch" MODEL="$RUNS/dpo/final")
echo "eval:           job $ev"
echo "follow with: squeue -u ${USER:-$(id -un)}; grep metapo-job: logs/*"
