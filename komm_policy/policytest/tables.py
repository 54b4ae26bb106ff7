"""Table rows of a test case → an in-memory directory, every row checked against the schema.

Rows are written per table name, column by column, exactly as the directory stores them
(`[[rows.blocked_domains]]` with `domain = "spam.example"`, ...), and checked against
the schema file beside the policies (`schema.toml`, `directory.schema`): every table it
names, each column's meaning (`decode_value`: addresses, networks, enums with their
variants, identities, optional columns), every column it does not mark optional present.
A table it does not name, or rows without a schema file, are errors.
"""

from __future__ import annotations

import datetime
import difflib
from collections.abc import Callable, Mapping
from typing import Any

from ..directory import DirectoryError
from ..directory.memory import InMemoryDirectory
from ..directory.schema import BadValue, Schema, Table, decode_value

MAX_ROW_PROBLEMS = 20
"""Problems one `check_rows` reports at most (the count of the rest is given)."""


class RowError(ValueError):
    """Rows that do not fit the schema.  `problems` lists each as (key path under `rows`:
    `(table,)`, `(table, row index)` or `(table, row index, column)`; the message naming
    table, row and column); the exception's text is the first message."""

    def __init__(self, message: str, problems: list[tuple[tuple[str | int, ...], str]]
                 | None = None, *, key: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or [((), message)]
        self.key = key  # within a row: the column at fault, if one is

    def located(self, find: Callable[[tuple[str | int, ...]], tuple[int, int]]) -> str:
        """Every problem as `line L: message` (one per line), `find` giving the line of a
        key path (`tomlpos.KeyPositions.find`)."""
        return "\n".join(f"line {find(path)[0]}: {message}" for path, message in self.problems)


def check_rows(tables: Mapping[str, Any], schema: Schema | None = None
               ) -> dict[str, list[dict[str, Any]]]:
    """Validate `{table: [row, ...]}` (rows as mappings) against the schema file.

    Raises RowError for an unknown table or column, a missing required column, or a
    value of the wrong type or meaning (a network column's `10.0.0.1/8`, with host bits
    set, would silently cover all of 10.0.0.0/8: an error)."""
    if not isinstance(tables, Mapping):
        raise RowError("`rows` must be a table of tables: [[rows.TABLE]]")
    converted: dict[str, list[dict[str, Any]]] = {}
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for table, rows in tables.items():
        if schema is None:
            raise RowError(f"rows of `{table}`: no schema file beside the policies says "
                           "what its columns are (see `komm-policy db schema`)")
        described = schema.table(table)
        if described is None:
            names = sorted(schema.tables)
            close = difflib.get_close_matches(table, names, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            # `[[rows.T]]` is found by its first element; `rows.T = …` by its key
            at = (table, 0) if isinstance(rows, list) and rows else (table,)
            problems.append((at, f"unknown table `{table}`{hint} "
                                 f"(tables: {', '.join(names)})"))
            continue
        if not isinstance(rows, list):
            problems.append(((table,), f"`rows.{table}` must be an array of tables: "
                                       f"[[rows.{table}]]"))
            continue
        for number, row in enumerate(rows, 1):
            where = f"row {number} of `{table}`"
            try:
                if not isinstance(row, Mapping):
                    raise RowError(f"{where}: must be a table of columns")
                row = _timestamps(described, row)
                _check_described(described, row, where, required=True)
            except RowError as exc:  # every row's problem, each at its own line
                problems.append(((table, number - 1, *exc.key), str(exc)))
                continue
            converted.setdefault(table, []).append(dict(row))
    if problems:
        shown = problems[:MAX_ROW_PROBLEMS]
        if len(problems) > len(shown):
            shown.append((shown[-1][0], f"… and {len(problems) - len(shown)} more problems"))
        raise RowError(shown[0][1], shown)
    return converted


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


def _check_described(table: Table, row: Mapping[str, Any], where: str, *,
                     required: bool) -> None:
    """Check a row against the schema file's columns (their meanings)."""
    for name in row:
        if name not in table.by_name:
            close = difflib.get_close_matches(name, table.column_names, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise RowError(f"{where}: unknown column `{name}`{hint} "
                           f"(columns: {', '.join(table.column_names)})", key=(name,))
    for column in table.columns:
        if column.name not in row:
            if required and not column.optional:
                raise RowError(f"{where}: missing required column `{column.name}`")
            continue
        try:
            decode_value(column, row[column.name])
        except BadValue as exc:
            raise RowError(f"{where}: column `{column.name}` ({column.type}): {exc}",
                           key=(column.name,)) from None


def build_directory(rows: Mapping[str, list[dict[str, Any]]]) -> InMemoryDirectory:
    """An in-memory directory holding exactly these rows."""
    return InMemoryDirectory({name: list(table_rows) for name, table_rows in rows.items()})


class UnavailableDirectory:
    """A directory whose every lookup fails, as a backend that is down: for cases that
    test `on error` branches and the `on_lookup_error` fallback."""

    blocking = False

    def snapshot(self) -> UnavailableDirectory:
        return self

    @property
    def tables(self) -> Any:
        raise DirectoryError("directory unavailable (test case)")
