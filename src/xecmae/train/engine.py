"""The training run shared by pre-training, inpainting and fine-tuning.

The recipe: set up the processes, build model, optimizer and schedule, maybe resume (or start
from another run's weights), then per epoch :func:`~xecmae.train.epoch.train_one_epoch`,
validate, record, and let the checkpoint policy (:mod:`xecmae.train.policy`) write its files
and the hooks (:mod:`xecmae.train.hooks`: progress bar, MLflow, whatever the caller attaches)
report, on rank 0. What differs between kinds of run is a :class:`RunSpec`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from xecmae.config import RunConfig
from xecmae.data.atomic import write_text
from xecmae.errors import UserError
from xecmae.runtime import large_blocks_from_heap
from xecmae.train import distributed as dist
from xecmae.train import rundir
from xecmae.train.accelerator import accelerator_settings, distributed_model
from xecmae.train.checkpoint import load_checkpoint
from xecmae.train.ema import EMA
from xecmae.train.epoch import EpochReport, EpochResult, Interrupt, train_one_epoch, validate
from xecmae.train.hooks import CONFIG_FILE, EpochEnd, Hook, Hooks, ProgressBar, RunStart, Tracking
from xecmae.train.initialize import check_resumable, checkpoint_kind
from xecmae.train.loop import Objective, Trainer
from xecmae.train.optim import make_optimizer, make_scheduler
from xecmae.train.policy import CheckpointPolicy, Checkpoints
from xecmae.train.preflight import check_data, check_outputs
from xecmae.train.resume import checkpoint_payload, restore

if TYPE_CHECKING:
    from xecmae.data.loaders import EpochLoader

log = logging.getLogger(__name__)


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
    from xecmae.data.sources import is_sim, resolve_inputs

    if cfg.data.train_path in (None, "", []):
        raise UserError("data.train_path is not set (give --train_root PATH or set it in the YAML)")
    for key in ("train_path", "val_path"):
        value = getattr(cfg.data, key)
        if value not in (None, "", []) and not is_sim(value):
            resolve_inputs(value)
    if cfg.checkpoint.resume_from and not Path(cfg.checkpoint.resume_from).is_file():
        raise UserError(f"checkpoint.resume_from: {cfg.checkpoint.resume_from} does not exist")


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


# --- the run ------------------------------------------------------------------------------------------
def default_hooks(cfg: RunConfig) -> list[Hook]:
    """What every run reports: the progress bar and MLflow."""
    return [ProgressBar(cfg.training.epochs), Tracking(cfg)]


def fit(cfg: RunConfig, spec: RunSpec, hooks: Sequence[Hook] = ()) -> Path:
    """Run training of any kind; returns the run directory.

    ``hooks`` run after :func:`default_hooks`, on rank 0 (e.g. the plots of
    :mod:`xecmae.analysis.hooks`, which the command line attaches).
    """
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
            return _fit(cfg, spec, ctx.device, hooks)
    finally:
        dist.cleanup()


def _fit(cfg: RunConfig, spec: RunSpec, device: torch.device, hooks: Sequence[Hook]) -> Path:
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
        return _run(cfg, spec, trainer, run_dir, loaders, Hooks([*default_hooks(cfg), *hooks] if main else []))
    finally:
        rundir.release(run_dir)


def _announce(cfg: RunConfig, spec: RunSpec, trainer: Trainer, run_dir: Path, steps: int, has_val: bool) -> None:
    t = cfg.training
    effective = cfg.data.batch_size * t.grad_accum_steps * dist.world_size()
    trainable = sum(p.numel() for p in trainer.raw.parameters() if p.requires_grad)
    log.info("%s run directory %s", spec.kind, run_dir)
    log.info("model %s: %.2f M parameters (%.2f M trained) on %s%s", cfg.model.size,
             sum(p.numel() for p in trainer.raw.parameters()) / 1e6, trainable / 1e6, trainer.device,
             " (bf16 autocast)" if trainer.amp else "")
    log.info("effective batch %d = %d per rank x %d accumulation x %d rank(s); lr %.3g (%s schedule); "
             "%d steps per epoch", effective, cfg.data.batch_size, t.grad_accum_steps, dist.world_size(),
             t.lr, t.lr_scheduler, steps)
    if not has_val:
        log.warning("no data.val_path: the best checkpoint is chosen by the training loss")


def _run(cfg: RunConfig, spec: RunSpec, trainer: Trainer, run_dir: Path,
         loaders: tuple[EpochLoader, EpochLoader | None], hooks: Hooks) -> Path:
    main = dist.is_main()
    policy = CheckpointPolicy.from_config(cfg.checkpoint, run_dir, spec.kind, spec.encoder_export)
    checkpoints = Checkpoints(policy, payload=lambda: checkpoint_payload(cfg, spec.kind, trainer),
                              encoder=lambda: trainer.eval_model().encoder.state_dict(), enabled=main)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
        _announce(cfg, spec, trainer, run_dir, len(loaders[0]) // cfg.training.grad_accum_steps,
                  loaders[1] is not None)
        hooks.run_start(RunStart(cfg, spec.kind, run_dir, trainer))
    interrupt = Interrupt()
    status = "FAILED"
    try:
        stopped = _epochs(cfg, spec, trainer, run_dir, loaders, interrupt, checkpoints, hooks)
        status = "KILLED" if stopped else "FINISHED"
    finally:
        hooks.run_end(status)
    if main:
        log.info("done: %s", ", ".join(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))))
    return run_dir


def _epochs(cfg: RunConfig, spec: RunSpec, trainer: Trainer, run_dir: Path,
            loaders: tuple[EpochLoader, EpochLoader | None], interrupt: Interrupt, checkpoints: Checkpoints,
            hooks: Hooks) -> bool:
    """Train the remaining epochs; True if stopped early (max_steps or a signal)."""
    t = cfg.training
    train_loader, val_loader = loaders
    for epoch in range(trainer.state.epoch, t.epochs):
        result = train_one_epoch(trainer, train_loader.loader(epoch), batches=len(train_loader),
                                 log_interval=t.log_interval, max_steps=t.max_steps, interrupt=interrupt,
                                 checkpoints=checkpoints, hooks=hooks)
        if result.stopped:
            for path in checkpoints.at_stop():
                log.info("stopped at step %d (%s); resume with --resume_from %s", trainer.state.step,
                         result.stopped, path)
            dist.barrier()  # no rank leaves before the checkpoint is written
            return True
        _end_of_epoch(cfg, spec, trainer, run_dir, result, val_loader, checkpoints, hooks)
    return False


def _end_of_epoch(cfg: RunConfig, spec: RunSpec, trainer: Trainer, run_dir: Path, result: EpochResult,
                  val_loader: EpochLoader | None, checkpoints: Checkpoints, hooks: Hooks) -> None:
    """Validate, record the epoch, choose the best; on rank 0 the epoch's checkpoints, report and hooks."""
    state, epoch = trainer.state, trainer.state.epoch
    final = epoch == cfg.training.epochs
    report: EpochReport | None = None
    if spec.make_report and val_loader is not None:
        report = spec.make_report(cfg, run_dir, epoch, final)
    val_metrics: dict[str, float] = {}
    started = time.perf_counter()
    if val_loader is not None:
        try:
            val_metrics = validate(trainer, val_loader.loader(epoch), report)
        except UserError:  # e.g. a damaged validation file: keep the epoch's training
            for path in checkpoints.at_stop():
                log.warning("validation failed; the epoch's training is kept in %s", path)
            raise
    train_metrics = result.metrics
    record = {"epoch": epoch, "lr": trainer.scheduler.get_last_lr()[0], "events_per_s": result.events_per_s}
    record |= {f"train/{k}": v for k, v in train_metrics.items()}
    record |= {f"val/{k}": v for k, v in val_metrics.items()}
    state.history.append(record)
    score = val_metrics.get("total_loss", train_metrics.get("total_loss", math.inf))
    improved = score < state.best_loss
    if improved:
        state.best_loss, state.best_epoch = score, epoch
    if dist.is_main():
        log.info("epoch %d/%d  train %.5f  val %s  %.0f events/s  (%.0f s validation)%s", epoch,
                 cfg.training.epochs, train_metrics.get("total_loss", math.nan),
                 f"{val_metrics['total_loss']:.5f}" if "total_loss" in val_metrics else "-", result.events_per_s,
                 time.perf_counter() - started, "  best" if improved else "")
        checkpoints.end_of_epoch(epoch, improved, final)
        files = (report.write(run_dir, hooks) if report else None) or []
        hooks.epoch_end(EpochEnd(run_dir, epoch, record, state.history, improved, list(files)))
    dist.barrier()
