"""One module per ``xecmae`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
