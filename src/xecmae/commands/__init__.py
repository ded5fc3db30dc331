"""One module per ``xecmae`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""

from pathlib import Path


def announce_run_directory(run_dir: Path) -> int:
    """Print where a training run wrote its files (rank 0 only, so torchrun prints it once)."""
    from xecmae.train import distributed as dist

    if dist.context_from_env()[0] == 0:
        print(f"run directory: {run_dir}")
    return 0
