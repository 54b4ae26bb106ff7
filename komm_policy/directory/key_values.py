"""A primary key's *value* for the `db` commands: the replica's comparison, not the text.

The replica decodes every column of a row with `columns.decode_value` and compares the
declared key of those decoded values (`tablestate`, `declared_keys.key_reader`): the
network `203.0.113.200` is `203.0.113.200/32` and `::ffff:203.0.113.200`, the identity
`ad` is `AD`, `0xad` and `00…ad`, the address `Anna@Example.org` is `anna@example.org`, the
timestamp `1788000000` (seconds) is `1788000000000000` (µs).  SQLite compares the stored
text, so `db import` and `db delete` would see two keys where the replica sees one row (and
skips the other as a bad row).  `key_value` is that decoded key, so the commands compare as
the replica does; `canonical` is the one spelling `db import` writes for a key column whose
text can vary (network, identity, address), so the store never holds two spellings the
`db` commands wrote.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from .schema import BadValue, Column, decode_value, encode_value
from .sqlite_tables import quote, text_or_raw

SPELLED = frozenset({"network", "identity", "address"})
"""Key meanings whose stored text has more than one spelling of one value; `db import`
writes them as `canonical` does."""

BY_VALUE = SPELLED | {"timestamp"}
"""Key meanings whose stored values SQLite's own comparison does not equate (text, enum,
integer and bool values are what they look like: SQLite's INTEGER affinity already makes
`"5"` the integer 5).  A key of only other meanings needs no scan of the stored rows."""


def key_value(columns: Sequence[Column], values: Sequence[Any]) -> tuple[Any, ...] | None:
    """The key the replica compares for a row whose key columns hold `values` (as stored
    or imported): `decode_value` of each.  None when one is none or does not decode (the
    replica keys no such row: it skips it as a bad row)."""
    try:
        key = tuple(decode_value(column, value) for column, value in
                    zip(columns, values, strict=True))
    except BadValue:
        return None
    return None if None in key else key


def canonical(column: Column, value: Any) -> Any:
    """The spelling `db import` writes for a key value: a network as `db export` writes
    it (`203.0.113.200`, `2001:db8:bad::/48`), an identity as 64 lower-case hex digits,
    an address in lower case (what the replica holds, `columns.decode_value`); an
    identity given as a JSON number or `{"__identity__": …}` too (stored as it is, a TEXT
    column would hold `173` as the text `173`, which is the identity 0x173, not 173).
    Other meanings and values that do not decode are returned as given."""
    if column.type not in SPELLED or not (isinstance(value, str) or column.type == "identity"):
        return value
    try:
        return encode_value(column, decode_value(column, value))
    except BadValue:
        return value


def stored_keys(conn: sqlite3.Connection, table: str, columns: Sequence[Column]
                ) -> dict[tuple[Any, ...], list[tuple[Any, ...]]]:
    """Every stored row's key value (`key_value`) → the stored key column values of the
    rows that have it (more than one: spellings the replica takes for one row).  One scan
    of the key columns, O(rows); rows whose key does not decode are left out.  Measured:
    1.8 s CPU (min of 7, median 2.2 s) for 100,000 network keys on a loaded 2-core VM,
    paid once per table by each `db import` and `db delete` of a key meaning in
    `BY_VALUE`."""
    names = ", ".join(quote(c.name) for c in columns)
    result: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    previous, conn.text_factory = conn.text_factory, text_or_raw
    try:
        for stored in conn.execute(f"SELECT {names} FROM {quote(table)}"):
            key = key_value(columns, stored)
            if key is not None:
                result.setdefault(key, []).append(tuple(stored))
    finally:
        conn.text_factory = previous
    return result


def needs_scan(columns: Sequence[Column]) -> bool:
    """Whether a key of these columns can match a stored row spelled differently."""
    return any(column.type in BY_VALUE for column in columns)


class SameKey:
    """`db export`'s check for rows of one table whose keys have one value (two spellings
    written behind the tools' back): the replica keeps the first it reads and skips the
    other as a bad row, and `db import` refuses a file holding both, so the export leaves
    out every row after the first with a key value (rowid order) and names it."""

    def __init__(self, table: str, primary: Sequence[str], columns: Sequence[Column]
                 ) -> None:
        self.table = table
        self.primary = tuple(primary)
        self.columns = tuple(columns)
        self.active = needs_scan(self.columns)
        self.seen: dict[tuple[Any, ...], tuple[int, str]] = {}

    def second(self, number: int, row: Mapping[str, Any]) -> str | None:
        """Why row `number` (1-based, rowid order) is left out, or None: its key value is
        not one an earlier row has."""
        if not self.active:
            return None
        key = key_value(self.columns, [row.get(k) for k in self.primary])
        if key is None:
            return None
        given = ", ".join(f"{k}={row.get(k)!r}" for k in self.primary)
        if key not in self.seen:
            self.seen[key] = number, given
            return None
        first, spelled = self.seen[key]
        return (f"{self.table} row {number} ({given}): the same primary key "
                f"({', '.join(self.primary)}) as row {first} ({spelled}), spelled "
                "differently: the replica uses the first and skips this one")
