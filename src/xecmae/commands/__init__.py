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


def add_input_options(parser, *, npho_threshold: bool = False) -> None:
    """``--tree``, ``--npho-branch``, ``--time-branch`` (and ``--npho-threshold``) for commands without a config.

    The defaults are read from the one place they are written: :class:`~xecmae.data.spec.StreamSpec`
    (the ``data`` section's keys) and :class:`~xecmae.detector.normalize.Normalizer` (photons).
    """
    from xecmae.data.spec import StreamSpec

    parser.add_argument("--tree", default=StreamSpec.tree_name, help=f"TTree name (default {StreamSpec.tree_name})")
    parser.add_argument("--npho-branch", default=StreamSpec.npho_branch,
                        help=f"npho branch, photons (default {StreamSpec.npho_branch})")
    parser.add_argument("--time-branch", default=StreamSpec.time_branch,
                        help=f"time branch, seconds (default {StreamSpec.time_branch})")
    if npho_threshold:
        from xecmae.detector.normalize import Normalizer

        default = Normalizer.npho_threshold
        parser.add_argument("--npho-threshold", type=float, default=default,
                            help=f"photons below which a sensor's time is invalid (default {default:g}, as "
                                 "training.time.npho_threshold)")
