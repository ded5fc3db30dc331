"""One module per ``xecmae`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""

from pathlib import Path


def announce_run_directory(run_dir: Path) -> int:
    """Print where a training run wrote its files (rank 0 only, so torchrun prints it once)."""
    from xecmae.train import distributed as dist

    if dist.context_from_env()[0] == 0:
        print(f"run directory: {run_dir}")
    return 0


DEAD_CHANNELS_SOURCES = ("a text file of sensor ids, a per-run table (header 'run,sensor_id'), FILE.root:TREE/BRANCH, "
                         "clustered:F[:SEED] or random:F[:SEED]")


def add_dead_channels_option(parser, what: str) -> None:
    """``--dead-channels SOURCE`` (alias ``--dead-map``), the one name of the option everywhere.

    ``parser`` may be an argument group; ``what`` says what the channels do in this command.
    """
    parser.add_argument("--dead-channels", "--dead-map", dest="dead_channels", default=None, metavar="SOURCE",
                        help=f"{what}: {DEAD_CHANNELS_SOURCES}")
