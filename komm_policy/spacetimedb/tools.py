"""What the operator tools need from SpacetimeDB: `db schema`, `db export`, `check`.

All three read over HTTP (`/schema?version=9`, `/sql`), never over the subscription:

- `schema_of`: the directory schema (`directory.schema.Schema`) of the module's user
  tables, each column's meaning derived from its SATS type (Refs resolved) with the type
  kept as `storage` — the first version of the schema file, for the operator to annotate;
- `export_tables`: rows of tables as JSON-ready dicts (`SELECT * FROM t`, decoded with the
  answer's own column types, then as the schema file's meanings want them);
- `check_directory`: the module against the schema file and the tables a policy set
  reads (`spacetimedb.check`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..directory.schema import BadValue, Column, Schema, Table, decode_value, encode_value
from .check import ModuleCheck, check_module, server_columns
from .http import SpacetimeHttp
from .schema import ModuleSchema


def schema_of(module: ModuleSchema, tables: Iterable[str] | None = None,
              source: str = "") -> Schema:
    """The schema file's view of `module`'s user tables (or of `tables`)."""
    names = sorted(tables) if tables is not None else sorted(
        name for name, t in module.tables.items() if t.table_type == "user")
    out = {}
    for name in names:
        table = module.tables[name]
        columns = server_columns(module, name)
        keys = tuple(table.columns[i].name for i in table.primary_key)
        out[name] = Table(name, tuple(columns[c.name] for c in table.columns), keys)
    return Schema(out, source)


def export_tables(http: SpacetimeHttp, schema: Schema, tables: Iterable[str],
                  bad_rows: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every row of `tables`, as the schema's meanings read them, in JSON form.  Raises
    `SpacetimeError` (server).  A row that does not decode or fit the schema raises
    `BadValue` naming it — or, given a `bad_rows` list, is left out and described there
    (`table row N: reason`), so the good rows are exported."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name in tables:
        table = schema.tables[name]
        result = http.select_all(name, skip_bad_rows=bad_rows is not None)
        if bad_rows is not None:
            bad_rows.extend(f"{name} row {n}: {reason}" for n, reason in result.bad_rows)
        names = result.names
        rows = []
        skipped = {n for n, _ in result.bad_rows}
        numbers = [n for n in range(len(result.rows) + len(skipped)) if n not in skipped]
        for number, values in zip(numbers, result.rows, strict=True):
            raw = dict(zip(names, values, strict=True))
            row = {}
            try:
                for column in table.columns:
                    value = decode_value(column, _plain(raw.get(column.name)))
                    row[column.name] = encode_value(column, value)
            except BadValue as e:
                if bad_rows is None:
                    raise BadValue(f"{name} row {number}: {e}") from None
                bad_rows.append(f"{name} row {number}: {e}")
                continue
            rows.append(row)
        out[name] = rows
    return out


def _plain(value: Any) -> Any:
    """Decoded SATS values the schema meanings take: timestamps as microseconds."""
    import datetime as dt
    if isinstance(value, dt.datetime):
        delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, bytes):
        return value.hex()
    return value


def check_directory(http: SpacetimeHttp, schema: Schema | None, tables: Iterable[str]
                    ) -> ModuleCheck:
    """The server's module against `schema` and `tables` (`spacetimedb.check`)."""
    return check_module(http.schema(), tables, schema, f"SpacetimeDB {http.endpoint}")


__all__ = ["Column", "check_directory", "export_tables", "schema_of"]
