#!/usr/bin/env bash
# Regression fine-tuning on SLURM, usually from a pre-trained MAE encoder:
#   edit RESUME_FROM below (or export it), then `cd jobs && ./run_scan.sh`.
# A regression checkpoint resumes that run; an MAE checkpoint or bare encoder weights start a fresh
# fine-tuning from that encoder.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

RESUME_FROM="${RESUME_FROM:-$HOME/meghome/xec-ml-wl/artifacts/<RUN_NAME>/mae_checkpoint_best.pth}"
CONFIG="${CONFIG:-$REPO/config/reg/train_config.yaml}"
ROOT_PATH="${ROOT_PATH:-}"                # training files (wildcards fine); empty = the YAML's
VAL_PATH="${VAL_PATH:-}"
TASKS="${TASKS:-position energy}"
EPOCHS="${EPOCHS:-}"
BATCH="${BATCH:-}"
RUN_NAME="${RUN_NAME:-reg_$(date +%Y%m%d_%H%M%S)}"
ARTIFACTS_DIR="${ARTIFACTS_DIR:-$HOME/meghome/xec-ml-wl/artifacts}"
NUM_GPUS="${NUM_GPUS:-1}"
PARTITION="${PARTITION:-gpu}"
TIME="${TIME:-12:00:00}"
MEM="${MEM:-64G}"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

case "$RESUME_FROM" in *"<RUN_NAME>"*) echo "run_scan.sh: set RESUME_FROM to your MAE checkpoint" >&2; exit 2 ;; esac
[ -f "$RESUME_FROM" ] || [ "${DRY_RUN:-0}" != "0" ] || { echo "run_scan.sh: $RESUME_FROM does not exist" >&2; exit 2; }

ARGS=(--config "$CONFIG" --resume_from "$RESUME_FROM" --run_name "$RUN_NAME" --save_dir "$ARTIFACTS_DIR")
read -r -a TASK_LIST <<< "$TASKS"
ARGS+=(--tasks "${TASK_LIST[@]}")
[ -n "$ROOT_PATH" ] && ARGS+=(--train_root "$ROOT_PATH")
[ -n "$VAL_PATH" ] && ARGS+=(--val_root "$VAL_PATH")
[ -n "$EPOCHS" ] && ARGS+=(--epochs "$EPOCHS")
[ -n "$BATCH" ] && ARGS+=(--batch_size "$BATCH")

# the resolved configuration, through the project's loader (fails here on a bad setting)
RESOLVED="$(cd "$REPO" && "$PYTHON" -m xecmae.cli config show --kind regressor "${ARGS[@]}")"
quote() { local out; out="$(printf '%q ' "$@")"; printf '%s' "${out% }"; }
SCRIPT="#!/usr/bin/env bash
#SBATCH --job-name=$RUN_NAME
#SBATCH --partition=$PARTITION
#SBATCH --nodes=1
#SBATCH --gpus-per-node=$NUM_GPUS
#SBATCH --cpus-per-task=$((8 * NUM_GPUS))
#SBATCH --mem=$MEM
#SBATCH --time=$TIME
#SBATCH --output=$ARTIFACTS_DIR/$RUN_NAME/slurm-%j.out
set -euo pipefail
cd $(quote "$REPO")
$(quote "$PYTHON") -m torch.distributed.run --standalone --nproc_per_node=$NUM_GPUS -m lib.train_regressor $(quote "${ARGS[@]}")"

if [ "${DRY_RUN:-0}" != "0" ]; then
    echo "--- resolved configuration ---"; echo "$RESOLVED"
    echo "--- sbatch script (DRY_RUN: not submitted) ---"; echo "$SCRIPT"
    exit 0
fi
mkdir -p "$ARTIFACTS_DIR/$RUN_NAME"
echo "$SCRIPT" > "$ARTIFACTS_DIR/$RUN_NAME/job.sbatch"
sbatch "$ARTIFACTS_DIR/$RUN_NAME/job.sbatch"
