"""Any SQLite table as directory rows: its schema, its rows, and which rows changed.

Change capture: triggers on every directory table append `(table, rowid)` to
`komm_changes` on each insert, update and delete (an update records the old and the new
rowid).  A replica remembers the last sequence number it applied and reads only newer
entries, then re-reads just those rowids: a 1-row change costs one indexed read, however
large the table.  The log keeps its newest `CHANGE_LOG_KEEP` entries; a replica that fell
further behind (a gap in the sequence) reloads whole tables instead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from .declared_keys import key_problem
from .schema import Column, Schema, Table, meaning_from_sqlite

INTERNAL_TABLES = frozenset({"komm_meta", "komm_changes", "mta_log", "mta_log_records"})
CHANGE_LOG_KEEP = 100_000

CHANGE_LOG = """
CREATE TABLE IF NOT EXISTS komm_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl TEXT NOT NULL,
    rid INTEGER NOT NULL
);
"""

_CAPTURE = """
CREATE TRIGGER IF NOT EXISTS {trigger} AFTER {event_sql} ON {table}
BEGIN
    {body}
    DELETE FROM komm_changes WHERE seq <= (SELECT max(seq) FROM komm_changes) - {keep};
END;
"""
_RECORD = "INSERT INTO komm_changes (tbl, rid) VALUES ({name}, {which}.rowid);"


def quote(name: str) -> str:
    """An SQL identifier, double-quoted (names come from the schema, never from requests)."""
    return '"' + name.replace('"', '""') + '"'


def user_tables(conn: sqlite3.Connection) -> list[str]:
    return [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        " ORDER BY name") if name not in INTERNAL_TABLES]


def read_schema(conn: sqlite3.Connection, tables: Iterable[str] | None = None) -> Schema:
    """The tables' schema with default meanings from the declared types (integer, text,
    float, bool); a nullable column is optional.  The operator refines meanings."""
    result = {}
    for name in tables if tables is not None else user_tables(conn):
        info = conn.execute(f"PRAGMA table_info({quote(name)})").fetchall()
        if not info:
            continue
        columns = []
        keys = []
        for _cid, column, declared, notnull, _default, pk in info:
            columns.append(Column(column, meaning_from_sqlite(declared or ""),
                                  optional=not notnull and not pk, storage=declared or ""))
            if pk:
                keys.append((pk, column))
        result[name] = Table(name, tuple(columns), tuple(c for _, c in sorted(keys)))
    return Schema(result, "sqlite")


def store_keys(conn: sqlite3.Connection, table: Table) -> list[tuple[str, ...]]:
    """The column sets the store keeps unique in `table` (as `read_schema` read it): its
    primary key, then every UNIQUE constraint or unique index that is not partial and
    indexes columns only (`PRAGMA index_list`, `index_info`)."""
    keys = [table.primary_key] if table.primary_key else []
    for _seq, index, unique, _origin, partial in conn.execute(
            f"PRAGMA index_list({quote(table.name)})").fetchall():
        if not unique or partial:
            continue
        columns = tuple(name for _n, _cid, name in conn.execute(
            f"PRAGMA index_info({quote(index)})").fetchall())
        if columns and None not in columns and columns not in keys:
            keys.append(columns)  # an expression's column name is None: not a key
    return keys


def install_change_capture(conn: sqlite3.Connection, tables: Iterable[str]) -> None:
    """Create the change log and the triggers on `tables` (idempotent)."""
    with conn:
        conn.executescript(CHANGE_LOG)
        for name in tables:
            literal = "'" + name.replace("'", "''") + "'"  # any name: quotes doubled
            for event, body in (
                    ("ins", _RECORD.format(name=literal, which="NEW")),
                    ("del", _RECORD.format(name=literal, which="OLD")),
                    ("upd", _RECORD.format(name=literal, which="OLD")
                     + _RECORD.format(name=literal, which="NEW"))):
                event_sql = {"ins": "INSERT", "del": "DELETE", "upd": "UPDATE"}[event]
                conn.execute(_CAPTURE.format(
                    trigger=quote(f"komm_cap_{name}_{event}"), table=quote(name),
                    event_sql=event_sql, body=body, keep=CHANGE_LOG_KEEP))


def has_change_capture(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND "
                        "name IN (?, ?, ?)", tuple(f"komm_cap_{table}_{e}"
                                                   for e in ("ins", "del", "upd"))
                        ).fetchone()[0] == 3


def last_change(conn: sqlite3.Connection) -> int:
    try:
        return conn.execute("SELECT coalesce(max(seq), 0) FROM komm_changes").fetchone()[0]
    except sqlite3.OperationalError:
        return 0  # no change log yet


def read_changes(conn: sqlite3.Connection, since: int
                 ) -> tuple[int, dict[str, set[int]], bool]:
    """(newest seq, {table: changed rowids}, gap): `gap` when entries after `since` were
    already pruned, so the caller must reload whole tables."""
    try:
        rows = conn.execute("SELECT seq, tbl, rid FROM komm_changes WHERE seq > ? "
                            "ORDER BY seq", (since,)).fetchall()
    except sqlite3.OperationalError:
        return since, {}, False
    if not rows:
        return since, {}, False
    # AUTOINCREMENT never reuses a seq: a first entry past since + 1 means entries were
    # pruned unread (also from 0: an import of more than CHANGE_LOG_KEEP rows into a
    # store whose log was empty lost its first entries)
    gap = rows[0][0] > since + 1
    changed: dict[str, set[int]] = {}
    for _seq, table, rid in rows:
        changed.setdefault(table, set()).add(rid)
    return rows[-1][0], changed, gap


class NotUtf8(bytes):
    """A stored text value that is not UTF-8 (SQLite stores what it is given): its bytes,
    shown as what they are in a bad row's reason.  No column decoder takes it as text,
    so the row is a bad row (skipped, counted) instead of a read that fails whole."""

    def __repr__(self) -> str:
        return f"text that is not UTF-8 ({bytes(self)!r})"


def text_or_raw(data: bytes) -> str | NotUtf8:
    """A `text_factory`: the text, or `NotUtf8` for bytes that are not UTF-8."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return NotUtf8(data)


def read_table(conn: sqlite3.Connection, table: Table,
               rowids: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """Rows as {column: value, "rowid": n}; only `rowids` when given.  A text value that
    is not UTF-8 comes as `NotUtf8` (read again only then: sqlite3's own decoding, which
    refuses the whole query, costs nothing per value)."""
    try:
        return _read_table(conn, table, rowids)
    except sqlite3.OperationalError as exc:
        if "decode to UTF-8" not in str(exc):
            raise
    previous = conn.text_factory
    conn.text_factory = text_or_raw
    try:
        return _read_table(conn, table, rowids)
    finally:
        conn.text_factory = previous


def _read_table(conn: sqlite3.Connection, table: Table,
                rowids: Iterable[int] | None) -> list[dict[str, Any]]:
    names = table.column_names
    select = ", ".join(quote(c) for c in names)
    sql = f"SELECT rowid, {select} FROM {quote(table.name)}"
    if rowids is None:
        cursor = conn.execute(sql)
        return [dict(zip(("rowid", *names), row, strict=True)) for row in cursor]
    ids = list(rowids)
    result = []
    for start in range(0, len(ids), 500):  # SQLite's default limit of bound parameters
        chunk = ids[start:start + 500]
        cursor = conn.execute(f"{sql} WHERE rowid IN ({', '.join('?' * len(chunk))})",
                              chunk)
        result.extend(dict(zip(("rowid", *names), row, strict=True)) for row in cursor)
    return result


def store_problems(conn: sqlite3.Connection, schema: Schema | None, tables: Iterable[str],
                   where: str) -> list[str]:
    """What keeps the store from serving a policy set that reads `tables`, one message
    per problem (empty: none): a table the store lacks, a column the schema file names
    that the table lacks (the first one), a declared `primary_key` that is not a key of
    the store (`declared_keys.key_problem`, positioned at the schema file's entry).
    `where` names the store.  The replica refuses a policy set on the first
    (`SqliteDirectory.require`, each whole read); `check --directory sqlite:PATH` lists
    them all.  Raises `sqlite3.Error` when the store cannot be read."""
    names = sorted(set(tables))
    stored = read_schema(conn, names)
    problems = []
    for name in names:
        table = stored.tables.get(name)
        if table is None:
            problems.append(f"{where}: no table {name!r} (the policies read it; create it "
                            "or correct the schema file)")
            continue
        wanted = schema.tables.get(name) if schema is not None else None
        if schema is None or wanted is None:
            continue
        missing = [c for c in wanted.column_names if c not in table.by_name]
        if missing:
            problems.append(f"{where}: table {name!r} has no column {missing[0]!r} (the "
                            "schema file names it)")
        elif wanted.primary_key:
            problem = key_problem(schema, wanted, store_keys(conn, table),
                                  f"the store {where}")
            if problem is not None:
                problems.append(problem)
    return problems
