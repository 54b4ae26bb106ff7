"""Table rows of a test case → an in-memory directory, every row checked against the schema.

Rows are written per table name, column by column, exactly as the directory stores them
(`[[rows.subscriptions]]` with `subscriber_account_id = 101`, ...).  Two schemas check them:

- the schema file beside the policies (`schema.toml`, `directory.schema`), when there is
  one: every table it names, each column's meaning (`decode_value`: addresses, networks,
  enums with their variants, identities, optional columns);
- the row types of `directory.DirectoryRows` for the five tables the built-in helpers
  read (`blocked_ips`, `message_categories`, `account`, `admin_identities`,
  `subscriptions`), with their defaults (`active = true`).

A table in neither is an error.  Rows reach the directory both ways: as `DirectoryRows`
for the helpers and as plain tables (`InMemoryDirectory(tables=…)`) for table lookups.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ..directory import (
    AccountRow,
    BlockedIpRow,
    CategoryRow,
    DirectoryError,
    DirectoryRows,
    SubscriptionRow,
)
from ..directory.memory import LOOKUP_METHODS, InMemoryDirectory
from ..directory.schema import BadValue, Schema, Table, decode_value
from ..ipset import parse_entry


class AdminIdentityRow(msgspec.Struct, frozen=True):
    """`admin_identities` has one column; the directory keeps the identities as strings."""

    identity: str


SCHEMA: dict[str, type[msgspec.Struct]] = {
    "blocked_ips": BlockedIpRow,
    "message_categories": CategoryRow,
    "account": AccountRow,
    "admin_identities": AdminIdentityRow,
    "subscriptions": SubscriptionRow,
}
"""Table name → row type (column names, types, defaults)."""

_NETWORK_COLUMNS = {("blocked_ips", "ip")}
"""Columns holding an IP address or CIDR network: their syntax is checked too."""


class RowError(ValueError):
    """A row that does not fit the schema; the message names the table, row and column."""


def columns(table: str) -> tuple[str, ...]:
    return SCHEMA[table].__struct_fields__


def check_rows(tables: Mapping[str, Any], schema: Schema | None = None
               ) -> dict[str, list[Any]]:
    """Validate `{table: [row, ...]}` (rows as mappings); the helpers' tables become row
    types, other tables stay mappings.

    Raises RowError for an unknown table or column, a missing required column, a value of
    the wrong type or meaning, or an address/network column that is not an IP address or
    network (with host bits set, `10.0.0.1/8`, it would silently cover all of
    10.0.0.0/8)."""
    if not isinstance(tables, Mapping):
        raise RowError("`rows` must be a table of tables: [[rows.TABLE]]")
    converted: dict[str, list[Any]] = {}
    for table, rows in tables.items():
        described = schema.table(table) if schema is not None else None
        row_type = _helper_row_type(table, described)
        if row_type is None and described is None:
            names = [*SCHEMA, *(t for t in (schema.tables if schema else ()) if t not in SCHEMA)]
            close = difflib.get_close_matches(table, names, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise RowError(f"unknown table `{table}`{hint} (tables: {', '.join(names)})")
        if not isinstance(rows, list):
            raise RowError(f"`rows.{table}` must be an array of tables: [[rows.{table}]]")
        for number, row in enumerate(rows, 1):
            where = f"row {number} of `{table}`"
            if not isinstance(row, Mapping):
                raise RowError(f"{where}: must be a table of columns")
            row = _timestamps(described, row)
            if row_type is None:
                if described is not None:
                    _check_described(described, row, where, required=True)
                converted.setdefault(table, []).append(dict(row))
                continue
            # a helper's table: its row type's columns, and the schema file's if it has any
            known = (*columns(table), *(c for c in (described.column_names if described
                                                    else ()) if c not in columns(table)))
            for column in row:
                if column not in known:
                    close = difflib.get_close_matches(column, known, n=1)
                    hint = f"; did you mean `{close[0]}`?" if close else ""
                    raise RowError(f"{where}: unknown column `{column}`{hint} "
                                   f"(columns: {', '.join(known)})")
            try:
                value = msgspec.convert({c: v for c, v in row.items()
                                         if c in columns(table)}, row_type, strict=True)
            except msgspec.ValidationError as exc:
                raise RowError(f"{where}: {_column_message(exc)}") from None
            for table_name, column in _NETWORK_COLUMNS:
                if table_name == table:
                    try:
                        _check_network(getattr(value, column))
                    except ValueError as exc:
                        raise RowError(f"{where}: column `{column}`: {exc}") from None
            if described is not None:
                # the same row as the schema file's table: the helper's defaults, then
                # the columns written; every column the schema file requires must be there
                merged = {c: v for c, v in {**msgspec.to_builtins(value), **row}.items()
                          if c in described.by_name}
                _check_described(described, merged, where, required=True)
                converted.setdefault(table, []).append(Described(value, merged))
            else:
                converted.setdefault(table, []).append(value)
    return converted


@dataclass(frozen=True, slots=True)
class Described:
    """A helper table's row: as the helper's row type, and as the schema file's table."""

    struct: msgspec.Struct
    columns: dict[str, Any]


def _timestamps(table: Table | None, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """TOML dates and times in the schema's timestamp columns → Unix seconds (as SQLite
    stores them)."""
    if table is None:
        return row
    converted = dict(row)
    for name, value in row.items():
        column = table.by_name.get(name)
        if column is None or column.type != "timestamp":
            continue
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            converted[name] = int(value.timestamp())
        elif isinstance(value, datetime.date):
            converted[name] = int(datetime.datetime(value.year, value.month, value.day,
                                                    tzinfo=datetime.UTC).timestamp())
    return converted


def _helper_row_type(table: str, described: Table | None) -> type[msgspec.Struct] | None:
    """The helpers' row type for this table, unless the schema file describes a table of
    that name without the columns the helpers need (another organisation's `account`)."""
    row_type = SCHEMA.get(table)
    if row_type is None or described is None:
        return row_type
    required = set(row_type.__struct_fields__) - set(
        row_type.__struct_fields__[len(row_type.__struct_fields__)
                                   - len(row_type.__struct_defaults__):])
    return row_type if required <= set(described.column_names) else None


def _check_described(table: Table, row: Mapping[str, Any], where: str, *,
                     required: bool) -> None:
    """Check a row against the schema file's columns (their meanings)."""
    for name in row:
        if name not in table.by_name:
            close = difflib.get_close_matches(name, table.column_names, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise RowError(f"{where}: unknown column `{name}`{hint} "
                           f"(columns: {', '.join(table.column_names)})")
    for column in table.columns:
        if column.name not in row:
            if required and not column.optional:
                raise RowError(f"{where}: missing required column `{column.name}`")
            continue
        try:
            decode_value(column, row[column.name])
        except BadValue as exc:
            raise RowError(f"{where}: column `{column.name}` ({column.type}): {exc}"
                           ) from None


def _check_network(text: str) -> None:
    parse_entry(text)
    if "/" in text:
        ipaddress.ip_network(text.strip(), strict=True)  # host bits set: ValueError


def _column_message(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if " - at `$." in text:
        message, path = text.rsplit(" - at `$.", 1)
        return f"column `{path.rstrip('`')}`: {message}"
    if "missing required field" in text:
        return text.replace("Object missing required field", "missing required column")
    return text


def build_directory(rows: Mapping[str, list[Any]]) -> InMemoryDirectory:
    """An in-memory directory holding exactly these rows (for the helpers and as tables)."""
    tables = {name: [r.columns if isinstance(r, Described) else
                     msgspec.to_builtins(r) if isinstance(r, msgspec.Struct) else r
                     for r in table_rows] for name, table_rows in rows.items()}

    def helper(name: str) -> tuple[Any, ...]:  # rows of the helpers' own row types only
        return tuple(r.struct if isinstance(r, Described) else r
                     for r in rows.get(name, ()) if isinstance(r, msgspec.Struct | Described))

    return InMemoryDirectory(DirectoryRows(
        blocked_ips=helper("blocked_ips"),
        message_categories=helper("message_categories"),
        account=helper("account"),
        admin_identities=tuple(r.identity for r in helper("admin_identities")),  # type: ignore[attr-defined]
        subscriptions=helper("subscriptions"),
    ), tables=tables)


class UnavailableDirectory:
    """A directory whose every lookup fails, as a backend that is down: for cases that
    test `on error` branches and the `on_lookup_error` fallback."""

    blocking = False

    def __init__(self) -> None:
        for name in LOOKUP_METHODS:
            setattr(self, name, self._fail)

    def _fail(self, *args: object) -> bool:
        raise DirectoryError("directory unavailable (test case)")
