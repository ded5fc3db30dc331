"""Command-line flags for configuration keys, the one way a command turns its flags into a config.

:func:`add_config_flags` makes every key of a schema a flag (``--lr`` and ``--training.lr``; the
short name wherever the leaf is unique), plus the aliases of the specification's Quick Start;
:func:`add_key_flag` gives one key a command's own flag (``xecmae inspect --tree``). Either way
the flag's value lands in the namespace as ``cfg:KEY`` and :func:`config_from_args` applies it.
A flag that is not given stays out of the overrides, so the YAML (or the default) holds; an
explicit 0 or false counts.
"""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Union

import yaml
from pydantic import BaseModel

from xecmae.config import ConfigError, MAEConfig, Section
from xecmae.configload import load_config, section_type

# Flags of the specification's Quick Start and of the deprecated flat keys.
FLAG_ALIASES: dict[str, str] = {
    "train_root": "data.train_path",
    "val_root": "data.val_path",
    "time_weight": "training.time.weight",
    "use_npho_time_weight": "training.time.use_npho_weight",
    "time_mask_ratio_scale": "training.time.mask_ratio_scale",
    "run_name": "checkpoint.run_name",
}


def _leaves(schema: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, field in schema.model_fields.items():
        sub = section_type(field.annotation)
        if sub is not None and not _is_scalar_or_list(field.annotation):
            out += _leaves(sub, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field.annotation))
    return out


def _is_scalar_or_list(annotation) -> bool:
    return section_type(annotation) is None


def _is_sequence(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    if origin in (Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


def _is_bool(annotation) -> bool:
    return annotation is bool


def flag_table(schema: type[Section] = MAEConfig) -> dict[str, str]:
    """Every command-line flag name (without dashes) -> dotted config key."""
    leaves = _leaves(schema)
    leaf_counts: dict[str, int] = {}
    for dotted, _ in leaves:
        leaf_counts[dotted.rsplit(".", 1)[-1]] = leaf_counts.get(dotted.rsplit(".", 1)[-1], 0) + 1
    table = {}
    for dotted, _ in leaves:
        table[dotted] = dotted
        leaf = dotted.rsplit(".", 1)[-1]
        if leaf_counts[leaf] == 1:
            table[leaf] = dotted
    known = {d for d, _ in leaves}
    table.update({flag: dotted for flag, dotted in FLAG_ALIASES.items() if dotted in known})
    return table


def add_config_flags(parser: argparse.ArgumentParser, *schemas: type[Section]) -> None:
    """One flag per configuration key (``--lr`` and ``--training.lr``); unset flags stay unset.

    With several schemas, the flags of all of them (validation later names a key the chosen
    schema does not have).
    """
    schemas = schemas or (MAEConfig,)
    parser.add_argument("--config", default=None, help="YAML configuration file")
    annotations: dict[str, Any] = {}
    table: dict[str, str] = {}
    for schema in schemas:
        annotations |= dict(_leaves(schema))
        for flag, dotted in flag_table(schema).items():
            if table.setdefault(flag, dotted) != dotted:  # the same short flag for two keys: dotted only
                table[flag] = ""
    by_key: dict[str, list[str]] = {}
    for flag, dotted in table.items():
        if dotted:
            by_key.setdefault(dotted, []).append(flag)
    group = parser.add_argument_group("configuration overrides (any key of the YAML)")
    for dotted, flags in sorted(by_key.items()):
        annotation = annotations[dotted]
        names = [f"--{f}" for f in sorted(flags, key=lambda f: ("." in f, f))]
        kwargs: dict[str, Any] = {"dest": f"cfg:{dotted}", "default": argparse.SUPPRESS, "help": dotted}
        if _is_bool(annotation):
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif _is_sequence(annotation):
            kwargs.update(nargs="+", metavar="V")
        else:
            kwargs.update(metavar="V")
        group.add_argument(*names, **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted overrides for exactly the flags that were given (an explicit 0 or false included)."""
    out = {}
    for dest, value in vars(args).items():
        if dest.startswith("cfg:"):
            out[dest[4:]] = _parse_flag_value(value)
    return out


def _parse_flag_value(value):
    if isinstance(value, str) and value.lstrip().startswith("{"):  # a mapping, e.g. --task_weights "{energy: 2}"
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot read {value!r} as a mapping: {exc}") from None
    if isinstance(value, list):
        if len(value) == 1 and value[0].lower() in ("null", "none"):
            return None
        return value
    if isinstance(value, str) and value.lower() in ("null", "none"):
        return None
    return value


def add_key_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *names: str, key: str,
                 **kwargs: Any) -> None:
    """A command's own flag for one configuration key, with the command's name, type and help.

    Given, it overrides ``key`` exactly as the full table's flag would (:func:`config_from_args`);
    not given, the YAML or the schema's default holds. The metavar is argparse's usual one.
    """
    kwargs.setdefault("metavar", names[0].lstrip("-").replace("-", "_").upper())
    parser.add_argument(*names, dest=f"cfg:{key}", default=argparse.SUPPRESS, **kwargs)


def config_from_args(args: argparse.Namespace, schema: type[Section] = MAEConfig,
                     preset: dict[str, Any] | None = None) -> Section:
    """The one way a command builds its configuration from its flags.

    Lowest first: the schema's defaults, the command's ``preset`` (nested sections, e.g. the demo's
    small run), the YAML of ``--config`` where the command has one, then the flags that were given
    (:func:`add_config_flags`, :func:`add_key_flag`).
    """
    return load_config(getattr(args, "config", None), overrides_from_args(args), schema, preset)
