"""A SpacetimeDB module's schema as `GET /v1/database/{db}/schema?version=9` returns it.

The body is `RawModuleDefV9` in typed SATS-JSON (SpacetimeDB
`crates/lib/src/db/raw_def/v9.rs`; example in the HTTP API docs `00300-database.md`):
`{"typespace": {"types": [T…]}, "tables": [...], "reducers": [...], "types": [...],
"misc_exports": [...], "row_level_security": [{"sql": "…"}]}`.  A table names its row type
by `product_type_ref` (an index into the typespace); columns of module-defined structs and
enums are `{"Ref": n}` again, resolved through the same typespace.  Options are
`{"some": x}` / `{"none": []}`, enums `{"Variant": payload}`.

`parse_module` keeps what komm-policy needs: tables (columns with types, primary key,
unique constraints, public/private, user/system), reducers (parameters),
row-level-security filters.  A unique constraint is `{"name": {"some": …}, "data":
{"Unique": {"columns": [i…]}}}` (`RawConstraintDefV9`; a column list is an array of column
positions, as `primary_key`); a constraint of another kind is passed over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .sats_types import (
    ProductType,
    SatsError,
    SatsType,
    Typespace,
    parse_option_str,
    parse_type,
)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: SatsType


@dataclass(frozen=True, slots=True)
class TableDef:
    """One table of the module.  `access` is "public" or "private"; `table_type` is
    "user" or "system"; `primary_key` holds column positions, `unique` the column
    positions of each unique constraint."""

    name: str
    columns: tuple[Column, ...]
    row_type: ProductType
    primary_key: tuple[int, ...] = ()
    access: str = "public"
    table_type: str = "user"
    unique: tuple[tuple[int, ...], ...] = ()

    def keys(self) -> list[tuple[str, ...]]:
        """The column sets the server keeps unique: the primary key, then each unique
        constraint (by column name)."""
        found: list[tuple[str, ...]] = []
        for key in (self.primary_key, *self.unique):
            names = tuple(self.columns[i].name for i in key)
            if names and names not in found:
                found.append(names)
        return found

    def column(self, name: str) -> Column | None:
        for column in self.columns:
            if column.name == name:
                return column
        return None


@dataclass(frozen=True, slots=True)
class ReducerDef:
    name: str
    params: ProductType
    lifecycle: str | None = None


@dataclass(frozen=True, slots=True)
class ModuleSchema:
    """The parts of `RawModuleDefV9` komm-policy reads."""

    typespace: Typespace
    tables: dict[str, TableDef]
    reducers: dict[str, ReducerDef]
    row_level_security: tuple[str, ...] = ()

    def rls_filters(self, table: str) -> tuple[str, ...]:
        """The row-level-security SQL filters that name `table` after FROM/JOIN (the v9
        definition holds each filter as SQL text: `SELECT * FROM t WHERE …`)."""
        out = []
        for sql in self.row_level_security:
            words = sql.replace('"', " ").replace("\n", " ").split()
            lowered = [w.lower() for w in words]
            for i, word in enumerate(lowered[:-1]):
                if word in ("from", "join") and words[i + 1] == table:
                    out.append(sql)
                    break
        return tuple(out)

    def describe(self, t: SatsType) -> str:
        return self.typespace.describe(t)


def _variant_name(raw: Any, path: str) -> str:
    if isinstance(raw, dict) and len(raw) == 1:
        return next(iter(raw)).lower()
    raise SatsError("expected an enum value {\"Variant\": []}", path)


def _expect(raw: Any, kind: type, path: str, what: str) -> Any:
    if not isinstance(raw, kind):
        raise SatsError(f"expected {what}", path)
    return raw


def parse_module(raw: Any) -> ModuleSchema:
    """`ModuleSchema` from the decoded `/schema?version=9` JSON.  Raises `SatsError` (with
    a JSON path) when the document does not have the v9 shape."""
    _expect(raw, dict, "$", "an object (RawModuleDefV9)")
    space = _expect(raw.get("typespace"), dict, "$.typespace", "an object")
    types = [parse_type(t, f"$.typespace.types[{i}]")
             for i, t in enumerate(_expect(space.get("types"), list, "$.typespace.types",
                                           "a list"))]
    names: dict[int, str] = {}
    for i, entry in enumerate(raw.get("types") or []):
        path = f"$.types[{i}]"
        _expect(entry, dict, path, "an object")
        scoped = _expect(entry.get("name"), dict, path + ".name", "an object")
        ty = entry.get("ty")
        if isinstance(ty, int) and isinstance(scoped.get("name"), str):
            names[ty] = "::".join([*scoped.get("scope", []), scoped["name"]])
    typespace = Typespace(types, names)

    tables: dict[str, TableDef] = {}
    for i, table in enumerate(_expect(raw.get("tables"), list, "$.tables", "a list")):
        path = f"$.tables[{i}]"
        _expect(table, dict, path, "an object")
        name = _expect(table.get("name"), str, path + ".name", "a string")
        ref = table.get("product_type_ref")
        if not isinstance(ref, int) or not 0 <= ref < len(types):
            raise SatsError("product_type_ref is not an index into the typespace",
                            path + ".product_type_ref")
        row_type = typespace.resolve(types[ref], path)
        if not isinstance(row_type, ProductType):
            raise SatsError("a table's row type must be a product", path)
        columns = tuple(Column(n or str(j), t) for j, (n, t) in enumerate(row_type.elements))
        primary = table.get("primary_key") or []
        if not all(isinstance(c, int) and 0 <= c < len(columns) for c in primary):
            raise SatsError("primary_key names columns that do not exist",
                            path + ".primary_key")
        unique = []
        for j, constraint in enumerate(table.get("constraints") or []):
            data = constraint.get("data") if isinstance(constraint, dict) else None
            if not isinstance(data, dict) or not isinstance(data.get("Unique"), dict):
                continue  # not a unique constraint: nothing komm-policy reads
            positions = data["Unique"].get("columns")
            if not isinstance(positions, list) or not all(
                    isinstance(c, int) and 0 <= c < len(columns) for c in positions):
                raise SatsError("a unique constraint names columns that do not exist",
                                f"{path}.constraints[{j}].data.Unique.columns")
            unique.append(tuple(positions))
        tables[name] = TableDef(
            name=name, columns=columns, row_type=row_type, primary_key=tuple(primary),
            unique=tuple(unique),
            access=_variant_name(table.get("table_access", {"Public": []}),
                                 path + ".table_access"),
            table_type=_variant_name(table.get("table_type", {"User": []}),
                                     path + ".table_type"))

    reducers: dict[str, ReducerDef] = {}
    for i, reducer in enumerate(raw.get("reducers") or []):
        path = f"$.reducers[{i}]"
        _expect(reducer, dict, path, "an object")
        name = _expect(reducer.get("name"), str, path + ".name", "a string")
        params = parse_type({"Product": reducer.get("params")}, path + ".params")
        lifecycle = reducer.get("lifecycle")
        life = None
        if isinstance(lifecycle, dict) and isinstance(lifecycle.get("some"), dict):
            life = _variant_name(lifecycle["some"], path + ".lifecycle")
        assert isinstance(params, ProductType)
        reducers[name] = ReducerDef(name, params, life)

    rls = []
    for i, entry in enumerate(raw.get("row_level_security") or []):
        sql = entry.get("sql") if isinstance(entry, dict) else None
        rls.append(_expect(sql, str, f"$.row_level_security[{i}].sql", "a string"))
    return ModuleSchema(typespace, tables, reducers, tuple(rls))


def parse_sql_schema(raw: Any, path: str = "$.schema") -> ProductType:
    """The column types of one `/sql` statement result (`{"elements": [...]}`); these are
    resolved types (no `Ref`s)."""
    t = parse_type({"Product": raw}, path)
    assert isinstance(t, ProductType)
    return t


__all__ = ["Column", "ModuleSchema", "ReducerDef", "TableDef", "parse_module",
           "parse_option_str", "parse_sql_schema"]
