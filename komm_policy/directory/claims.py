"""Which row holds each declared key of a table, and which rows wait for one.

A row whose declared key (`primary_key` of the schema file) another row already holds
is a bad row (`declared_keys`): reported once, counted, and left out of the indexes.  It
is still a row of the store, so it is not dropped: it waits in a side map under its key,
and when the row that holds the key goes (deleted, or its key changed) the waiting row
with the lowest first-row order (then the lowest store identity) takes the key at the
end of that same change, the way a whole re-read would have found it.

Memory: a waiting row is kept as the `Row` it decoded to (no raw row, no index entry),
and a row of the store is either held or waiting, never both: the side map never holds
more rows than the store has beyond those the replica holds, the bound a replica of the
store has anyway.  It is empty unless rows collide, and a change without collisions
pays one emptiness test per deleted row and one per released key.

A waiting row is known by its store identity (`store_ident`): its SQLite rowid, or,
where the declared key is the replica's identity (SpacetimeDB), the key's values as the
store sent them before decoding (`Peter@Web.Example`, where the replica's identity is the
decoded, lower-case address): a delete of a waiting row then drops it from the side map,
and does not take away the row that holds the key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import immutables

from ..text import shown
from .declared_keys import KeyOf, collider, collision
from .rows import Row, order_value, sort_key
from .schema import Table

log = logging.getLogger(__name__)

_NONE = immutables.Map()
MISSING: Any = object()
"""No entry (a declared key may be None: a NULL that SQLite's UNIQUE lets repeat)."""

Waiting = immutables.Map
"""The rows waiting for one declared key: store identity → Row (a map, not a tuple: a
key that many rows share, NULL under SQLite's UNIQUE, costs O(log n) per row that comes
or goes, not a copy of all of them)."""


def store_ident(table: Table, raw: Mapping[str, Any]) -> Any:
    """What names `raw` as one row of the store: ("rowid", n) for SQLite, else the
    declared key's values as the backend decoded them (the store keeps them unique:
    the declared key is one of its keys or wider, `declared_keys.key_problem`)."""
    if "rowid" in raw and "rowid" not in table.by_name:
        return ("rowid", raw["rowid"])
    ident = tuple(raw.get(name) for name in table.primary_key)
    try:
        hash(ident)
    except TypeError:  # a value the backend decodes to a list or dict
        return repr(ident)
    return ident


class Claims:
    """The declared keys of one table while one change (or one whole read) is applied.

    `keys`: declared key → identity of the row that holds it; `waiting`: declared key →
    `Waiting`; `waiting_at`: store identity → declared key (mutable mappings: dicts, or
    `immutables` mutations, changed in place).  `on_bad_row(table, key, reason)`."""

    __slots__ = ("freed", "key_of", "keys", "on_bad_row", "table", "waiting", "waiting_at")

    def __init__(self, table: Table, key_of: KeyOf, keys: MutableMapping[Any, Any],
                 waiting: MutableMapping[Any, Waiting],
                 waiting_at: MutableMapping[Any, Any], on_bad_row: Any) -> None:
        self.table = table
        self.key_of = key_of
        self.keys = keys
        self.waiting = waiting
        self.waiting_at = waiting_at
        self.on_bad_row = on_bad_row
        self.freed: list[Any] = []
        """Keys released while rows waited for them (re-offered by `promoted`)."""

    def drop_waiting(self, raw: Mapping[str, Any]) -> bool:
        """Forget the waiting row `raw` names (deleted, or replaced by a new version of
        it); False: no row of that store identity waits."""
        if not self.waiting_at:
            return False
        sid = store_ident(self.table, raw)
        key = self.waiting_at.get(sid, MISSING)
        if key is MISSING:
            return False
        del self.waiting_at[sid]
        self._unwait(key, sid)
        return True

    def _unwait(self, key: Any, sid: Any) -> None:
        rest = self.waiting[key].delete(sid)
        if rest:
            self.waiting[key] = rest
        else:
            del self.waiting[key]

    def release(self, ident: Any, values: Mapping[str, Any]) -> None:
        """The held row `ident` (with column `values`) goes: its key is free."""
        key = self.key_of(values)
        if self.keys.get(key, MISSING) == ident:
            del self.keys[key]
            if self.waiting and key in self.waiting:
                self.freed.append(key)

    def claim(self, raw: Mapping[str, Any], row: Row, values: Mapping[str, Any]) -> bool:
        """Give `row` (decoded from `raw` into column `values`) its declared key; False:
        another row holds it, and `row` waits (reported as a bad row)."""
        key = self.key_of(values)
        owner = self.keys.get(key, MISSING)
        if owner is MISSING:
            self.keys[key] = row._ident
            return True
        table = self.table
        if self.on_bad_row is not None:
            self.on_bad_row(table.name, collider(table, raw), collision(table, owner))
        sid = store_ident(table, raw)
        self.waiting[key] = self.waiting.get(key, _NONE).set(sid, row)
        self.waiting_at[sid] = key
        return False

    def promoted(self) -> Iterator[Row]:
        """The waiting rows that take a key freed by this change and still free (the
        lowest first-row order of each: a scan of the rows waiting for that key); the
        caller adds them to its rows and indexes."""
        freed, self.freed = self.freed, []
        for key in freed:
            if key in self.keys:  # taken again in the same change (an update of its row)
                continue
            entries = self.waiting.get(key)
            if not entries:
                continue
            # Ties (rows whose declared keys decode to one value, e.g. SpacetimeDB's
            # `203.0.113.7` and `203.0.113.7/32`: same first-row order) go to the lowest
            # store identity, not to the map's hash order, which varies from run to run.
            sid, row = min(entries.items(),
                           key=lambda entry: (sort_key(entry[1]), order_value(entry[0])))
            self._unwait(key, sid)
            del self.waiting_at[sid]
            self.keys[key] = row._ident
            # The skip was a WARNING; the operator also learns when the row came in.
            log.info("table %s: the row %s, skipped for its primary_key (%s), has it now: "
                     "the row that held it is gone", self.table.name, shown(repr(sid)),
                     ", ".join(self.table.primary_key))
            yield row


class _Values:
    """A row's columns as a mapping, without building a dict."""

    __slots__ = ("row",)

    def __init__(self, row: Row) -> None:
        self.row = row

    def __getitem__(self, name: str) -> Any:
        return getattr(self.row, name)


def row_values(row: Row) -> Mapping[str, Any]:
    """`row`'s column values as a read-only mapping (column name → value)."""
    return _Values(row)  # type: ignore[return-value]
