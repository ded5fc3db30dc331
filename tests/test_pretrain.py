"""The pre-training engine end to end on a tiny model and a few hundred simulated events."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import uproot

from conftest import tiny_config
from xecmae.analysis.hooks import training_plots
from xecmae.analysis.predictions import read_metadata
from xecmae.train import objectives
from xecmae.train.checkpoint import load_checkpoint
from xecmae.train.loop import TrainingStopped
from xecmae.train.pretrain import pretrain

SPEC_METRICS = ["total_loss", "loss_npho", "loss_time", "mae_npho", "mae_time", "rmse_npho", "rmse_time",
                "actual_mask_ratio"]
FACES = ["inner", "us", "ds", "outer", "top", "bottom"]
SPEC_METRICS += [f"loss_{f}" for f in FACES]
SPEC_METRICS += [f"{kind}_{f}_{c}" for kind in ("loss", "mae", "rmse") for f in FACES for c in ("npho", "time")]


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model_state_dict"]


def test_a_run_writes_every_file_and_its_checkpoints_load_with_weights_only(sim_data, tmp_path):
    cfg = tiny_config(sim_data, tmp_path, training={"epochs": 3, "lr": 2e-3},
                      checkpoint={"save_interval": 2, "save_path": str(tmp_path / "mae_pretrained.pth")})
    run = pretrain(cfg, hooks=training_plots())  # the plots are attached by the caller (the command line does)
    names = {p.name for p in run.iterdir()}
    assert {"mae_checkpoint_best.pth", "mae_checkpoint_last.pth", "mae_checkpoint_epoch_2.pth",
            "mae_encoder_epoch_2.pth", "mae_encoder_epoch_3.pth", "config.yaml", "loss_curves.png"} <= names
    for name in ("mae_checkpoint_best.pth", "mae_checkpoint_last.pth", "mae_encoder_epoch_3.pth"):
        torch.load(run / name, weights_only=True)
    last = load_checkpoint(run / "mae_checkpoint_last.pth")
    assert last["epoch"] == 3 and last["step"] == 3 * 6 and last["kind"] == "mae"
    assert all(k.startswith(("encoder.", "decoders.")) for k in last["model_state_dict"])
    # the best checkpoint is the epoch with the lowest validation loss
    val = [h["val/total_loss"] for h in last["history"]]
    best = load_checkpoint(run / "mae_checkpoint_best.pth")
    assert best["epoch"] == int(np.argmin(val)) + 1 == last["best_epoch"]
    assert best["best_val_loss"] == pytest.approx(min(val))
    assert (tmp_path / "mae_pretrained.pth").is_file()  # legacy --save_path .pth receives the best
    assert load_checkpoint(tmp_path / "mae_pretrained.pth")["epoch"] == best["epoch"]
    encoder = torch.load(run / "mae_encoder_epoch_3.pth", weights_only=True)
    torch.testing.assert_close(encoder["norm.weight"], last["model_state_dict"]["encoder.norm.weight"])
    assert val[-1] < 0.7 * val[0]  # it learns something on simulated data


def test_resume_after_an_interruption_gives_the_uninterrupted_weights(sim_data, tmp_path):
    small = {"max_events": 96}  # 3 steps per epoch
    straight = pretrain(tiny_config(sim_data, tmp_path, checkpoint={"run_name": "straight"},
                                    training={"ema_decay": 0.9}, data=small))
    cut = tiny_config(sim_data, tmp_path, checkpoint={"run_name": "cut"}, data=small,
                      training={"max_steps": 2, "ema_decay": 0.9})
    stopped = pretrain(cut)
    partial = load_checkpoint(stopped / "mae_checkpoint_last.pth")
    assert partial["step"] == 2 and partial["epoch"] == 0 and partial["epoch_batches"] == 2
    resumed = pretrain(tiny_config(sim_data, tmp_path, data=small, training={"ema_decay": 0.9}, checkpoint={
        "run_name": "cut", "resume_from": str(stopped / "mae_checkpoint_last.pth")}))
    a = load_checkpoint(straight / "mae_checkpoint_last.pth")
    b = load_checkpoint(resumed / "mae_checkpoint_last.pth")
    assert a["step"] == b["step"] == 6
    for key in a["model_state_dict"]:
        torch.testing.assert_close(a["model_state_dict"][key], b["model_state_dict"][key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["ema_state_dict"][key], b["ema_state_dict"][key], rtol=1e-5, atol=1e-6)
    assert [h["epoch"] for h in b["history"]] == [1, 2]


def test_a_killed_run_resumes_from_its_last_checkpoint(sim_data, tmp_path):
    cmd = [sys.executable, "-m", "xecmae.cli", "pretrain", "--train_root", sim_data["train"],
           "--val_root", sim_data["val"], "--size", "tiny", "--batch_size", "16", "--epochs", "2",
           "--num_workers", "0", "--chunksize", "64", "--max_events", "96", "--save_dir", str(tmp_path),
           "--run_name", "killed",
           "--save_every_steps", "2", "--mlflow.enabled", "false", "--save_predictions", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "mae_checkpoint_last.pth"
    deadline = time.time() + 240
    while time.time() < deadline and not (last.is_file() and load_checkpoint(last)["step"] >= 4):
        time.sleep(0.5)
        assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = load_checkpoint(last)
    assert 4 <= saved["step"] < 12
    done = subprocess.run([*cmd, "--resume_from", str(last)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    final = load_checkpoint(last)
    assert final["step"] == 12 and final["epoch"] == 2
    assert f"resumed from {last}: epoch {saved['epoch']}, step {saved['step']}" in done.stderr


def test_every_specified_metric_reaches_mlflow(sim_data, tmp_path):
    cfg = tiny_config(sim_data, tmp_path, mlflow={"enabled": True, "experiment": "test"},
                      training={"epochs": 1, "track_metrics": True, "track_mae_rmse": True})
    run = pretrain(cfg, hooks=training_plots())
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("test")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    logged = set(mlrun.data.metrics)
    missing = [f"{split}/{m}" for split in ("train", "val") for m in SPEC_METRICS if f"{split}/{m}" not in logged]
    assert not missing
    assert {"lr", "events_per_s"} <= logged
    assert mlrun.data.params["model.mask_ratio"] == "0.6"
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert "config.yaml" in artifacts and "plots" in artifacts
    assert load_checkpoint(run / "mae_checkpoint_last.pth")["mlflow_run_id"] == mlrun.info.run_id


def test_an_unreachable_tracking_server_is_a_warning_not_a_crash(sim_data, tmp_path, caplog):
    cfg = tiny_config(sim_data, tmp_path, training={"epochs": 1},
                      mlflow={"enabled": True, "tracking_uri": "http://127.0.0.1:9"})
    with caplog.at_level(logging.WARNING):
        run = pretrain(cfg)
    assert (run / "mae_checkpoint_last.pth").is_file()
    assert any("MLflow" in r.getMessage() and "tracking is off" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("channels", [["npho", "time"], ["npho"]])
def test_prediction_file_has_the_documented_branches_and_metadata(sim_data, tmp_path, channels):
    cfg = tiny_config(sim_data, tmp_path, training={"epochs": 1},
                      model={"predict_channels": channels},
                      checkpoint={"save_predictions": True, "predictions_max_events": 40})
    run = pretrain(cfg, hooks=training_plots())
    path = run / "mae_predictions_epoch_1.root"
    with uproot.open(path) as f:
        tree = f["tree"]
        assert tree.num_entries == 40
        expected = {"event_id", "run", "mask", "valid_npho", "valid_time"}
        expected |= {f"{k}_{c}" for k in ("truth", "masked", "pred", "error") for c in channels}
        assert set(tree.keys()) == expected
        assert tree["pred_npho"].typename == "float[4760]"
        arrays = tree.arrays(library="np")
    meta = read_metadata(path)
    assert meta["predict_channels"] == tuple(channels)
    assert meta["npho_scheme"] == "log1p" and meta["npho_scale"] == 1000.0 and meta["sentinel_time"] == -1.0
    np.testing.assert_allclose(arrays["error_npho"], arrays["pred_npho"] - arrays["truth_npho"], atol=1e-6)
    hidden = arrays["mask"] > 0.5
    assert (arrays["masked_npho"][hidden] == -1.0).all()
    assert 0.55 < hidden.sum() / (arrays["valid_npho"] > 0.5).sum() < 0.61
    if channels == ["npho"]:
        model = load_checkpoint(run / "mae_checkpoint_last.pth")["model_state_dict"]
        assert model["decoders.inner.up.4.weight"].shape[1] == 1  # one output channel
    assert (run / "event_display_epoch_1.png").stat().st_size > 10_000


def test_a_non_finite_loss_skips_the_step_and_then_stops_the_run(sim_data, tmp_path, monkeypatch, caplog):
    real_loss = objectives.mae_loss
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        total, stats = real_loss(*args, **kwargs)
        calls["n"] += 1
        return (total * float("nan"), stats) if calls["n"] == 2 else (total, stats)

    monkeypatch.setattr(objectives, "mae_loss", sometimes_nan)
    with caplog.at_level(logging.WARNING):
        run = pretrain(tiny_config(sim_data, tmp_path, training={"epochs": 1}))
    last = load_checkpoint(run / "mae_checkpoint_last.pth")
    assert all(torch.isfinite(v).all() for v in last["model_state_dict"].values())
    assert any("skipped" in r.getMessage() for r in caplog.records)

    def always_nan(*args, **kwargs):
        total, stats = real_loss(*args, **kwargs)
        return total * float("nan"), stats

    monkeypatch.setattr(objectives, "mae_loss", always_nan)
    with pytest.raises(TrainingStopped, match="not finite for"):
        pretrain(tiny_config(sim_data, tmp_path, checkpoint={"run_name": "nan"},
                             training={"epochs": 1, "max_bad_steps": 2}))


@pytest.mark.parametrize("flags,message", [
    (["--mask_ratio", "1.5"], "model.mask_ratio"),
    (["--loss_fn", "cosine"], "training.loss_fn"),
    (["--batch_size", "0"], "data.batch_size"),
    (["--train_root", "/no/such/file.root"], "/no/such/file.root"),
    (["--val_root", "/no/such/dir/*.root"], "/no/such/dir/*.root"),
])
def test_bad_configuration_fails_before_training_with_one_message(sim_data, tmp_path, flags, message):
    cmd = [sys.executable, "-m", "lib.train_mae", "--train_root", sim_data["train"], "--size", "tiny",
           "--save_dir", str(tmp_path), "--run_name", "bad", *flags]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "bad").exists()
