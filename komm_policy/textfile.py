"""Reading the operator's text files (komm.toml, schema.toml, *.test.toml) so that a bad
file is a positioned message, never a traceback.

`decode_utf8` turns bytes that are not UTF-8 into `NotUtf8Error` naming the file, the
line and the column of the first bad byte; `loads_toml` turns `tomllib`'s RecursionError
(it has no nesting limit: `x = [[[[…]]]]` 5000 deep exhausts Python's stack) into a
`tomllib.TOMLDecodeError` with tomllib's own `(at line L, column C)` suffix, so every
caller that already positions syntax errors positions this one too.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["MAX_TOML_NESTING", "NotUtf8Error", "decode_utf8", "loads_toml", "read_utf8",
           "toml_error_text"]

MAX_TOML_NESTING = 100
"""The nesting depth (arrays and inline tables) the message names when `tomllib` ran out
of stack; none of the project's files nests more than three deep."""


class NotUtf8Error(ValueError):
    """A file that is not UTF-8 text: `str()` is `FILE:LINE:COL: not UTF-8 text (…)`;
    `line` and `column` (1-based, the column counted in bytes) locate the first bad
    byte."""

    def __init__(self, name: str, line: int, column: int, reason: str) -> None:
        super().__init__(f"{name}:{line}:{column}: not UTF-8 text ({reason})")
        self.name, self.line, self.column, self.reason = name, line, column, reason


def decode_utf8(data: bytes, name: str) -> str:
    """`data` as text, without a leading byte-order mark.  Raises `NotUtf8Error`."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start:exc.start + 1].hex()
        raise NotUtf8Error(name, line, column, f"byte 0x{bad}: {exc.reason}") from None


def read_utf8(path: str | Path) -> str:
    """A file's text.  Raises `OSError` or `NotUtf8Error`."""
    return decode_utf8(Path(path).read_bytes(), str(path))


# What the nesting scan steps over: strings (multi-line first), comments, brackets.
_TOKEN = re.compile(r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|'
                    r"'[^'\n]*'|#[^\n]*|[\[\]{}]|\n", re.DOTALL)


def nesting_position(text: str, limit: int = MAX_TOML_NESTING) -> tuple[int, int] | None:
    """(line, column), 1-based, of the first `[` or `{` that opens level `limit + 1`
    outside strings and comments (None: the text nests no deeper).  Linear in the text."""
    depth, line, line_start = 0, 1, 0
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        if token == "\n":
            line, line_start = line + 1, match.end()
        elif token in "[{":
            depth += 1
            if depth > limit:
                return line, match.start() - line_start + 1
        elif token in "]}":
            depth = max(0, depth - 1)
        elif token[0] in "\"'":
            newlines = token.count("\n")
            if newlines:
                line, line_start = line + newlines, match.start() + token.rfind("\n") + 1
    return None


def loads_toml(text: str) -> dict[str, Any]:
    """`tomllib.loads`, with nesting too deep for it a `TOMLDecodeError` at the position
    where the nesting passes `MAX_TOML_NESTING` (only looked for after tomllib failed,
    so a normal file costs nothing extra)."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        line, column = nesting_position(text) or (1, 1)
        raise tomllib.TOMLDecodeError(
            f"arrays or inline tables nested too deeply (more than {MAX_TOML_NESTING} "
            f"levels) (at line {line}, column {column})") from None


_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def toml_error_text(name: str | Path, exc: tomllib.TOMLDecodeError) -> str:
    """`FILE:LINE:COL: reason` for a `tomllib` error (tomllib's `(at line L, column C)`
    suffix moved to the front, as every other positioned message has it)."""
    found = _AT.search(str(exc))
    if found is None:
        return f"{name}: {exc}"
    return f"{name}:{found.group(1)}:{found.group(2)}: {_AT.sub('', str(exc))}"
