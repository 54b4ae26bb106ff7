"""Names for rows of a subscribed table that could not be decoded (issue #9 §3).

`ReplicaHealth.bad_row(table, key, reason)` reports and counts each (table, key) once; the
key must therefore name the *row*, the same across messages and reconnects, never its
position in a message (which repeats: the tester's finding that a second bad row at
position 0 was never reported, and the same row counted again after a reconnect).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from .sats import Decoder, ProductType


class RowNamer:
    """Names a row of one table that could not be decoded, for `ReplicaHealth.bad_row`
    (which reports and counts each name once): by its primary key when those columns
    decode (`ip='192.0.2.1'`), otherwise `row sha256:…` — a digest of the columns decoded
    one by one (so the same row gives the same name whether a message writes it as an
    array or as an object, before and after a reconnect), or of its JSON text when that
    does not decode at all (nesting too deep, not JSON)."""

    def __init__(self, decoder: Decoder, row_type: ProductType, key: tuple[int, ...]) -> None:
        self.names = row_type.names
        self.columns = [decoder.compile(t) for _, t in row_type.elements]
        self.key = key

    def __call__(self, text: str) -> str:
        try:
            value = msgspec.json.decode(text)
        except Exception:  # any failure: the text's own digest names it
            return _digest(text.encode("utf-8", "surrogatepass"))
        if type(value) is dict:
            cells = [value.get(n, _MISSING) for n in self.names]
            cells += [[k, value[k]] for k in sorted(set(value) - set(self.names))]
        elif type(value) is list:
            cells = value
        else:
            return _digest(_canonical(value))
        parts: list[str | None] = []
        for i, cell in enumerate(cells):
            try:
                if cell is _MISSING:
                    raise LookupError(self.names[i])
                parts.append(repr(self.columns[i](cell)))
            except Exception:  # undecodable, missing, an extra cell: its canonical JSON
                parts.append(None)
        if self.key and all(i < len(parts) and parts[i] is not None for i in self.key):
            return ", ".join(f"{self.names[i]}={parts[i]}" for i in self.key)
        return _digest(b"\x1f".join(
            p.encode("utf-8", "surrogatepass") if p is not None
            else b"?missing" if c is _MISSING else b"?" + _canonical(c)
            for p, c in zip(parts, cells, strict=True)))


_MISSING = object()
"""A column an object-shaped row lacks."""


def _canonical(value: Any) -> bytes:
    """JSON with sorted keys and the unit written one way (`{}` and `[]` are both SATS's
    unit), so one value in either of SpacetimeDB's shapes hashes alike where it can."""
    def unit(v: Any) -> Any:
        if type(v) is dict:
            return [] if not v else {k: unit(x) for k, x in v.items()}
        if type(v) is list:
            return [unit(x) for x in v]
        return v
    try:
        return msgspec.json.encode(unit(value), order="sorted")
    except Exception:  # nested too deeply even for that: its repr's digest will do
        return repr(value).encode("utf-8", "surrogatepass")


def _digest(data: bytes) -> str:
    return "row sha256:" + hashlib.sha256(data).hexdigest()[:16]
