"""The SLURM scripts, in dry-run mode (no sbatch needed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def dry_run(script: str, **env) -> subprocess.CompletedProcess:
    environment = os.environ | {"DRY_RUN": "1", "PYTHON": sys.executable, "RUN_NAME": "test_run",
                                "ARTIFACTS_DIR": "/tmp/xecmae-artifacts"} | env
    return subprocess.run([str(REPO / "jobs" / script)], capture_output=True, text=True, env=environment,
                          timeout=120)


def sbatch_part(stdout: str) -> str:
    return stdout.split("--- sbatch script (DRY_RUN: not submitted) ---\n", 1)[1]


def test_submit_with_four_gpus_prints_the_sbatch_script_and_torchrun_line(tmp_path):
    out = dry_run("submit_mae.sh", NUM_GPUS="4")
    assert out.returncode == 0, out.stderr
    script = sbatch_part(out.stdout)
    assert "#SBATCH --gpus-per-node=4" in script and "#SBATCH --nodes=1" in script
    assert "--nproc_per_node=4" in script and "-m lib.train_mae --config" in script
    assert "#SBATCH --requeue" in script and "mae_checkpoint_last.pth" in script
    (tmp_path / "job.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")]).returncode == 0


def test_run_mae_passes_its_settings_through_the_config_loader():
    out = dry_run("run_mae.sh", ROOT_PATH="/data/run*/*.root", EPOCHS="7", MASK_RATIO="0.5", BATCH="256")
    assert out.returncode == 0, out.stderr
    assert "7 epochs, batch 256 per GPU" in out.stdout
    resolved = out.stdout.split("--- sbatch script", 1)[0]
    assert "train_path: /data/run*/*.root" in resolved and "mask_ratio: 0.5" in resolved
    script = sbatch_part(out.stdout)
    assert "--mask_ratio 0.5" in script and "--train_root /data/run\\*/\\*.root" in script
    assert "/tmp/xecmae-artifacts/test_run" in script


def test_run_mae_leaves_the_yamls_epochs_mask_ratio_and_batch_alone_when_unset(tmp_path):
    config = tmp_path / "mae.yaml"
    config.write_text("model:\n  mask_ratio: 0.4\ntraining:\n  epochs: 3\ndata:\n  batch_size: 64\n")
    environment = {k: "" for k in ("EPOCHS", "MASK_RATIO", "BATCH", "ROOT_PATH", "VAL_PATH")}
    out = dry_run("run_mae.sh", CONFIG=str(config), **environment)
    assert out.returncode == 0, out.stderr
    assert "3 epochs, batch 64 per GPU" in out.stdout
    script = sbatch_part(out.stdout)
    assert "--mask_ratio" not in script and "--epochs" not in script and "--batch_size" not in script


def test_multi_node_runs_one_torchrun_per_node_with_a_rendezvous():
    script = sbatch_part(dry_run("submit_mae.sh", NUM_GPUS="4", NUM_NODES="2").stdout)
    assert "#SBATCH --nodes=2" in script and "--nnodes=2" in script and "--rdzv_backend=c10d" in script


@pytest.mark.parametrize("env,message", [({"MASK_RATIO": "1.5"}, "model.mask_ratio"),
                                         ({"EXTRA_ARGS": "--lr_schedule cosine"}, "unrecognized arguments")])
def test_a_bad_setting_stops_before_anything_is_submitted(env, message):
    out = dry_run("submit_mae.sh", **env)
    assert out.returncode != 0 and message in out.stderr
    assert "#SBATCH" not in out.stdout


def test_cpus_per_gpu_cover_the_data_workers_and_their_threads():
    out = dry_run("submit_mae.sh", NUM_GPUS="2", EXTRA_ARGS="--num_workers 4 --num_threads 3")
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --cpus-per-task=36" in sbatch_part(out.stdout)  # 2 GPUs x (4 x (3 + 1) + 2)
    assert "warning" not in out.stderr
    low = dry_run("submit_mae.sh", CPUS_PER_GPU="8", EXTRA_ARGS="--num_workers 4 --num_threads 3")
    assert low.returncode == 0 and "CPUS_PER_GPU=8 is below the 18" in low.stderr
    assert "#SBATCH --cpus-per-task=8" in sbatch_part(low.stdout)  # the user's choice stands
