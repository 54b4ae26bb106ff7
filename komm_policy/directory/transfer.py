"""`db export`, `db import` for any table of the SQLite store (`db delete`: transfer_delete).

The JSON both directions use: one object, each table name mapped to a list of rows, each
row an object of column values as stored (text, numbers, true/false for `bool` columns,
null for none, a list for `list` columns); a table of one column may list bare values::

    {"blocked_domains": [{"domain": "spam.example", "reason": "spam"}],
     "admins": ["c200…0102"]}

`import` validates every row first, against the column meanings of the schema file when
it describes the table, else the store's declared types (`undescribed_tables` names the
tables only storage types checked; the command line says so): wrong types, `300.1.2.3` or
`10.0.0.1/8` (host bits set) in a network column, an address that is neither a mailbox
nor a domain (`addresses.valid_address`, the language's own check), an unknown enum
variant, an integer outside SQLite's 64 bits, a missing value for a column without a
default, an unknown table or column.  JSON `true`/`false` are 1/0 in an integer column the
schema file does not describe (what `export` writes for a `bool` column imports anywhere).
Every problem is reported with its table, row number and key; nothing is written unless
all rows are valid, and then all are written in one transaction (insert or replace).

Rows are keyed by the table's primary key, compared by value as the replica compares it
(`key_values`: `203.0.113.200/32` is the row stored as `203.0.113.200`, which it replaces;
both in one file are refused; network, identity and address keys are written in one
spelling).  A table that declares none is keyed by
SQLite's `rowid`: `export` writes it as each row's first field (`{"rowid": 1, …}`), and
`import` replaces the row with that rowid (a row without `rowid` is appended with a new
one), so importing an export again changes nothing.  (A table with a column itself named
`rowid` has no separate rowid to write.)
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .key_values import SameKey, canonical, key_value, needs_scan, stored_keys
from .schema import BadValue, Column, Schema, decode_value
from .sqlite_tables import NotUtf8, quote, read_schema, text_or_raw, user_tables

SQLITE_INTEGER_RANGE = range(-(2**63), 2**63)
"""SQLite's INTEGER: 64-bit signed (https://sqlite.org/datatype3.html §2)."""

MAX_REPORTED = 50
"""Problems listed before `import` stops counting them individually."""


class TransferError(Exception):
    """A refused import or delete; `problems` lists each (table, row, reason)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class _StoredColumn:
    column: Column
    has_default: bool
    rowid_alias: bool
    described: bool = False
    """The schema file gives this column's meaning (else: the store's declared type)."""


def _columns(conn: sqlite3.Connection, table: str, schema: Schema | None
             ) -> dict[str, _StoredColumn]:
    stored = read_schema(conn, [table]).tables[table]
    annotated = schema.tables.get(table) if schema is not None else None
    info = {row[1]: row for row in conn.execute(f"PRAGMA table_info({quote(table)})")}
    result = {}
    for column in stored.columns:
        meaning = column
        described = annotated is not None and column.name in annotated.by_name
        if described:
            meaning = annotated.by_name[column.name]
        _cid, _name, declared, _notnull, default, pk = info[column.name]
        rowid_alias = bool(pk) and (declared or "").upper() == "INTEGER" and len(
            stored.primary_key) == 1
        result[column.name] = _StoredColumn(meaning, default is not None, rowid_alias,
                                            described)
    return result


def export_tables(conn: sqlite3.Connection, tables: list[str] | None = None,
                  schema: Schema | None = None, bad_rows: list[str] | None = None
                  ) -> dict[str, list[dict[str, Any]]]:
    """Rows of `tables` (default: every directory table), in rowid order, as the JSON
    above.  Raises `TransferError` for an unknown table.  Given a `bad_rows` list, a row
    `import_tables` would refuse (a value the schema's meaning or the store cannot hold,
    written behind the tools' back) is left out and described there (`table row N
    (key): reason`, N counting the table's rows in rowid order), so an export always
    imports again — as the SpacetimeDB export does (`spacetimedb.tools.export_tables`)."""
    existing = user_tables(conn)
    names = tables if tables else existing
    unknown = [t for t in names if t not in existing]
    if unknown:
        raise TransferError([f"no table {t!r} in the store (it has: "
                             f"{', '.join(existing)})" for t in unknown])
    result: dict[str, list[dict[str, Any]]] = {}
    # A text value that is not UTF-8 (SQLite stores what it is given) comes as `NotUtf8`
    # and is a bad row, instead of sqlite3 failing the whole export.
    previous, conn.text_factory = conn.text_factory, text_or_raw
    try:
        _export(conn, names, schema, bad_rows, result)
    finally:
        conn.text_factory = previous
    return result


def _export(conn: sqlite3.Connection, names: list[str], schema: Schema | None,
            bad_rows: list[str] | None, result: dict[str, list[dict[str, Any]]]) -> None:
    with conn:
        conn.execute("BEGIN")
        for name in names:
            columns = _columns(conn, name, schema)
            keyed_by_rowid = _keyed_by_rowid(conn, name, columns)
            select = "rowid AS rowid, *" if keyed_by_rowid else "*"
            cursor = conn.execute(f"SELECT {select} FROM {quote(name)} ORDER BY rowid")
            fields = [d[0] for d in cursor.description]
            primary = read_schema(conn, [name]).tables[name].primary_key
            twins = SameKey(name, primary, [columns[k].column for k in primary])
            rows = []
            skipped = 0
            for values in cursor:
                row = {}
                for field, value in zip(fields, values, strict=True):
                    if field not in columns:  # the rowid
                        row[field] = value
                        continue
                    kind = columns[field].column.type
                    if kind == "bool" and value in (0, 1):
                        value = bool(value)
                    elif kind == "list" and isinstance(value, str):
                        with contextlib.suppress(ValueError):
                            value = json.loads(value)
                    row[field] = value
                if bad_rows is not None:
                    checked = {k: v for k, v in row.items() if k in columns}
                    problems = _validate(name, len(rows) + skipped + 1, checked, columns)[1]
                    if problems:
                        bad_rows.extend(problems)
                        skipped += 1
                        continue
                    twin = twins.second(len(rows) + skipped + 1, row)
                    if twin is not None:
                        bad_rows.append(twin)
                        skipped += 1
                        continue
                elif any(isinstance(v, NotUtf8) for v in row.values()):
                    raise TransferError([f"{name} row {len(rows) + 1}: a text value that is "
                                         "not UTF-8"])
                rows.append(row)
            result[name] = rows


def undescribed_tables(conn: sqlite3.Connection, tables: Any, schema: Schema | None
                       ) -> list[str]:
    """What `schema` does not describe among the store's `tables`: `"notes"` for a table it
    has no entry for, `"orders (status, note)"` for columns its entry lacks.
    `import` checks those against the store's declared types only (no address or network
    syntax, no enum variants)."""
    existing = set(user_tables(conn))
    result = []
    for table in tables:
        if table not in existing:
            continue
        annotated = schema.tables.get(table) if schema is not None else None
        if annotated is None:
            result.append(table)
            continue
        stored = read_schema(conn, [table]).tables[table]
        missing = [c.name for c in stored.columns if c.name not in annotated.by_name]
        if missing:
            result.append(f"{table} ({', '.join(missing)})")
    return result


def import_tables(conn: sqlite3.Connection, data: Any, schema: Schema | None = None
                  ) -> dict[str, int]:
    """Validate every row, then insert (or replace) them all in one transaction.
    Returns rows written per table; raises `TransferError` listing every problem."""
    if not isinstance(data, Mapping):
        raise TransferError(["the file must hold one JSON object: table name → rows"])
    existing = set(user_tables(conn))
    problems: list[str] = []
    plans: list[tuple[str, list[str], list[tuple[Any, ...]]]] = []
    stale: list[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]] = []
    for table, rows in data.items():
        if table not in existing:
            problems.append(f"{table}: no such table in the store (create it first; it "
                            f"has: {', '.join(sorted(existing))})")
            continue
        if not isinstance(rows, list):
            problems.append(f"{table}: rows must be a JSON list")
            continue
        columns = _columns(conn, table, schema)
        primary = read_schema(conn, [table]).tables[table].primary_key
        keyed_by_rowid = _keyed_by_rowid(conn, table, columns)
        key_columns = [columns[k].column for k in primary]
        by_value = needs_scan(key_columns)
        writes: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []  # key value, spelling
        seen: dict[tuple[Any, ...], tuple[int, str]] = {}  # key → first row, its key
        seen_rowids: dict[int, int] = {}  # rowid → first row number
        statements: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, Mapping) and len(columns) == 1:
                row = {next(iter(columns)): row}
            if not isinstance(row, Mapping):
                problems.append(f"{table} row {number}: not a JSON object")
                continue
            rowid = None
            if keyed_by_rowid and "rowid" in row:
                row = dict(row)
                rowid = row.pop("rowid")
            values, row_problems = _validate(table, number, row, columns)
            if rowid is not None:
                if type(rowid) is int and rowid not in SQLITE_INTEGER_RANGE:
                    row_problems.append(f"{table} row {number}: `rowid` {rowid} is outside "
                                        f"SQLite's 64-bit integers")
                elif type(rowid) is not int:
                    row_problems.append(f"{table} row {number}: `rowid` must be an integer "
                                        f"(the row's key in a table without a primary key), "
                                        f"not {rowid!r}")
                elif rowid in seen_rowids:
                    row_problems.append(f"{table} row {number}: the same rowid ({rowid}) as "
                                        f"row {seen_rowids[rowid]}")
                else:
                    seen_rowids[rowid] = number
                    values = {"rowid": rowid, **values}
            if not row_problems and primary and all(
                    values.get(k) is not None for k in primary):
                # Two rows with one key in one file: the last would silently win.  Keys
                # compare by value, as the replica compares them (`key_values`), and are
                # written in one spelling.
                for k in primary:
                    values[k] = canonical(columns[k].column, values[k])
                written = tuple(values[k] for k in primary)
                key = key_value(key_columns, written) or written
                given = ", ".join(f"{k}={row[k]!r}" for k in primary if k in row)
                if key in seen:
                    first, spelled = seen[key]
                    row_problems.append(
                        f"{table} row {number} ({given}): the same primary key "
                        f"({', '.join(primary)}) as row {first} ({spelled})")
                else:
                    seen[key] = number, given
                    if by_value:
                        writes.append((key, written))
            problems.extend(row_problems)
            if not row_problems:
                statements.setdefault(tuple(values), []).append(tuple(values.values()))
        if writes:
            stale.append((table, primary, _other_spellings(conn, table, key_columns, writes)))
        for names, batch in statements.items():
            plans.append((table, list(names), batch))
    if problems:
        raise TransferError(_bounded(problems))
    counts: dict[str, int] = {table: 0 for table in data}
    try:
        with conn:
            for table, primary, rows in stale:
                # A row whose key has this value but another spelling is replaced too.
                where = " AND ".join(f"{quote(k)} IS ?" for k in primary)
                conn.executemany(f"DELETE FROM {quote(table)} WHERE {where}", rows)
            for table, names, batch in plans:
                conn.executemany(
                    f"INSERT OR REPLACE INTO {quote(table)} "
                    f"({', '.join(quote(n) for n in names)}) "
                    f"VALUES ({', '.join('?' * len(names))})", batch)
                counts[table] += len(batch)
    except sqlite3.Error as exc:  # a constraint the schema file does not know
        raise TransferError([f"the store refused the rows (nothing written): {exc}"]) from exc
    return counts


def _keyed_by_rowid(conn: sqlite3.Connection, table: str,
                    columns: Mapping[str, _StoredColumn]) -> bool:
    """The table declares no primary key and has a rowid of its own to key rows by."""
    if "rowid" in {name.lower() for name in columns}:
        return False
    return not read_schema(conn, [table]).tables[table].primary_key


def _other_spellings(conn: sqlite3.Connection, table: str, key_columns: list[Column],
                     writes: list[tuple[tuple[Any, ...], tuple[Any, ...]]]
                     ) -> list[tuple[Any, ...]]:
    """The stored keys (as stored) of rows that have the value of a key in `writes` but
    another spelling: `INSERT OR REPLACE` would keep them beside the new row, and the
    replica would skip one of the two.  One scan of the table's key columns."""
    stored = stored_keys(conn, table, key_columns)
    return [other for key, written in writes for other in stored.get(key, ())
            if other != written]


def _validate(table: str, number: int, row: Mapping[str, Any],
              columns: Mapping[str, _StoredColumn]) -> tuple[dict[str, Any], list[str]]:
    problems = []
    values: dict[str, Any] = {}
    key = ", ".join(f"{k}={row[k]!r}" for k in list(row)[:2])
    where = f"{table} row {number} ({key})"
    for name in row:
        if name not in columns:
            problems.append(f"{where}: no column {name!r} (columns: {', '.join(columns)})")
    for name, stored in columns.items():
        if name not in row:
            if not (stored.has_default or stored.rowid_alias or stored.column.optional):
                problems.append(f"{where}: column {name} is missing and has no default")
            continue
        value = row[name]
        if value is None and stored.rowid_alias:
            continue  # SQLite assigns the next rowid
        if isinstance(value, bool) and stored.column.type == "integer" and not stored.described:
            value = int(value)  # a bool column as another schema file's `export` wrote it
        try:
            decode_value(stored.column, value)
            _check_storable(stored.column, value)
        except BadValue as exc:
            problems.append(f"{where}: {exc}")
            continue
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, list | dict):
            value = json.dumps(value, ensure_ascii=False)
        elif isinstance(value, str) and stored.column.type in ("network", "address"):
            value = value.strip()
        values[name] = value
    return values, problems


def _check_storable(column: Column, value: Any) -> None:
    """What `decode_value` lets through but the store or the language cannot hold: an
    integer beyond SQLite's 64 bits (SATS allows u256; SQLite would raise OverflowError),
    a float that is not finite (Python's JSON reads NaN, Infinity and 1e999),
    (an address `valid_address` refuses is `decode_value`'s own refusal).  Raises
    `BadValue`."""
    if isinstance(value, float) and not math.isfinite(value):  # JSON NaN, Infinity, 1e999
        raise BadValue(f"column {column.name}: {value} is not a finite number (SQLite "
                       f"would store NaN as NULL)")
    if isinstance(value, int) and not isinstance(value, bool) and (
            value not in SQLITE_INTEGER_RANGE):
        raise BadValue(f"column {column.name}: {value} is outside SQLite's 64-bit integers "
                       f"(-2^63 … 2^63-1)")
    if column.type == "list" and isinstance(value, list):
        element = Column(column.name, column.element or "text")
        for item in value:
            _check_storable(element, item)


def _bounded(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_REPORTED:
        return problems
    return [*problems[:MAX_REPORTED], f"… and {len(problems) - MAX_REPORTED} more problems"]
