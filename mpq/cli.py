"""`mpq`: inspect, convert, cost and export policies and models from the command line.

Only dispatch lives here; each subcommand is one module of mpq.tools with `register(subparsers)`.
Expected problems end as one `error: ...` line on stderr and exit code 1 (mpq.runtime.run_stage).
"""
from __future__ import annotations

import argparse
import sys

from .tools import COMMANDS
from .errors import InputError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes the project's way: one 'error:' line, exit code 1."""

    def error(self, message):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(1)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="mpq", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return ap


def main(argv=None) -> None:
    from .runtime import run_stage

    args = build_parser().parse_args(argv)

    def command():
        try:
            args.run(args)
        except OSError as e:   # unwritable output, full disk: still one line
            if isinstance(e, FileNotFoundError):
                raise
            raise InputError(f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")) from None

    run_stage(command)


if __name__ == "__main__":
    main()
