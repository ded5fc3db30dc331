#!/usr/bin/env bash
# MAE pre-training on SLURM: edit the settings below, then `cd jobs && ./run_mae.sh`.
# Checkpoints go to $ARTIFACTS_DIR/$RUN_NAME/ (mae_checkpoint_best.pth is the one to fine-tune from).
set -euo pipefail

export ROOT_PATH="${ROOT_PATH:-$HOME/data/xec/mae/train/*.root}"   # wildcards are fine (quote them)
export VAL_PATH="${VAL_PATH:-$HOME/data/xec/mae/val/*.root}"
# Empty = the YAML's value (config/mae/mae_config.yaml: 20 epochs, mask ratio 0.6, batch 1024);
# only what is set here or in the environment overrides the file.
export EPOCHS="${EPOCHS:-}"                                          # number of pre-training epochs
export MASK_RATIO="${MASK_RATIO:-}"                                  # fraction of valid sensors hidden (0.6)
export BATCH="${BATCH:-}"                                            # batch size per GPU
export CONFIG="${CONFIG:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/config/mae/mae_config.yaml}"
export RUN_NAME="${RUN_NAME:-mae_$(date +%Y%m%d_%H%M%S)}"
export ARTIFACTS_DIR="${ARTIFACTS_DIR:-$HOME/meghome/xec-ml-wl/artifacts}"
export NUM_GPUS="${NUM_GPUS:-1}"
export PARTITION="${PARTITION:-gpu}"
export TIME="${TIME:-24:00:00}"

exec "$(dirname "${BASH_SOURCE[0]}")/submit_mae.sh"
