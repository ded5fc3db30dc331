"""Two gloo processes on the CPU under torchrun, against a single process over the same events."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from xecmae.simulate import EventGenerator, write_root
from xecmae.train.checkpoint import load_checkpoint
from xecmae.train.pretrain import pretrain

HERE = Path(__file__).resolve().parent
LOSS_TOLERANCE = 0.10  # relative: different masks and batch composition, same events and steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, out: Path, cfg, timeout: int = 300, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess:
    config = out / f"config_{nproc}.yaml"
    config.write_text(cfg.to_yaml())
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", str(HERE / "ddp_probe.py"), str(out), str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ | (env or {}))


@pytest.fixture(scope="module")
def three_files(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ddp")
    write_root(root / "part.root", 192, EventGenerator(seed=21), files=3, progress=False)
    return str(root / "part_*.root")


def test_two_ranks_split_the_events_and_stay_in_step(three_files, sim_data, tmp_path):
    data = {"train_path": three_files, "batch_size": 16, "num_workers": 1, "shuffle_buffer": 32}
    cfg = tiny_config(sim_data, tmp_path, data=data, training={"epochs": 1},
                      mlflow={"enabled": True}, checkpoint={"save_predictions": True, "run_name": "ddp"})
    done = torchrun(2, tmp_path, cfg)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # every event of the epoch is trained on by exactly one rank
    seen = [event for r in ranks for _, batch in r["events"] for event in batch]
    assert len(seen) == len(set(seen)) == 192
    assert len(ranks[0]["events"]) == len(ranks[1]["events"]) == 6

    # the weights are identical on both ranks after every step
    assert ranks[0]["fingerprints"] == ranks[1]["fingerprints"]
    assert len(ranks[0]["fingerprints"]) == 6

    # only rank 0 writes (checkpoints, config, predictions, MLflow)
    assert ranks[1]["writes"] == []
    assert any("mae_checkpoint_last.pth" in w for w in ranks[0]["writes"])  # via a temporary name
    assert any(w.startswith("mlflow:") for w in ranks[0]["writes"])
    run = tmp_path / "ddp"
    assert (run / "mae_predictions_epoch_1.root").is_file()

    # a single process over the same events, with the same effective batch, ends at about the same loss
    single = pretrain(tiny_config(sim_data, tmp_path, data=data | {"batch_size": 32, "num_workers": 0},
                                  training={"epochs": 1}, checkpoint={"run_name": "single"}))
    two = load_checkpoint(run / "mae_checkpoint_last.pth")
    one = load_checkpoint(single / "mae_checkpoint_last.pth")
    assert two["step"] == one["step"] == 6
    for key in ("train/total_loss", "val/total_loss"):
        a, b = two["history"][-1][key], one["history"][-1][key]
        assert abs(a - b) / b < LOSS_TOLERANCE, (key, a, b)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["batch_size"] == 16


def test_very_uneven_files_do_not_hang(sim_data, tmp_path):
    root = tmp_path / "uneven"
    root.mkdir()
    write_root(root / "big.root", 240, EventGenerator(seed=31), progress=False)
    write_root(root / "small.root", 8, EventGenerator(seed=32), progress=False)
    cfg = tiny_config(sim_data, tmp_path, data={"train_path": str(root / "*.root"), "batch_size": 16,
                                                "num_workers": 2, "shuffle_buffer": 0},
                      training={"epochs": 2}, checkpoint={"run_name": "uneven"})
    done = torchrun(2, tmp_path, cfg, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["events"]) == len(ranks[1]["events"]) > 0
    for epoch in (0, 1):
        seen = [e for r in ranks for ep, batch in r["events"] if ep == epoch for e in batch]
        assert len(seen) == len(set(seen))


def test_a_signal_to_one_rank_stops_both_at_the_same_step(sim_data, tmp_path):
    data = {"train_path": sim_data["train"], "batch_size": 16, "num_workers": 0, "shuffle_buffer": 32}
    cfg = tiny_config(sim_data, tmp_path, data=data, training={"epochs": 2}, checkpoint={"run_name": "signal"},
                      distributed={"timeout_minutes": 1})  # a rank left waiting fails within a minute
    done = torchrun(2, tmp_path, cfg, timeout=180, env={"XECMAE_PROBE_SIGNAL": "1:2"})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["signalled_at"] == [] and ranks[1]["signalled_at"] == [2]  # rank 1 alone got the signal
    assert len(ranks[0]["fingerprints"]) == len(ranks[1]["fingerprints"]) == 2  # both stopped after step 2
    assert ranks[0]["fingerprints"] == ranks[1]["fingerprints"]
    checkpoint = load_checkpoint(tmp_path / "signal" / "mae_checkpoint_last.pth")
    assert checkpoint["step"] == 2 and checkpoint["epoch"] == 0 and checkpoint["epoch_batches"] == 2
