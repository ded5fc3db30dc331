"""A configuration from YAML: read the file, move legacy keys, apply overrides, validate.

Each step can fail with a :class:`~xecmae.config.ConfigError` that names the offending key, in
words for the person who wrote the file (``model.mask_ration: unknown key (did you mean
mask_ratio?)``). The YAML file is only read, never written back.
"""

from __future__ import annotations

import copy
import difflib
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from xecmae.config import ConfigError, MAEConfig, Section
from xecmae.sizes import size_conflicts

# --- legacy keys -----------------------------------------------------------------------------
LEGACY_KEYS: dict[str, str] = {
    "training.time_weight": "training.time.weight",
    "training.use_npho_time_weight": "training.time.use_npho_weight",
    "training.npho_threshold": "training.time.npho_threshold",
    "training.time_mask_ratio_scale": "training.time.mask_ratio_scale",
    "model.time_mask_ratio_scale": "training.time.mask_ratio_scale",
    "time_mask_ratio_scale": "training.time.mask_ratio_scale",
    "npho_threshold": "training.time.npho_threshold",
    "use_npho_time_weight": "training.time.use_npho_weight",
}


_MISSING = object()


def _pop(tree: dict, dotted: str) -> Any:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree.get(key)
        if not isinstance(tree, dict):
            return _MISSING
    return tree.pop(leaf, _MISSING)


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        child = tree.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {child!r}")
        tree = child
    tree[leaf] = value


def _get(tree: dict, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def migrate_legacy(raw: dict) -> dict:
    """Move deprecated flat keys to their nested paths (in place), warning once per key."""
    for old, new in LEGACY_KEYS.items():
        value = _pop(raw, old)
        if value is _MISSING:
            continue
        existing = _get(raw, new)
        if existing is not _MISSING and existing != value:
            raise ConfigError(f"{old} (deprecated) and {new} are both set, to {value!r} and {existing!r}; "
                              f"keep only {new}")
        warnings.warn(f"config key '{old}' is deprecated; use '{new}'", FutureWarning, stacklevel=3)
        _set(raw, new, value)
    return raw


# --- errors worded for people ---------------------------------------------------------------
def _section_class(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    cls = schema
    for key in loc:
        field = cls.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            return None
        cls = section_type(field.annotation)
        if cls is None:
            return None
    return cls


def section_type(annotation) -> type[BaseModel] | None:
    """The section class inside a field's annotation (``X``, ``X | None``, ...), or None for a plain value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = section_type(arg)
        if found is not None:
            return found
    return None


def _describe(schema: type[BaseModel], error: dict) -> str:
    loc = tuple(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = _section_class(schema, loc[:-1])
        known = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}?)" if close else f" (valid keys: {', '.join(known)})"
        return f"{'.'.join(loc)}: unknown key{hint}"
    where = ".".join(p for p in loc if not p.startswith(("function-", "constrained-", "tuple[", "list[")))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("model_type", "dict_type"):
        return f"{where}: expected a section (mapping), got {error['input']!r}"
    quiet = error["type"] == "value_error" or isinstance(error.get("input"), dict)
    shown = "" if quiet else f" (got {error.get('input')!r})"
    return f"{where or '<top>'}: {message}{shown}"


def validate(raw: dict, schema: type[Section] = MAEConfig) -> Section:
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        lines = sorted({_describe(schema, e) for e in exc.errors()})
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


# --- loading -------------------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                schema: type[Section] = MAEConfig, preset: dict[str, Any] | None = None) -> Section:
    """YAML file (optional) + dotted overrides -> validated configuration.

    ``preset``: nested sections below the YAML (a command's own starting point).
    """
    raw = read_yaml(path) if path is not None else {}
    raw = _merged(copy.deepcopy(preset or {}), migrate_legacy(raw))
    _refuse_size_hybrid(raw, overrides or {}, path)
    for dotted, value in (overrides or {}).items():
        _set(raw, dotted, value)
    return validate(raw, schema)


def _merged(base: dict, top: dict) -> dict:
    """``top`` over ``base``, section by section (``top`` is not changed)."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _refuse_size_hybrid(raw: dict, overrides: dict[str, Any], path: str | Path | None) -> None:
    """``--size`` against dimensions of the YAML that the flags leave alone: refused, never merged."""
    size, model = overrides.get("model.size"), raw.get("model")
    if size is None or not isinstance(model, dict):
        return
    left = {k: v for k, v in model.items() if f"model.{k}" not in overrides}
    problems = size_conflicts(str(size), left, str(path))
    if problems:
        raise ConfigError(f"--size {size} contradicts the YAML ({'; '.join(problems)}); give the dimensions "
                          "as flags too, or remove them (or model.size) from the YAML")
