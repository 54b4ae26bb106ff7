"""Where a key of a TOML document is written: `tomllib` parses without positions, so the
schema file and test files find the line and column of an offending key in the text.

`key_position(text, path)` follows TOML 1.0's structure: `[table]` and `[[array]]` headers
(an array of tables counts its elements, so `("case", 1, "expect")` is the second
`[[case]]`'s `expect`), dotted keys (`columns.ip = …`), quoted keys and inline tables
(`{ type = "x" }`); multi-line strings are skipped.  It answers the deepest part of `path`
it finds, so a key given by an inline table on one line is still located on that line.
Time is linear in the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["KeyPositions", "key_position"]

Path = Sequence[str | int]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER = re.compile(rf"\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGN = re.compile(rf"\s*({_DOTTED})\s*=")
_INLINE_KEY = re.compile(rf"[{{,]\s*({_DOTTED})\s*=")
_PART = re.compile(_KEY)


def _parts(dotted: str) -> list[str]:
    out = []
    for match in _PART.finditer(dotted):
        word = match.group(0)
        if word[0] in "\"'":
            word = word[1:-1]
        out.append(word)
    return out


class KeyPositions:
    """Where each key of one TOML text is written, indexed once (linear in the text)."""

    def __init__(self, text: str) -> None:
        self._at: dict[tuple[str | int, ...], tuple[int, int]] = {}
        arrays: dict[tuple[str | int, ...], int] = {}
        table: tuple[str | int, ...] = ()
        in_string: str | None = None
        for number, line in enumerate(text.split("\n"), 1):
            if in_string is not None:
                if line.count(in_string) % 2 == 1:
                    in_string = None
                continue
            header = _HEADER.match(line)
            if header is not None:
                table = self._header(header, arrays)
                self._at.setdefault(table, (number, header.start(2) + 1))
                continue
            assign = _ASSIGN.match(line)
            if assign is None:
                continue
            full = (*table, *_parts(assign.group(1)))
            self._at.setdefault(full, (number, assign.start(1) + 1))
            rest = line[assign.end():]
            for inline in _INLINE_KEY.finditer(rest):
                inner = (*full, *_parts(inline.group(1)))
                self._at.setdefault(inner, (number, assign.end() + inline.start(1) + 1))
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_string = quote

    @staticmethod
    def _header(header: re.Match[str], arrays: dict[tuple[str | int, ...], int]
                ) -> tuple[str | int, ...]:
        resolved: list[str | int] = []
        parts = _parts(header.group(2))
        is_array = header.group(1) == "[["
        for index, part in enumerate(parts):
            resolved.append(part)
            last = index == len(parts) - 1
            if tuple(resolved) in arrays and not (is_array and last):
                resolved.append(arrays[tuple(resolved)])
        if is_array:
            key = tuple(resolved)
            arrays[key] = arrays.get(key, -1) + 1
            resolved.append(arrays[key])
        return tuple(resolved)

    def find(self, path: Path) -> tuple[int, int]:
        """(line, column), 1-based, of the key `path` names (strings for keys, integers
        for the elements of an array of tables), or of its deepest ancestor written in
        the text; (1, 1) when nothing of it is."""
        for depth in range(len(path), 0, -1):
            found = self._at.get(tuple(path[:depth]))
            if found is not None:
                return found
        return 1, 1


def key_position(text: str, path: Path) -> tuple[int, int]:
    """`KeyPositions(text).find(path)`: for one look-up in a text."""
    return KeyPositions(text).find(path)
