"""`komm-policy fmt [--check] [--diff] [PATH…]`: rewrite policy files in the canonical layout.

Each PATH is a `*.policy` file or a directory of them; `-` reads standard input and writes
the result to standard output.  Files are replaced atomically (a temporary file in the same
directory, renamed over the original), and only when their text changes.  With `--check`
nothing is written: the files that would change are listed and the exit code is 1.
`--diff` prints a unified diff instead of writing.  Exit codes as for `check`: 0 formatted
(or nothing to do), 1 a file would change (`--check`) or does not parse, 2 a usage or I/O
problem.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, TextIO

from ..errors import render
from ..formatter import FormatError, format_text
from ..policyset import policy_files, read_policy_file
from . import read_input


def register(sub: Any) -> None:
    parser = sub.add_parser("fmt", help="rewrite policy files in the canonical layout",
                            description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["policies"], metavar="PATH",
                        help="policy file or directory, `-` for standard input "
                             "(default: policies)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; list files that would change and exit 1 if any")
    parser.add_argument("--diff", action="store_true",
                        help="write nothing; print a unified diff of the changes")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
        ) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    status = 0
    changed = unchanged = 0
    for name in args.paths:
        try:
            files = ["-"] if name == "-" else [str(p) for p in policy_files(Path(name))]
        except OSError as exc:
            print(f"komm-policy fmt: {exc.strerror or exc}: {exc.filename or name}"
                  if exc.filename else f"komm-policy fmt: {exc}", file=err)
            return 2
        for file in files:
            try:
                data = read_input(file) if file == "-" else read_policy_file(Path(file), -1)
            except OSError as exc:
                print(f"komm-policy fmt: {exc.strerror or exc}: {file}", file=err)
                return 2
            if isinstance(data, str):  # a dangling link, a directory, a FIFO: never read
                print(f"{file}: policy file {data}", file=err)
                status = max(status, 1)
                continue
            label = "<stdin>" if file == "-" else file
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                print(f"{label}: file is not valid UTF-8", file=err)
                status = max(status, 1)
                continue
            try:
                formatted = format_text(text, label)
            except FormatError as exc:
                for diagnostic in exc.diagnostics:
                    print(render(diagnostic, text), file=err)
                print(exc, file=err)
                status = max(status, 1)
                continue
            if file == "-" and not (args.check or args.diff):
                out.write(formatted)
                continue
            if formatted == text:
                unchanged += 1
                continue
            changed += 1
            if args.diff:
                out.writelines(difflib.unified_diff(
                    text.splitlines(keepends=True), formatted.splitlines(keepends=True),
                    f"{label} (original)", f"{label} (formatted)"))
            if args.check:
                print(f"would reformat {label}", file=err)
                status = max(status, 1)
            elif not args.diff:
                try:
                    _replace(Path(file), formatted)
                except OSError as exc:
                    print(f"komm-policy fmt: {exc.strerror or exc}: {file}", file=err)
                    return 2
                print(f"reformatted {label}", file=err)
    if args.paths != ["-"]:
        verb = "would be reformatted" if args.check or args.diff else "reformatted"
        print(f"{changed} file{'s' if changed != 1 else ''} {verb}, {unchanged} unchanged",
              file=err)
    return status


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, keeping the file's permission bits.

    A symlink is written through: the file it resolves to is replaced (in its own
    directory, so the rename stays atomic) and the link stays a link.  Raises OSError."""
    path = path.resolve(strict=True)
    mode = path.stat().st_mode & 0o7777
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
