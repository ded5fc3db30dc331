"""The ``xecmae`` command: one subcommand per module in :mod:`xecmae.commands`.

Subcommand modules are imported only when used, so ``xecmae --help`` is quick. Each module
has ``add_arguments(parser)`` and ``run(args) -> int``. A :class:`UserError` is printed as one
line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from xecmae.errors import UserError

COMMANDS: dict[str, str] = {
    "demo": "simulate events, pre-train the tiny model briefly, write a checkpoint and plots",
    "simulate": "generate XEC events into ROOT files",
    "show": "draw one event of a ROOT file (all six faces)",
    "inspect": "summarise ROOT inputs: entries, branches, invalid fractions per face",
    "pretrain": "masked-autoencoder pre-training",
    "finetune": "regression fine-tuning from a pre-trained encoder",
    "inpaint": "train the dead-channel inpainter",
    "predict": "apply a trained model: per-event reconstruction (regressor) or filled dead channels (inpainter)",
    "calibrate": "calibrate a regressor's per-event sigma on labelled events (pulls of width 1)",
    "validate": "resolution report of a regressor on ROOT files, beside the classical estimate",
    "export": "export an encoder, regressor or inpainter to ONNX or TorchScript",
    "analyze": "per-face tables and plots of a prediction file",
    "display": "event display of one event of a prediction file",
    "config": "show the resolved configuration",
    "geometry": "print the detector geometry and draw its faces",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: xecmae COMMAND [options]   (xecmae COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:{width}s}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def setup_logging(verbose: bool = False) -> None:
    """INFO on rank 0 (or a single process), warnings only on the other ranks."""
    from xecmae.train.distributed import context_from_env

    level = logging.DEBUG if verbose else logging.INFO
    if context_from_env()[0] != 0:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", force=True)
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def command_parser(name: str) -> tuple[ModuleType, argparse.ArgumentParser]:
    """The module of subcommand ``name`` and its argument parser."""
    module = importlib.import_module(f"xecmae.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"xecmae {name}", description=COMMANDS[name], allow_abbrev=False)
    module.add_arguments(parser)
    return module, parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"xecmae: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, parser = command_parser(name)
    args = parser.parse_args(argv[1:])
    setup_logging(getattr(args, "verbose", False))
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"xecmae {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xecmae {name}: interrupted", file=sys.stderr)
        return 130


def entry(argv: list[str] | None = None) -> None:
    """The console script and the ``lib`` forwarders: process set-up, then :func:`main`."""
    from xecmae.runtime import restart_with_huge_pages

    restart_with_huge_pages()
    sys.exit(main(argv))


if __name__ == "__main__":
    entry()
