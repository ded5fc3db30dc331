"""Starting a run from another run's weights: what a checkpoint is, and loading its encoder.

A dict with ``model_state_dict`` whose keys start with ``heads.`` is a full regression
checkpoint; keys starting with ``encoder.`` mark an MAE (or inpainter) checkpoint, whose encoder
is taken (its EMA weights when it has them); a bare state_dict is raw encoder weights. Anything
else is refused, as is a checkpoint made with another normalization or encoder size: loading
it would silently give a different model.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from xecmae.config import ConfigError, RunConfig
from xecmae.models.spec import shape_keys
from xecmae.train.architecture import ENCODER_KEYS, checkpoint_kind

log = logging.getLogger(__name__)


def resume_keys(cfg: RunConfig) -> tuple[str, ...]:
    """The model keys a run must share with the checkpoint it continues: its spec's state-dict fields, and size."""
    return ("size", *shape_keys(type(cfg.model)))


def compatibility_problems(saved: dict, cfg: RunConfig, model_keys: tuple[str, ...] = ENCODER_KEYS) -> list[str]:
    """``section.key: checkpoint A, configuration B`` for every setting that makes another model."""
    problems = []
    mine = cfg.model_dump(mode="json")
    for key, value in saved.get("normalization", {}).items():
        if mine["normalization"].get(key) != value:
            ours = mine["normalization"].get(key)
            problems.append(f"normalization.{key}: checkpoint {value!r}, configuration {ours!r}")
    saved_threshold = saved.get("training", {}).get("time", {}).get("npho_threshold")
    if saved_threshold is not None and saved_threshold != cfg.training.time.npho_threshold:
        problems.append(f"training.time.npho_threshold: checkpoint {saved_threshold!r}, "
                        f"configuration {cfg.training.time.npho_threshold!r}")
    for key in model_keys:
        if key not in ENCODER_KEYS and key not in saved.get("model", {}):
            continue
        theirs, ours = saved.get("model", {}).get(key), mine["model"].get(key)
        if isinstance(theirs, list | tuple):
            theirs = list(theirs)
        if isinstance(ours, list | tuple):
            ours = list(ours)
        if theirs != ours:
            problems.append(f"model.{key}: checkpoint {theirs!r}, configuration {ours!r}")
    return problems


def check_compatible(saved: dict | None, cfg: RunConfig, path: str) -> None:
    """Refuse a checkpoint whose normalization or encoder shape differs from the configuration."""
    if not saved:
        return
    problems = compatibility_problems(saved, cfg)
    if problems:
        raise ConfigError(f"{path} was made with different settings; refusing to load it:\n  " + "\n  ".join(problems))


def check_resumable(saved: dict | None, cfg: RunConfig, path: str) -> None:
    """Refuse to continue a run with another model or normalization: one line naming every difference."""
    problems = compatibility_problems(saved or {}, cfg, resume_keys(cfg))
    if problems:
        raise ConfigError(f"{path} cannot be resumed with these settings (resume with the checkpoint's own, or "
                          f"start a new run): {'; '.join(problems)}")


def preferred_weights(ckpt: dict) -> tuple[dict[str, torch.Tensor], bool]:
    """A full checkpoint's model weights, its EMA weights when it kept them; and whether they are EMA."""
    use_ema = bool(ckpt.get("ema_state_dict"))
    return (ckpt["ema_state_dict"] if use_ema else ckpt["model_state_dict"]), use_ema


def encoder_state(ckpt: dict, path: str) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """The encoder weights of any checkpoint kind, which weights they are, and the keys left out."""
    kind = checkpoint_kind(ckpt, path)
    if kind == "encoder":
        state = {k.removeprefix("encoder."): v for k, v in ckpt.items()}
        return state, "bare encoder weights", []
    state, use_ema = preferred_weights(ckpt)
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    skipped = [k for k in state if not k.startswith("encoder.")]
    return encoder, f"{kind} checkpoint, {'EMA' if use_ema else 'raw'} weights", skipped


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    """``load_state_dict`` with shape mismatches and missing keys reported by name, both shapes shown."""
    mine = module.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(mine[k].shape)}"
             for k, v in state.items() if k in mine and mine[k].shape != v.shape]
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    if wrong or missing or unexpected:
        lines = wrong[:10] + [f"... and {len(wrong) - 10} more tensors of another shape"] * (len(wrong) > 10)
        lines += [f"missing in checkpoint: {', '.join(missing[:8])}"] * bool(missing)
        lines += [f"not in model: {', '.join(unexpected[:8])}"] * bool(unexpected)
        raise ConfigError(f"{path}: the {what} does not fit the configured model:\n  " + "\n  ".join(lines))
    module.load_state_dict(state)


def init_encoder(model: nn.Module, ckpt: dict, path: str, cfg: RunConfig) -> None:
    """Load only the encoder of ``ckpt`` into ``model.encoder``."""
    check_compatible(ckpt.get("config") if checkpoint_kind(ckpt, path) != "encoder" else None, cfg, path)
    state, source, skipped = encoder_state(ckpt, path)
    load_weights(model.encoder, state, path, "encoder")
    log.info("loaded %d encoder tensors from %s (%s); skipped %d other tensors%s", len(state), path, source,
             len(skipped), f" ({_prefixes(skipped)})" if skipped else "")


def _prefixes(keys: list[str]) -> str:
    heads = sorted({".".join(k.split(".")[:2]) for k in keys})
    return ", ".join(heads[:8]) + (", ..." if len(heads) > 8 else "")
