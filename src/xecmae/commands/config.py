"""``xecmae config show``: the configuration a run would use, as YAML (or single values for scripts)."""

from __future__ import annotations

import argparse

from xecmae.config import SCHEMAS, ConfigError
from xecmae.flags import add_config_flags, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"], help="show: print the resolved configuration")
    parser.add_argument("--kind", choices=sorted(SCHEMAS), default="mae",
                        help="which run's schema: mae (pre-training), inpainter or regressor (default mae)")
    parser.add_argument("--get", metavar="KEY", nargs="+", default=None,
                        help="print only these dotted keys' values, one per line (for scripts), e.g. training.epochs")
    add_config_flags(parser, *SCHEMAS.values())


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, SCHEMAS[args.kind])
    if args.get is None:
        print(cfg.to_yaml(), end="")
        return 0
    tree = cfg.model_dump(mode="json")
    for dotted in args.get:
        value = tree
        for key in dotted.split("."):
            if not isinstance(value, dict) or key not in value:
                raise ConfigError(f"{dotted}: no such key")
            value = value[key]
        print(" ".join(map(str, value)) if isinstance(value, list) else ("" if value is None else value))
    return 0
