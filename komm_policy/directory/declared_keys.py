"""A schema file's `primary_key` against the store's real keys, and the rows that share one.

The decision record names each row a lookup found by its identity: its `primary_key`
columns as the schema file declares them (docs/decision-record.md).  A declared key that
is not a key of the store (the SQLite table's primary key or a UNIQUE index; the
SpacetimeDB table's primary key or a unique constraint) lets two rows have the same
identity, so a record could not say which one a decision used.  `key_problem` refuses
such a declaration where a replica meets its store (SQLite `require` and every whole
read, the SpacetimeDB schema check before each connection, `check --directory`): the
message names the schema file's `primary_key` entry (file:line:col), the table, and the
store's keys.  A declared key may be wider than a store key (it still names one row).

A store key still lets rows collide in the replica: SQLite's UNIQUE lets several rows hold
NULL, and an `address` column's values are compared in lower case (by the replica, not
by SQLite's UNIQUE or SpacetimeDB's unique constraint).  The replica finds such rows as it
reads them (`claims`: declared key → identity of the row that has it); each is a bad
row (`ReplicaHealth.bad_row`: skipped, one warning naming table, key, rowid and reason,
counted in `komm_directory_bad_rows`), the first one read keeps the identity.  A skipped
row waits for its key (`claims`): when the row that kept it is deleted or its key
changes, the waiting row comes in with the same change, as a whole re-read would have
found it.  Where the declared key is the identity (SpacetimeDB), an insert of a
transaction whose key a row still holds is such a row too (an update deletes the old
row first), checked like the subscription's snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..tomlpos import KeyPositions
from .schema import Schema, Table


def entry_position(schema: Schema, key: tuple[str, ...]) -> str:
    """`FILE:LINE:COL` of the entry `key` (a TOML key path) in the schema file `schema`
    was read from; the source alone when it is not a readable file (a backend's own
    schema)."""
    try:
        text = Path(schema.source).read_text(encoding="utf-8").removeprefix("\ufeff")
    except (OSError, ValueError):
        return schema.source or "the schema file"
    line, column = KeyPositions(text).find(key)
    return f"{schema.source}:{line}:{column}" if line else schema.source


def _shown(keys: Sequence[tuple[str, ...]]) -> str:
    return "; ".join(f"[{', '.join(key)}]" for key in keys)


def key_problem(schema: Schema, table: Table, store_keys: Sequence[tuple[str, ...]],
                store: str) -> str | None:
    """Why `table`'s declared `primary_key` does not name one row of the store (None: it
    does, or none is declared).  `store_keys`: the column sets the store keeps unique
    (primary key first); `store` names the store in the message."""
    declared = set(table.primary_key)
    if not declared or any(set(key) <= declared for key in store_keys):
        return None
    where = entry_position(schema, ("tables", table.name, "primary_key"))
    have = (f"its keys: {_shown(store_keys)}" if store_keys
            else "it has no primary key or unique column")
    return (f"{where}: table {table.name!r}: primary_key [{', '.join(table.primary_key)}] is "
            f"not a key of {store} ({have}): two rows could have the same identity in "
            "decision records; declare one of the store's keys, or leave primary_key out")


KeyOf = Callable[[Mapping[str, Any]], Any]


def key_reader(table: Table) -> KeyOf | None:
    """A row's declared key from its column values (None: the table declares none)."""
    key = table.primary_key
    if not key:
        return None
    if len(key) == 1:
        (name,) = key
        return lambda values: values[name]
    return lambda values: tuple(values[name] for name in key)


def collider(table: Table, raw: Mapping[str, Any]) -> str:
    """How a bad-row line names a row whose declared key another row has: the key, and
    its rowid when the store has one (the colliding rows share the key, and a bad row
    is reported once per name)."""
    named = ", ".join(f"{name}={raw.get(name)!r}" for name in table.primary_key)
    return f"{named}, rowid {raw['rowid']}" if "rowid" in raw else named


def collision(table: Table, owner: Any) -> str:
    """The bad-row reason of a row whose declared key another row (`owner`, its identity)
    already has."""
    other = f"rowid {owner[1]}" if (owner.__class__ is tuple and len(owner) == 2
                                    and owner[0] == "rowid") else "another row"
    # (owner None: a row of the same whole read whose identity is the declared key)
    return (f"{other} has the same primary_key ({', '.join(table.primary_key)}, as the "
            "schema file declares it): decision records could not tell the two apart")
