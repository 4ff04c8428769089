"""The ``cogo`` command line: one module per group of subcommands, shared helpers in
``cogo.cli.common``."""

from cogo.cli.main import main

__all__ = ["main"]
