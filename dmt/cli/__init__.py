"""The ``dmt`` command line (``dmt.cli.main``); one module per subcommand."""

from dmt.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
