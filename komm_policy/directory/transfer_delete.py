"""`db delete TABLE KEY…`: rows of the SQLite store by primary key, found by the key's value.

A KEY names the rows whose key has its value as the replica compares it (`key_values`):
`db delete TABLE 2001:DB8:BAD:0::/48` deletes the row stored as `2001:db8:bad::/48`,
`db delete TABLE ad` every spelling of that identity (`AD`, `0xad`, `00…ad`).
The text as given also matches itself exactly, so a row the replica skips as a bad row
(`10.0.0.1/8` written behind the tools' back) can be deleted by its stored text.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from .key_values import key_value, needs_scan, stored_keys
from .schema import Column, Schema
from .sqlite_tables import quote, read_schema, user_tables
from .transfer import SQLITE_INTEGER_RANGE, TransferError, _columns, _StoredColumn


def delete_rows(conn: sqlite3.Connection, table: str, keys: list[str],
                schema: Schema | None = None) -> int:
    """Delete rows by primary key (SQLite's rowid when the table declares none): with a
    one-column key each KEY is one key; with a key of n columns, the n KEYs name one key.
    Each key deletes every row whose key has its value (see above).  Returns the rows
    deleted.  Raises `TransferError` for an unknown table, a wrong number of keys, or keys
    that match no row (then nothing is deleted).  One scan of the key columns when their
    meanings have several spellings (network, identity, address, timestamp)."""
    if table not in user_tables(conn):
        raise TransferError([f"no table {table!r} in the store"])
    stored = read_schema(conn, [table]).tables[table]
    columns = _columns(conn, table, schema)
    primary = list(stored.primary_key) or ["rowid"]
    if len(primary) == 1:
        wanted = [[k] for k in keys]
    elif len(keys) == len(primary):
        wanted = [keys]
    else:
        raise TransferError([f"{table}: its key has {len(primary)} columns "
                             f"({', '.join(primary)}); give one value for each"])
    key_columns = [columns[n].column if n in columns else Column(n, "integer")
                   for n in primary]
    by_value = bool(stored.primary_key) and needs_scan(key_columns)
    spellings = stored_keys(conn, table, key_columns) if by_value else {}
    sql = (f"DELETE FROM {quote(table)} WHERE "
           + " AND ".join(f"{quote(n)} = ?" for n in primary))
    missing: list[str] = []
    out_of_range: list[str] = []
    deleted = 0
    with conn:
        for values in wanted:
            params = tuple(_key_value(columns.get(n), v) for n, v in zip(primary, values,
                                                                          strict=True))
            if None in params:
                out_of_range.append(" ".join(values))
                continue
            matches = [params]
            key = key_value(key_columns, params) if by_value else None
            if key is not None:
                matches += [other for other in spellings.get(key, ()) if other != params]
            count = sum(conn.execute(sql, match).rowcount for match in matches)
            if count == 0:
                missing.append(" ".join(values))
            deleted += count
        if missing or out_of_range:
            conn.rollback()
            raise TransferError(
                [f"{table}: key {k!r} is outside SQLite's 64-bit integers: no row has it "
                 f"(nothing deleted)" for k in out_of_range]
                + [f"{table}: no row with key {k!r} (nothing deleted)" for k in missing])
    return deleted


def _key_value(stored: _StoredColumn | None, text: str) -> Any:
    kind = stored.column.type if stored is not None else "integer"
    if kind in ("integer", "timestamp", "bool"):
        try:
            number = int(text)
        except ValueError:
            return text
        # Beyond 64 bits no row can have it (SQLite would raise OverflowError).
        return number if number in SQLITE_INTEGER_RANGE else None
    return text
