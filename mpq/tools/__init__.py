"""Subcommands of the `mpq` command-line tool (mpq.cli), one module per concept."""
from . import compare, convert, cost, export, show

COMMANDS = (show, compare, convert, cost, export)
