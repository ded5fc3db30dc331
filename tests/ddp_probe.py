"""Run under torchrun by test_distributed.py.

Trains through the real engine and records, for this rank: the events of every training batch,
a fingerprint of the weights after every optimizer step, and every file this process writes.
Usage: ddp_probe.py OUT_DIR CONFIG_YAML
With XECMAE_PROBE_SIGNAL=RANK:STEP, that rank alone sends itself SIGUSR1 after that optimizer step.
"""

import json
import os
import pathlib
import signal
import sys

import torch

from xecmae.configload import load_config
from xecmae.train import loop, tracking
from xecmae.train.pretrain import pretrain

out, config_path = pathlib.Path(sys.argv[1]), sys.argv[2]
rank = int(os.environ["RANK"])
record: dict[str, list] = {"events": [], "fingerprints": [], "writes": [], "losses": [], "signalled_at": []}
signal_rank, signal_step = (int(v) for v in os.environ.get("XECMAE_PROBE_SIGNAL", "-1:-1").split(":"))

real_step = loop.Trainer.train_step
real_save = torch.save
real_write_text = pathlib.Path.write_text
real_writer_init = tracking.Tracker.__init__


def train_step(self, batch):
    record["events"].append([self.state.epoch, batch["event"].tolist()])
    stats = real_step(self, batch)
    weights = torch.cat([p.detach().flatten().double() for p in self.raw.parameters()])
    probe = torch.sin(torch.arange(weights.numel(), dtype=torch.float64))
    record["fingerprints"].append([float(weights.sum()), float((weights * probe).sum())])
    record["losses"].append(float(stats["total_loss"][0] / stats["total_loss"][1]))
    if rank == signal_rank and self.state.step == signal_step:
        record["signalled_at"].append(self.state.step)
        os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM does before a time limit, to this rank only
    return stats


def save(obj, path, *args, **kwargs):
    record["writes"].append(str(path))
    return real_save(obj, path, *args, **kwargs)


def write_text(self, *args, **kwargs):
    record["writes"].append(str(self))
    return real_write_text(self, *args, **kwargs)


def tracker_init(self, run_dir, tracking_uri, experiment, enabled):
    if enabled:
        record["writes"].append(f"mlflow:{run_dir}")
    real_writer_init(self, run_dir, tracking_uri, experiment, enabled)


loop.Trainer.train_step = train_step
torch.save = save
pathlib.Path.write_text = write_text
tracking.Tracker.__init__ = tracker_init

pretrain(load_config(config_path))
pathlib.Path.write_text = real_write_text
(out / f"rank{rank}.json").write_text(json.dumps(record))
