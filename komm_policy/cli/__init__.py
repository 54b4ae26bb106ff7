"""`komm-policy` command line: check, fmt, test, replay, eval, serve, db, stalwart-config.

Each subcommand lives in its own module and registers its arguments here.  Exit codes are
the same everywhere: 0 success, 1 a finding (policy errors, a failed check), 2 a usage or
I/O problem.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def read_input(name: str) -> bytes:
    """A file's bytes, or standard input's for `-` (OSError propagates)."""
    return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()


from . import check, db, evaluate, fmt, replay, serve, stalwart, test  # noqa: E402 - they import read_input


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="komm-policy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in (check, fmt, test, replay, evaluate, serve, db, stalwart):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
