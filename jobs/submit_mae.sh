#!/usr/bin/env bash
# Submit MAE pre-training to SLURM: one node or several, one or more GPUs per node.
#
#   NUM_GPUS=4 ./jobs/submit_mae.sh              # 4 GPUs on one node
#   NUM_GPUS=4 DRY_RUN=1 ./jobs/submit_mae.sh    # print the configuration and the sbatch script only
#   NUM_NODES=2 NUM_GPUS=4 ./jobs/submit_mae.sh  # 8 GPUs: one srun task per node runs torchrun
#
# Settings (environment): CONFIG, ROOT_PATH, VAL_PATH, EPOCHS, MASK_RATIO, BATCH, RUN_NAME,
# ARTIFACTS_DIR, RESUME_FROM, NUM_GPUS, NUM_NODES, PARTITION, TIME, MEM, CPUS_PER_GPU, ACCOUNT,
# PYTHON (the environment's python), EXTRA_ARGS (more xecmae flags), DRY_RUN.
# CPUS_PER_GPU defaults to what each training process uses: data.num_workers x (data.num_threads
# + 1 reading thread) for its DataLoader workers, and 2 for itself; a smaller value is warned about.
# A requeued job (preemption, or the time limit reached: the job saves and requeues itself)
# resumes from <run dir>/mae_checkpoint_last.pth.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"
CONFIG="${CONFIG:-$REPO/config/mae/mae_config.yaml}"
NUM_GPUS="${NUM_GPUS:-1}"
NUM_NODES="${NUM_NODES:-1}"
PARTITION="${PARTITION:-gpu}"
TIME="${TIME:-24:00:00}"
MEM="${MEM:-64G}"
RUN_NAME="${RUN_NAME:-mae_$(date +%Y%m%d_%H%M%S)}"
ARTIFACTS_DIR="${ARTIFACTS_DIR:-}"

# Command-line overrides of the configuration, from the settings that are set.
OVERRIDES=(--run_name "$RUN_NAME")
[ -n "${ROOT_PATH:-}" ] && OVERRIDES+=(--train_root "$ROOT_PATH")
[ -n "${VAL_PATH:-}" ] && OVERRIDES+=(--val_root "$VAL_PATH")
[ -n "${EPOCHS:-}" ] && OVERRIDES+=(--epochs "$EPOCHS")
[ -n "${MASK_RATIO:-}" ] && OVERRIDES+=(--mask_ratio "$MASK_RATIO")
[ -n "${BATCH:-}" ] && OVERRIDES+=(--batch_size "$BATCH")
[ -n "$ARTIFACTS_DIR" ] && OVERRIDES+=(--save_dir "$ARTIFACTS_DIR")
if [ -n "${EXTRA_ARGS:-}" ]; then
    read -r -a EXTRA <<< "$EXTRA_ARGS"
    OVERRIDES+=("${EXTRA[@]}")
fi

xecmae_config() {  # the resolved configuration through the project's own loader
    "$PYTHON" -m xecmae.cli config show --config "$CONFIG" "${OVERRIDES[@]}" "$@"
}
# fails here, before anything is submitted, on a bad configuration
VALUES="$(cd "$REPO" && xecmae_config --get checkpoint.save_dir training.epochs data.batch_size \
    data.num_workers data.num_threads)"
{ read -r SAVE_DIR; read -r EPOCHS_RESOLVED; read -r BATCH_RESOLVED; read -r WORKERS; read -r THREADS; } <<< "$VALUES"
# CPUs one training process keeps busy: its workers' normalising and reading threads, and itself
CPUS_NEEDED=$(( (WORKERS > 0 ? WORKERS * (THREADS + 1) : THREADS + 1) + 2 ))
CPUS_PER_GPU="${CPUS_PER_GPU:-$CPUS_NEEDED}"
if [ "$CPUS_PER_GPU" -lt "$CPUS_NEEDED" ]; then
    echo "submit_mae.sh: warning: CPUS_PER_GPU=$CPUS_PER_GPU is below the $CPUS_NEEDED each GPU's process uses" \
         "($WORKERS workers x ($THREADS threads + 1 reader) + 2): the data loading will share cores" >&2
fi
case "$SAVE_DIR" in /*) ;; *) SAVE_DIR="$REPO/$SAVE_DIR" ;; esac
RUN_DIR="$SAVE_DIR/$RUN_NAME"

quote() { local out; out="$(printf '%q ' "$@")"; printf '%s' "${out% }"; }
FALLBACK=""
[ -n "${RESUME_FROM:-}" ] && FALLBACK="elif true; then RESUME=(--resume_from $(quote "$RESUME_FROM"))"
SCRIPT="$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=$RUN_NAME
#SBATCH --partition=$PARTITION
#SBATCH --nodes=$NUM_NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$NUM_GPUS
#SBATCH --cpus-per-task=$((CPUS_PER_GPU * NUM_GPUS))
#SBATCH --mem=$MEM
#SBATCH --time=$TIME
#SBATCH --output=$RUN_DIR/slurm-%j.out
#SBATCH --requeue
#SBATCH --signal=B:USR1@300${ACCOUNT:+
#SBATCH --account=$ACCOUNT}
set -euo pipefail
cd $(quote "$REPO")
mkdir -p $(quote "$RUN_DIR")
RESUME=()  # a requeued job continues from its own last checkpoint
if [ -f $(quote "$RUN_DIR/mae_checkpoint_last.pth") ]; then RESUME=(--resume_from $(quote "$RUN_DIR/mae_checkpoint_last.pth"))
$FALLBACK
fi
MASTER_ADDR=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1)
# Near the time limit: ask the trainers to save, and come back later from the last checkpoint.
trap 'echo "time limit near: saving and requeueing"; scontrol requeue "\$SLURM_JOB_ID"; kill -TERM "\$TRAIN_PID"' USR1
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \\
    $(quote "$PYTHON") -m torch.distributed.run \\
    --nnodes=$NUM_NODES --nproc_per_node=$NUM_GPUS \\
    --rdzv_id=\$SLURM_JOB_ID --rdzv_backend=c10d --rdzv_endpoint=\$MASTER_ADDR:29500 \\
    -m lib.train_mae --config $(quote "$CONFIG") $(quote "${OVERRIDES[@]}") \${RESUME[@]+"\${RESUME[@]}"} &
TRAIN_PID=\$!
wait "\$TRAIN_PID" || wait "\$TRAIN_PID"
SBATCH
)"

echo "run $RUN_NAME: $NUM_NODES node(s) x $NUM_GPUS GPU(s), $EPOCHS_RESOLVED epochs, batch $BATCH_RESOLVED per GPU"
echo "CPUs per GPU: $CPUS_PER_GPU ($WORKERS data workers x $THREADS threads each)"
echo "run directory: $RUN_DIR"
if [ "${DRY_RUN:-0}" != "0" ]; then
    echo "--- resolved configuration ($CONFIG + overrides) ---"
    (cd "$REPO" && xecmae_config)
    echo "--- sbatch script (DRY_RUN: not submitted) ---"
    echo "$SCRIPT"
    exit 0
fi
command -v sbatch >/dev/null || { echo "submit_mae.sh: sbatch not found (not a SLURM login node?); try DRY_RUN=1" >&2; exit 1; }
mkdir -p "$RUN_DIR"
echo "$SCRIPT" > "$RUN_DIR/job.sbatch"
sbatch "$RUN_DIR/job.sbatch"
