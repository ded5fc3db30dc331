"""MAE pre-training, from a validated configuration to a run directory.

The recipe: set up the processes, build model, optimizer and schedule, maybe resume, then per
epoch train, validate, log, and write checkpoints, predictions and plots (rank 0 only).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from datetime import datetime
from pathlib import Path

import torch
from tqdm import tqdm

from xecmae.config import MAEConfig
from xecmae.errors import UserError
from xecmae.models import build_mae
from xecmae.models.mae import parameter_summary
from xecmae.train import distributed as dist
from xecmae.train.checkpoint import MAE_BEST, MAE_LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from xecmae.train.ema import EMA
from xecmae.train.loop import MAETrainer, Throughput
from xecmae.train.losses import LossSettings
from xecmae.train.metrics import MetricSums
from xecmae.train.optim import make_optimizer, make_scheduler
from xecmae.train.tracking import Tracker, flatten

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LOSS_CURVES = "loss_curves.png"


# --- the run directory --------------------------------------------------------------------------
def run_directory(cfg: MAEConfig) -> Path:
    """``save_dir/run_name``; a legacy ``save_path`` directory, or a resumed run's own directory."""
    ck = cfg.checkpoint
    if ck.save_path and not ck.save_path.endswith(".pth"):
        return Path(ck.save_path)
    if ck.run_name:
        return Path(ck.save_dir) / ck.run_name
    if ck.resume_from:
        return Path(ck.resume_from).parent
    return Path(ck.save_dir) / datetime.now().strftime("mae_%Y%m%d_%H%M%S")


def check_inputs(cfg: MAEConfig) -> None:
    """Fail before any training on a missing input."""
    from xecmae.data.sources import resolve_inputs
    from xecmae.data.stream import is_sim

    if cfg.data.train_path in (None, "", []):
        raise UserError("data.train_path is not set (give --train_root PATH or set it in the YAML)")
    for key in ("train_path", "val_path"):
        value = getattr(cfg.data, key)
        if value not in (None, "", []) and not is_sim(value):
            resolve_inputs(value)
    if cfg.checkpoint.resume_from and not Path(cfg.checkpoint.resume_from).is_file():
        raise UserError(f"checkpoint.resume_from: {cfg.checkpoint.resume_from} does not exist")


# --- checkpoints ------------------------------------------------------------------------------------
def checkpoint_payload(cfg: MAEConfig, trainer: MAETrainer) -> dict:
    s = trainer.state
    return {
        "kind": "mae",
        "model_state_dict": trainer.raw.state_dict(),
        "ema_state_dict": trainer.ema.state_dict() if trainer.ema else None,
        "ema_n_averaged": trainer.ema.n_averaged if trainer.ema else 0,
        "optimizer_state_dict": trainer.optimizer.state_dict(),
        "scheduler_state_dict": trainer.scheduler.state_dict(),
        "scaler_state_dict": None,  # bf16 autocast needs no loss scaling
        "epoch": s.epoch, "step": s.step, "batch": s.batch, "epoch_batches": s.epoch_batches,
        "best_val_loss": s.best_loss, "best_epoch": s.best_epoch, "mlflow_run_id": s.mlflow_run_id,
        "history": s.history, "world_size": dist.world_size(),
        "rng_state": rng_state(), "config": cfg.model_dump(mode="json"),
    }


def restore(cfg: MAEConfig, trainer: MAETrainer, path: str) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule, EMA, counters, RNG, MLflow run."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "mae":
        raise UserError(f"{path} is not an MAE checkpoint (kind {ckpt.get('kind')!r})")
    trainer.raw.load_state_dict(ckpt["model_state_dict"])
    ck = cfg.checkpoint
    if not ck.refresh_lr:
        trainer.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        trainer.scheduler.load_state_dict(ckpt["scheduler_state_dict"])
    else:
        trainer.optimizer.load_state_dict(ckpt["optimizer_state_dict"])
        for group in trainer.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = cfg.training.lr
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
    set_rng_state(ckpt["rng_state"])
    log.info("resumed from %s: epoch %d, step %d%s", path, s.epoch, s.step,
             f", {s.epoch_batches} batches into the next epoch" if s.epoch_batches else "")


# --- setup ----------------------------------------------------------------------------------------
def build_trainer(cfg: MAEConfig, device: torch.device, total_steps: int) -> MAETrainer:
    t = cfg.training
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    raw = build_mae(cfg).to(device)
    optimizer = make_optimizer(raw, t.lr, t.weight_decay)
    steps_per_epoch = max(total_steps // t.epochs, 1)
    scheduler = make_scheduler(optimizer, t.lr_scheduler, total_steps, round(t.warmup_epochs * steps_per_epoch),
                               t.lr, t.lr_min)
    ema = EMA(raw, t.ema_decay) if t.ema_decay is not None else None
    model: torch.nn.Module = raw
    if dist.is_distributed():
        model = torch.nn.parallel.DistributedDataParallel(
            raw, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile != "none":
        model = torch.compile(model, mode=None if t.compile == "default" else t.compile)
    return MAETrainer(model, raw, optimizer, scheduler, ema, LossSettings.from_training(t),
                      LossSettings.from_training(t, full_metrics=True), seed=t.seed,
                      grad_accum_steps=t.grad_accum_steps, grad_clip=t.grad_clip, amp=t.amp, device=device,
                      max_bad_steps=t.max_bad_steps)


def train_batches_per_epoch(cfg: MAEConfig) -> int:
    from xecmae.data.stream import make_stream

    n = len(make_stream(cfg, "train", dist.rank(), dist.world_size()))
    if n == 0:
        raise UserError(f"data.train_path yields no full batch of {cfg.data.batch_size} per rank and worker: "
                        "lower data.batch_size or data.num_workers, or add events")
    return n


class Interrupt:
    """SIGTERM/SIGUSR1 (SLURM preemption or time limit) ask for a checkpoint at the next step."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        log.warning("signal %d received: saving the last checkpoint at the next step", signum)


# --- the run ------------------------------------------------------------------------------------------
def pretrain(cfg: MAEConfig) -> Path:
    """Run pre-training; returns the run directory."""
    check_inputs(cfg)
    t = cfg.training
    ctx = dist.setup(cfg.distributed.backend, cfg.distributed.timeout_minutes,
                     None if t.device == "auto" else t.device)
    if t.device == "cuda" and ctx.device.type != "cuda":
        raise UserError("training.device is cuda but no GPU is visible")
    try:
        return _pretrain(cfg, ctx.device)
    finally:
        dist.cleanup()


def _pretrain(cfg: MAEConfig, device: torch.device) -> Path:
    t, ck = cfg.training, cfg.checkpoint
    run_dir = Path(dist.broadcast_object(str(run_directory(cfg)) if dist.is_main() else None))
    batches = train_batches_per_epoch(cfg)
    steps = batches // t.grad_accum_steps
    if steps == 0:
        raise UserError(f"training.grad_accum_steps {t.grad_accum_steps} exceeds the {batches} batches per epoch")
    trainer = build_trainer(cfg, device, steps * t.epochs)
    if ck.resume_from:
        restore(cfg, trainer, ck.resume_from)
    has_val = cfg.data.val_path not in (None, "", [])
    main = dist.is_main()
    tracker = Tracker(run_dir, cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.enabled and main)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(cfg.to_yaml())
        effective = cfg.data.batch_size * t.grad_accum_steps * dist.world_size()
        log.info("run directory %s", run_dir)
        log.info("model %s: %.2f M parameters on %s%s", cfg.model.size,
                 sum(p.numel() for p in trainer.raw.parameters()) / 1e6, device,
                 " (bf16 autocast)" if trainer.amp else "")
        log.info("effective batch %d = %d per rank x %d accumulation x %d rank(s); lr %.3g (%s schedule); "
                 "%d steps per epoch", effective, cfg.data.batch_size, t.grad_accum_steps, dist.world_size(),
                 t.lr, t.lr_scheduler, steps)
        if not has_val:
            log.warning("no data.val_path: the best checkpoint is chosen by the training loss")
        run_name = cfg.mlflow.run_name or run_dir.name
        trainer.state.mlflow_run_id = tracker.start(run_name, trainer.state.mlflow_run_id)
        if trainer.state.step == 0:
            tracker.log_params(flatten(cfg.model_dump(mode="json")))
        tracker.log_artifact(run_dir / CONFIG_FILE)
    interrupt = Interrupt()
    status = "FAILED"
    try:
        stopped = _epochs(cfg, trainer, tracker, run_dir, batches, has_val, interrupt)
        status = "KILLED" if stopped else "FINISHED"
    finally:
        if main:
            tracker.end(status)
    if main:
        log.info("done: %s", ", ".join(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))))
    return run_dir


def _epochs(cfg: MAEConfig, trainer: MAETrainer, tracker: Tracker, run_dir: Path, batches: int,
            has_val: bool, interrupt: Interrupt) -> bool:
    """Train the remaining epochs; True if stopped early (max_steps or a signal)."""
    from xecmae.data.stream import make_loader

    t, ck = cfg.training, cfg.checkpoint
    state = trainer.state
    main = dist.is_main()
    for epoch in range(state.epoch, t.epochs):
        loader = make_loader(cfg, "train", dist.rank(), dist.world_size(), epoch)
        sums, throughput = MetricSums(), Throughput()
        interval = MetricSums()
        skip = state.epoch_batches
        bar = tqdm(total=batches, initial=skip, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not main,
                   dynamic_ncols=True, leave=False)
        for index, batch in enumerate(loader):
            if index < skip:
                continue  # already trained on before the interruption
            if index >= batches:
                break
            stats = trainer.train_step(batch)
            sums.add(stats)
            interval.add(stats)
            throughput.add(len(batch["x"]) * dist.world_size())
            bar.update(1)
            stepped = state.batch % t.grad_accum_steps == 0
            if stepped and state.step % t.log_interval == 0:
                trainer.check_health()
                values = interval.compute()
                interval.reset()
                if main:
                    bar.set_postfix(loss=f"{values.get('total_loss', math.nan):.4g}", ev_s=f"{throughput.rate():.0f}")
                    tracker.log_metrics({f"step/{k}": v for k, v in values.items()}
                                        | {"step/lr": trainer.scheduler.get_last_lr()[0]}, step=state.step)
            if stepped and ck.save_every_steps and state.step % ck.save_every_steps == 0 and main:
                save_checkpoint(checkpoint_payload(cfg, trainer), run_dir / MAE_LAST)
            if stepped and ((t.max_steps and state.step >= t.max_steps) or interrupt.requested):
                bar.close()
                if main:
                    save_checkpoint(checkpoint_payload(cfg, trainer), run_dir / MAE_LAST)
                    log.info("stopped at step %d (%s); resume with --resume_from %s", state.step,
                             "max_steps" if not interrupt.requested else "signal", run_dir / MAE_LAST)
                return True
        bar.close()
        trainer.check_health()
        rate = throughput.rate()
        sums.reduce()
        train_metrics = sums.compute()
        state.epoch, state.epoch_batches = epoch + 1, 0
        _end_of_epoch(cfg, trainer, tracker, run_dir, train_metrics, rate, has_val)
    return False


def _end_of_epoch(cfg: MAEConfig, trainer: MAETrainer, tracker: Tracker, run_dir: Path,
                  train_metrics: dict[str, float], rate: float, has_val: bool) -> None:
    from xecmae.data.stream import make_loader

    t, ck = cfg.training, cfg.checkpoint
    state, epoch = trainer.state, trainer.state.epoch
    last = epoch == t.epochs
    want_predictions = ck.save_predictions and has_val and (epoch % ck.root_save_interval == 0 or last)
    writer = _prediction_writer(cfg, run_dir, epoch) if want_predictions and dist.is_main() else None
    val_metrics: dict[str, float] = {}
    started = time.perf_counter()
    if has_val:
        loader = make_loader(cfg, "val", dist.rank(), dist.world_size(), epoch)
        try:
            val_metrics = trainer.evaluate(loader, on_batch=writer.add_batch if writer else None)
        except BaseException:
            if writer:
                writer.abort()
            raise
    record = {"epoch": epoch, "lr": trainer.scheduler.get_last_lr()[0], "events_per_s": rate}
    record |= {f"train/{k}": v for k, v in train_metrics.items()}
    record |= {f"val/{k}": v for k, v in val_metrics.items()}
    state.history.append(record)
    score = val_metrics.get("total_loss", train_metrics.get("total_loss", math.inf))
    improved = score < state.best_loss
    if improved:
        state.best_loss, state.best_epoch = score, epoch
    if not dist.is_main():
        dist.barrier()
        return
    log.info("epoch %d/%d  train %.5f  val %s  %.0f events/s  (%.0f s validation)%s", epoch, t.epochs,
             train_metrics.get("total_loss", math.nan),
             f"{val_metrics['total_loss']:.5f}" if "total_loss" in val_metrics else "-", rate,
             time.perf_counter() - started, "  best" if improved else "")
    payload = checkpoint_payload(cfg, trainer)
    save_checkpoint(payload, run_dir / MAE_LAST)
    if improved:
        save_checkpoint(payload, run_dir / MAE_BEST)
        if ck.save_path and ck.save_path.endswith(".pth"):
            save_checkpoint(payload, ck.save_path)
    if ck.save_interval and epoch % ck.save_interval == 0:
        save_checkpoint(payload, run_dir / f"mae_checkpoint_epoch_{epoch}.pth")
    if (ck.save_interval and epoch % ck.save_interval == 0) or last:
        save_checkpoint(trainer.eval_model().encoder.state_dict(), run_dir / f"mae_encoder_epoch_{epoch}.pth")
    from xecmae.analysis.plots import plot_loss_curves

    plot_loss_curves(state.history, run_dir / LOSS_CURVES, title=run_dir.name)
    tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
    tracker.log_artifact(run_dir / LOSS_CURVES, "plots")
    if writer:
        path = writer.close()
        display = _event_display(path, run_dir / f"event_display_epoch_{epoch}.png")
        log.info("predictions: %s; event display: %s", path, display)
        tracker.log_artifact(display, "plots")
    dist.barrier()


class _BatchWriter:
    """Feeds validation batches to a PredictionWriter until it holds ``limit`` events."""

    def __init__(self, writer, limit: int):
        self.writer, self.limit, self.count = writer, limit, 0

    def add_batch(self, batch, hidden, pred) -> None:
        room = self.limit - self.count
        if room <= 0:
            return
        n = min(room, len(batch["x"]))
        self.writer.add(event=batch["event"][:n].numpy(), run=batch["run"][:n].numpy(),
                        x=batch["x"][:n].numpy(), valid=batch["valid"][:n].numpy(),
                        hidden=hidden[:n].cpu().numpy(), pred=pred[:n].float().cpu().numpy())
        self.count += n

    def close(self):
        return self.writer.close()

    def abort(self):
        self.writer.abort()


def _prediction_writer(cfg: MAEConfig, run_dir: Path, epoch: int) -> _BatchWriter:
    from xecmae.analysis.predictions import PredictionWriter, prediction_path

    writer = PredictionWriter(prediction_path(run_dir, epoch), tuple(cfg.model.predict_channels), cfg.normalizer())
    return _BatchWriter(writer, cfg.checkpoint.predictions_max_events)


def _event_display(predictions: Path, out: Path) -> Path:
    from xecmae.analysis.display import prediction_event_figure

    fig = prediction_event_figure(predictions, entry=0)
    fig.savefig(out, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def summary(cfg: MAEConfig) -> str:
    """Parameters per part of the configured model."""
    return parameter_summary(build_mae(cfg))

