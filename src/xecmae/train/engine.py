"""The training run shared by pre-training, inpainting and fine-tuning.

The recipe: set up the processes, build model, optimizer and schedule, maybe resume (or start
from another run's weights), then per epoch train, validate, log, and write checkpoints and
reports (rank 0 only). What differs between kinds of run is a :class:`RunSpec`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from xecmae.config import RunConfig
from xecmae.errors import UserError
from xecmae.runtime import large_blocks_from_heap
from xecmae.train import distributed as dist
from xecmae.train import rundir
from xecmae.train.accelerator import accelerator_settings, distributed_model
from xecmae.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from xecmae.train.ema import EMA
from xecmae.train.initialize import check_resumable, checkpoint_kind, load_weights
from xecmae.train.loop import Objective, Throughput, Trainer
from xecmae.train.metrics import MetricSums
from xecmae.train.optim import make_optimizer, make_scheduler
from xecmae.train.preflight import check_data, check_outputs
from xecmae.train.tracking import Tracker, flatten, resume_uri

if TYPE_CHECKING:
    from xecmae.data.loaders import EpochLoader

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
LOSS_CURVES = "loss_curves.png"


class EpochReport(Protocol):
    """Sees the validation batches of one epoch and turns them into metrics and files."""

    def on_batch(self, batch: dict[str, torch.Tensor], extras: Any) -> None: ...

    def finish(self) -> dict[str, float]:
        """Extra validation metrics; runs on every rank (collectives allowed)."""

    def write(self, run_dir: Path, tracker: Tracker) -> None:
        """Files and plots; rank 0 only."""

    def abort(self) -> None: ...


@dataclass
class RunSpec:
    """What makes a kind of run: its model, objective, weights to start from, and reports."""

    kind: str  # "mae" | "inpainter" | "regressor": checkpoint names and the checkpoint's "kind"
    build_model: Callable[[RunConfig], nn.Module]
    objective: Objective
    truth: bool = False  # the loaders read the truth branches
    init_from: Callable[[nn.Module, dict, str], None] | None = None  # weights from another kind's checkpoint
    param_groups: Callable[[nn.Module, RunConfig], list[dict]] | None = None
    make_report: Callable[[RunConfig, Path, int, bool], EpochReport | None] | None = None
    encoder_export: bool = True

    def file(self, what: str) -> str:
        return f"{self.kind}_{what}.pth"


# --- the run directory --------------------------------------------------------------------------
def run_directory(cfg: RunConfig, kind: str) -> Path:
    """``save_dir/run_name``; a legacy ``save_path`` directory, or a resumed run's own directory."""
    ck = cfg.checkpoint
    if ck.save_path and not ck.save_path.endswith(".pth"):
        return Path(ck.save_path)
    if ck.run_name:
        return Path(ck.save_dir) / ck.run_name
    if ck.resume_from and Path(ck.resume_from).name.startswith(f"{kind}_checkpoint"):
        return Path(ck.resume_from).parent
    return Path(ck.save_dir) / datetime.now().strftime(f"{kind}_%Y%m%d_%H%M%S")


def check_inputs(cfg: RunConfig) -> None:
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
def checkpoint_payload(cfg: RunConfig, spec: RunSpec, trainer: Trainer) -> dict:
    s = trainer.state
    return {
        "kind": spec.kind,
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


# --- setup ----------------------------------------------------------------------------------------
def build_trainer(cfg: RunConfig, spec: RunSpec, device: torch.device, total_steps: int) -> Trainer:
    t = cfg.training
    torch.manual_seed(t.seed)  # identical initial weights on every rank
    raw = spec.build_model(cfg).to(device)
    resumed = None
    path = cfg.checkpoint.resume_from
    if path:
        ckpt = load_checkpoint(path)
        kind = checkpoint_kind(ckpt, path)
        if kind == spec.kind:
            check_resumable(ckpt.get("config"), cfg, path)
            resumed = ckpt
        elif spec.init_from is not None:
            spec.init_from(raw, ckpt, path)  # start from another run's weights; fresh counters
        else:
            raise UserError(f"{path} is a {kind} checkpoint; it cannot resume a {spec.kind} run")
    groups = spec.param_groups(raw, cfg) if spec.param_groups else None
    optimizer = make_optimizer(raw, t.lr, t.weight_decay, groups=groups)
    steps_per_epoch = max(total_steps // t.epochs, 1)
    scheduler = make_scheduler(optimizer, t.lr_scheduler, total_steps, round(t.warmup_epochs * steps_per_epoch),
                               t.lr, t.lr_min)
    ema = EMA(raw, t.ema_decay) if t.ema_decay is not None else None  # starts from the loaded weights
    model: nn.Module = raw
    if dist.is_distributed():
        model = distributed_model(raw, device)
    if t.compile != "none":
        model = torch.compile(model, mode=None if t.compile == "default" else t.compile)
    trainer = Trainer(model, raw, optimizer, scheduler, ema, spec.objective, seed=t.seed,
                      grad_accum_steps=t.grad_accum_steps, grad_clip=t.grad_clip, amp=t.amp, cpu_amp=t.cpu_amp,
                      device=device, max_bad_steps=t.max_bad_steps)
    if resumed is not None:
        restore(cfg, trainer, resumed, path)
    return trainer


def run_loaders(cfg: RunConfig, truth: bool, has_val: bool) -> tuple[EpochLoader, EpochLoader | None]:
    """The training and validation loaders, each planned once for the whole run."""
    from xecmae.data.loaders import EpochLoader

    train = EpochLoader(cfg, "train", dist.rank(), dist.world_size(), truth=truth)
    if len(train) == 0:
        raise UserError(f"data.train_path yields no full batch of {cfg.data.batch_size} per rank and worker: "
                        "lower data.batch_size or data.num_workers, or add events")
    val = EpochLoader(cfg, "val", dist.rank(), dist.world_size(), truth=truth, persistent=False) if has_val else None
    return train, val


class Interrupt:
    """SIGTERM/SIGUSR1 (SLURM preemption or time limit) ask for a checkpoint at the next step.

    A signal may reach one rank only (or the ranks at different steps): :meth:`stop_now` asks
    every rank, so all of them stop after the same step instead of one waiting forever in the
    next gradient all-reduce while another saves.
    """

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(ValueError):  # not the main thread
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        log.warning("signal %d received: saving the last checkpoint at the next step", signum)

    def stop_now(self) -> bool:
        """Whether any rank has been signalled (a collective: every rank calls it after every optimizer step)."""
        return dist.any_rank(self.requested)


# --- the run ------------------------------------------------------------------------------------------
def fit(cfg: RunConfig, spec: RunSpec) -> Path:
    """Run training of any kind; returns the run directory."""
    check_inputs(cfg)
    check_outputs(cfg)
    check_data(cfg, spec.truth)
    t = cfg.training
    ctx = dist.setup(cfg.distributed.backend, cfg.distributed.timeout_minutes,
                     None if t.device == "auto" else t.device)
    if t.device == "cuda" and ctx.device.type != "cuda":
        raise UserError("training.device is cuda but no GPU is visible")
    try:
        with large_blocks_from_heap(ctx.device.type == "cpu"), \
                accelerator_settings(ctx.device, amp=t.amp, deterministic=t.deterministic):
            return _fit(cfg, spec, ctx.device)
    finally:
        dist.cleanup()


def _fit(cfg: RunConfig, spec: RunSpec, device: torch.device) -> Path:
    t = cfg.training
    run_dir = Path(dist.broadcast_object(str(run_directory(cfg, spec.kind)) if dist.is_main() else None))
    has_val = cfg.data.val_path not in (None, "", [])
    loaders = run_loaders(cfg, spec.truth, has_val)
    batches = len(loaders[0])
    steps = batches // t.grad_accum_steps
    if steps == 0:
        raise UserError(f"training.grad_accum_steps {t.grad_accum_steps} exceeds the {batches} batches per epoch")
    trainer = build_trainer(cfg, spec, device, steps * t.epochs)
    main = dist.is_main()
    if main:
        rundir.claim(run_dir, spec.kind, cfg.checkpoint.resume_from, cfg.checkpoint.overwrite)
    try:
        return _run(cfg, spec, trainer, run_dir, loaders)
    finally:
        rundir.release(run_dir)


def _run(cfg: RunConfig, spec: RunSpec, trainer: Trainer, run_dir: Path,
         loaders: tuple[EpochLoader, EpochLoader | None]) -> Path:
    t, main, device = cfg.training, dist.is_main(), trainer.device
    steps, has_val = len(loaders[0]) // t.grad_accum_steps, loaders[1] is not None
    tracker = Tracker(run_dir, resume_uri(cfg.mlflow.tracking_uri, trainer.state.mlflow_uri), cfg.mlflow.experiment,
                      cfg.mlflow.enabled and main)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(cfg.to_yaml())
        effective = cfg.data.batch_size * t.grad_accum_steps * dist.world_size()
        trainable = sum(p.numel() for p in trainer.raw.parameters() if p.requires_grad)
        log.info("%s run directory %s", spec.kind, run_dir)
        log.info("model %s: %.2f M parameters (%.2f M trained) on %s%s", cfg.model.size,
                 sum(p.numel() for p in trainer.raw.parameters()) / 1e6, trainable / 1e6, device,
                 " (bf16 autocast)" if trainer.amp else "")
        log.info("effective batch %d = %d per rank x %d accumulation x %d rank(s); lr %.3g (%s schedule); "
                 "%d steps per epoch", effective, cfg.data.batch_size, t.grad_accum_steps, dist.world_size(),
                 t.lr, t.lr_scheduler, steps)
        if not has_val:
            log.warning("no data.val_path: the best checkpoint is chosen by the training loss")
        trainer.state.mlflow_run_id = tracker.start(cfg.mlflow.run_name or run_dir.name, trainer.state.mlflow_run_id,
                                                    resumed_from=cfg.checkpoint.resume_from)
        trainer.state.mlflow_uri = tracker.uri if trainer.state.mlflow_run_id else None
        if trainer.state.step == 0:
            tracker.log_params(flatten(cfg.model_dump(mode="json")))
        tracker.log_artifact(run_dir / CONFIG_FILE)
    interrupt = Interrupt()
    status = "FAILED"
    try:
        stopped = _epochs(cfg, spec, trainer, tracker, run_dir, loaders, interrupt)
        status = "KILLED" if stopped else "FINISHED"
    finally:
        if main:
            tracker.end(status)
    if main:
        log.info("done: %s", ", ".join(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))))
    return run_dir


def _epochs(cfg: RunConfig, spec: RunSpec, trainer: Trainer, tracker: Tracker, run_dir: Path,
            loaders: tuple[EpochLoader, EpochLoader | None], interrupt: Interrupt) -> bool:
    """Train the remaining epochs; True if stopped early (max_steps or a signal)."""
    t, ck = cfg.training, cfg.checkpoint
    state = trainer.state
    main = dist.is_main()
    train_loader, val_loader = loaders
    batches = len(train_loader)
    for epoch in range(state.epoch, t.epochs):
        loader = train_loader.loader(epoch)
        skip = state.epoch_batches
        sums = state.epoch_sums if skip and state.epoch_sums is not None else MetricSums()
        interval, throughput = MetricSums(), Throughput()
        state.epoch_sums, any_valid = sums, skip > 0
        bar = tqdm(total=batches, initial=skip, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not main,
                   dynamic_ncols=True, leave=False)
        for index, batch in enumerate(loader):
            if index < skip:
                continue  # already trained on before the interruption
            if index >= batches:
                break
            any_valid = any_valid or bool(batch["valid"].any())  # read until the first sensor that counts
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
                save_checkpoint(checkpoint_payload(cfg, spec, trainer), run_dir / spec.file("checkpoint_last"))
            signalled = stepped and interrupt.stop_now()
            if stepped and ((t.max_steps and state.step >= t.max_steps) or signalled):
                bar.close()
                if main:
                    save_checkpoint(checkpoint_payload(cfg, spec, trainer), run_dir / spec.file("checkpoint_last"))
                    log.info("stopped at step %d (%s); resume with --resume_from %s", state.step,
                             "signal" if signalled else "max_steps", run_dir / spec.file("checkpoint_last"))
                dist.barrier()  # no rank leaves before the checkpoint is written
                return True
        bar.close()
        trainer.check_health()
        rate = throughput.rate()
        if not dist.all_reduce_sum(torch.tensor(float(any_valid), device=trainer.device)).item():
            raise UserError("data.train_path: no event of this epoch has a single valid sensor (every npho is "
                            "dead, NaN or inf): nothing to learn from; check the input files")
        sums.reduce()
        train_metrics = sums.compute()
        state.epoch, state.epoch_batches, state.epoch_sums = epoch + 1, 0, None
        _end_of_epoch(cfg, spec, trainer, tracker, run_dir, train_metrics, rate, val_loader)
    return False


def _end_of_epoch(cfg: RunConfig, spec: RunSpec, trainer: Trainer, tracker: Tracker, run_dir: Path,
                  train_metrics: dict[str, float], rate: float, val_loader: EpochLoader | None) -> None:
    t, ck = cfg.training, cfg.checkpoint
    has_val = val_loader is not None
    state, epoch = trainer.state, trainer.state.epoch
    last = epoch == t.epochs
    report = spec.make_report(cfg, run_dir, epoch, last) if (spec.make_report and has_val) else None
    val_metrics: dict[str, float] = {}
    started = time.perf_counter()
    if has_val:
        try:
            val_metrics = trainer.evaluate(val_loader.loader(epoch), on_batch=report.on_batch if report else None)
            if report:
                val_metrics |= report.finish()
        except BaseException as exc:
            if report:
                report.abort()
            if isinstance(exc, UserError) and dist.is_main():  # e.g. a damaged validation file: keep the epoch
                log.warning("validation failed; the epoch's training is kept in %s", save_checkpoint(
                    checkpoint_payload(cfg, spec, trainer), run_dir / spec.file("checkpoint_last")))
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
    payload = checkpoint_payload(cfg, spec, trainer)
    if improved:  # best before last: a kill in between never leaves `last` naming a best that is not there
        save_checkpoint(payload, run_dir / spec.file("checkpoint_best"))
        if ck.save_path and ck.save_path.endswith(".pth"):
            save_checkpoint(payload, ck.save_path)
    save_checkpoint(payload, run_dir / spec.file("checkpoint_last"))
    if ck.save_interval and epoch % ck.save_interval == 0:
        save_checkpoint(payload, run_dir / spec.file(f"checkpoint_epoch_{epoch}"))
    if spec.encoder_export and ((ck.save_interval and epoch % ck.save_interval == 0) or last):
        save_checkpoint(trainer.eval_model().encoder.state_dict(), run_dir / spec.file(f"encoder_epoch_{epoch}"))
    from xecmae.analysis.plots import plot_loss_curves

    plot_loss_curves(state.history, run_dir / LOSS_CURVES, title=run_dir.name)
    tracker.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
    tracker.log_artifact(run_dir / LOSS_CURVES, "plots")
    if report:
        report.write(run_dir, tracker)
    dist.barrier()
