"""`komm-policy fmt [--check] [--diff] [PATH…]`: rewrite policy files in the canonical layout.

Each PATH is a `*.policy` file or a directory of them; `-` reads standard input and writes
the result to standard output.  Files are written only when their text changes: replaced
atomically (a temporary file in the same directory, renamed over the original, keeping its
mode and, where fmt may, its owner), except a file with several hard links, which is
written in place so every link gets the new text (`_replace`).  With `--check`
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
    """Write `text` (UTF-8) to `path`, keeping the file's permission bits and, where
    possible, its owner.  Raises OSError.

    A file of one name is replaced atomically: a temporary file in the same directory,
    renamed over it (a reader sees the old text or the new, never a mix).  A file with
    more than one hard link (`st_nlink > 1`) is written in place instead (`_overwrite`),
    since a rename would give only this name the new text and leave the other links on
    the old inode.  A symlink is written through: the file it resolves to is formatted (in
    its own directory, so the rename stays atomic) and the link stays a link."""
    path = path.resolve(strict=True)
    data = text.encode("utf-8")  # the whole new text, before the file is touched
    original = path.stat()
    if original.st_nlink > 1:
        _overwrite(path, data)
        return
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            made = os.fstat(handle.fileno())
            if (made.st_uid, made.st_gid) != (original.st_uid, original.st_gid):
                _keep_owner(handle.fileno(), original)
        os.chmod(temporary, original.st_mode & 0o7777)  # after chown, which clears setuid
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _overwrite(path: Path, data: bytes) -> None:
    """Write `data` over `path`'s content in place: same inode (every hard link, the
    owner, the mode and the ACLs stay as they are).  What this trades: the write is not
    atomic — a reader during it, or a crash in it, can see the new text's start followed
    by the old text's rest.  The text is complete in memory before the file is opened,
    the file is truncated after the write (a shorter text leaves no old tail) and synced
    before fmt reports it done."""
    with path.open("r+b") as handle:  # not "w": opening must not truncate before writing
        handle.write(data)
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())


def _keep_owner(fd: int, original: os.stat_result) -> None:
    """Give the new file the original's owner and group, or else just the group: both
    need privileges fmt may not have (then the file belongs to whoever ran fmt, as with
    any editor that saves by renaming)."""
    for uid in (original.st_uid, -1):
        try:
            os.fchown(fd, uid, original.st_gid)
            return
        except PermissionError:
            continue
