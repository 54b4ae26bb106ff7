"""Checks on a hook body's bytes before msgspec decodes them (`wire.decode_request`):
what msgspec does not check (UTF-8 in what it skips) or would check only after spending
memory (how many entries a header list has)."""

from __future__ import annotations

import codecs
import re

_JSON_TOKEN = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"|[\[\]]')
"""A JSON string (skipped whole: brackets inside it do not count) or a bracket."""


def entries_past(text: memoryview, limit: int) -> bool:
    """Whether the JSON array `text` has more than `limit` entries that are arrays."""
    depth = count = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = text[token.start()]
        if bracket == 0x5B:  # [
            depth += 1
            if depth == 2:
                count += 1
                if count > limit:
                    return True
        elif bracket == 0x5D:  # ]
            depth -= 1
    return False


UTF8_SLICE = 64 * 1024
"""Bytes of a body checked for UTF-8 at a time (the text made is dropped at once)."""


def utf8_error(body: bytes) -> int | None:
    """None when `body` is valid UTF-8, else about where it is not (a byte offset); time
    linear in it, memory a slice's."""
    start = 0
    try:
        if len(body) <= UTF8_SLICE:
            body.decode("utf-8")
            return None
        decoder = codecs.getincrementaldecoder("utf-8")()
        view = memoryview(body)
        for start in range(0, len(body), UTF8_SLICE):
            decoder.decode(view[start:start + UTF8_SLICE], start + UTF8_SLICE >= len(body))
    except UnicodeDecodeError as exc:
        return start + exc.start
    return None
