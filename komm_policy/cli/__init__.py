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

from ..textfile import NotUtf8Error


def read_input(name: str) -> bytes:
    """A file's bytes, or standard input's for `-` (OSError propagates)."""
    return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()


def os_error_text(exc: OSError, name: str | None = None) -> str:
    """`FILE: no such file or directory` for an OSError, without Python's `[Errno N]`."""
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]
    filename = exc.filename if exc.filename is not None else name
    return f"{filename}: {reason}" if filename is not None else reason


from . import check, db, evaluate, fmt, replay, serve, stalwart, test  # noqa: E402 - they import these


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        commands = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        if commands and message.startswith("the following arguments are required"):
            message = "choose a command: " + ", ".join(commands[0].choices)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("komm-policy")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="komm-policy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"komm-policy {version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)
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
    except OSError as exc:  # the last line of defence: a plain message, never a traceback
        print(f"komm-policy {args.command}: {os_error_text(exc)}", file=sys.stderr)
        return 2
    except NotUtf8Error as exc:  # a file read where its command did not expect one
        print(f"komm-policy {args.command}: {exc}", file=sys.stderr)
        return 2
