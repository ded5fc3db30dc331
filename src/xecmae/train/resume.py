"""What a checkpoint holds, and how a run of the same kind continues from one.

The payload is plain data (state_dicts, numbers, strings, the configuration as a dict), so it
loads with ``weights_only=True``; restoring it repeats the uninterrupted run exactly: weights,
optimizer, schedule, EMA, counters, running epoch sums, RNG state and the MLflow run.
"""

from __future__ import annotations

import logging

from xecmae.config import RunConfig
from xecmae.train import distributed as dist
from xecmae.train.checkpoint import rng_state, set_rng_state
from xecmae.train.initialize import load_weights
from xecmae.train.loop import Trainer
from xecmae.train.metrics import MetricSums

log = logging.getLogger(__name__)


def checkpoint_payload(cfg: RunConfig, kind: str, trainer: Trainer) -> dict:
    """The full checkpoint of a ``kind`` run as it stands now."""
    s = trainer.state
    return {
        "kind": kind,
        "model_state_dict": trainer.raw.state_dict(),
        "ema_state_dict": trainer.ema.state_dict() if trainer.ema else None,
        "ema_n_averaged": trainer.ema.n_averaged if trainer.ema else 0,
        "optimizer_state_dict": trainer.optimizer.state_dict(),
        "scheduler_state_dict": trainer.scheduler.state_dict(),
        "scaler_state_dict": None,  # bf16 autocast needs no loss scaling
        "epoch": s.epoch, "step": s.step, "batch": s.batch, "epoch_batches": s.epoch_batches,
        "best_val_loss": s.best_loss, "best_epoch": s.best_epoch, "mlflow_run_id": s.mlflow_run_id,
        "mlflow_tracking_uri": s.mlflow_uri, "epoch_sums": s.epoch_sums.state_dict() if s.epoch_sums else None,
        "history": s.history, "world_size": dist.world_size(),
        "rng_state": rng_state(), "config": cfg.model_dump(mode="json"),
    }


def restore(cfg: RunConfig, trainer: Trainer, ckpt: dict, path: str) -> None:
    """Continue a run of the same kind: weights, optimizer, schedule, EMA, counters, RNG, MLflow run."""
    load_weights(trainer.raw, ckpt["model_state_dict"], path, "model")
    ck = cfg.checkpoint
    trainer.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
    if ck.refresh_lr:  # a new schedule from the configured learning rate, counted from here
        for group in trainer.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
    else:
        trainer.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
    if trainer.ema is not None:
        trainer.ema.load_state_dict(ckpt["ema_state_dict"] or ckpt["model_state_dict"], max(ckpt["ema_n_averaged"], 1))
    s = trainer.state
    if ck.reset_epoch:
        log.info("resumed weights from %s; epoch and step counters reset", path)
        return
    s.epoch, s.step, s.batch = ckpt["epoch"], ckpt["step"], ckpt["batch"]
    s.epoch_batches = ckpt["epoch_batches"]
    if ckpt["world_size"] != dist.world_size() and s.epoch_batches:
        s.epoch_batches = s.epoch_batches * ckpt["world_size"] // dist.world_size()
        log.warning("world size changed from %d to %d: the unfinished epoch resumes after about the same events",
                    ckpt["world_size"], dist.world_size())
    s.best_loss, s.best_epoch = ckpt["best_val_loss"], ckpt["best_epoch"]
    s.history = list(ckpt["history"])
    s.mlflow_run_id = None if ck.new_mlflow_run else ckpt["mlflow_run_id"]
    s.mlflow_uri = ckpt.get("mlflow_tracking_uri")
    if s.epoch_batches and dist.is_main():  # rank 0's sums stand for every rank's (exact on one process)
        s.epoch_sums = MetricSums.from_state(ckpt.get("epoch_sums"), ckpt["world_size"], trainer.device)
    set_rng_state(ckpt["rng_state"])
    log.info("resumed from %s: epoch %d, step %d%s", path, s.epoch, s.step,
             f", {s.epoch_batches} batches into the next epoch" if s.epoch_batches else "")
