"""The directory's schema: named tables of typed columns, and the schema file that says so.

A backend stores columns as its own types (SQLite: TEXT, INTEGER, …; SpacetimeDB: SATS
`String`, `U64`, `Option<…>`, enums, `Identity`, …).  The *meaning* of a column says more:
an `address` is text compared case- and IDN-insensitively, a `network` is an address or a
CIDR range, an `enum` has named variants.  The schema file beside the policies
(`policies/schema.toml`) records the meanings; `komm-policy db schema` writes a first
version from a backend and the operator annotates it.  `check` reads it, so CI needs no
database.

The file (TOML)::

    [tables.blocked_networks]
    primary_key = ["ip"]                  # lowest key first; omit: SQLite's rowid
    columns.ip     = { type = "network" }
    columns.reason = { type = "text" }
    columns.status = { type = "enum", variants = ["Active", "Expired"] }
    columns.until  = { type = "timestamp", optional = true }

Column meanings and the values the replica holds for them: `columns`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..textfile import NotUtf8Error, loads_toml, read_utf8
from ..tomlpos import KeyPositions
from .columns import INDEXABLE, MEANINGS, BadValue, Column, decode_value, encode_value

__all__ = [
    "INDEXABLE", "MEANINGS", "SCHEMA_FILE", "BadValue", "Column", "Schema", "SchemaError",
    "Table", "column_from_sats", "decode_value", "dump_schema", "encode_value",
    "find_schema", "load_schema", "meaning_from_sqlite", "parse_schema", "tables_named",
]

SCHEMA_FILE = "schema.toml"
"""The schema file's name in a policy directory."""


class SchemaError(Exception):
    """The schema file is malformed (message names the file and the entry).  `key` is the
    TOML key path of the offending entry (`("tables", "t", "columns", "c", "type")`), so
    the caller can point at where it is written (`tomlpos`)."""

    def __init__(self, message: str, key: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    """Columns identifying a row (first-row order); empty: SQLite's rowid / whole row."""
    by_name: Mapping[str, Column] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True, slots=True)
class Schema:
    tables: Mapping[str, Table]
    source: str = ""
    """Where it was read from (a path, or a backend)."""

    def table(self, name: str) -> Table | None:
        return self.tables.get(name)


# -- the schema file ---------------------------------------------------------------------


_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def error_position(text: str, exc: Exception) -> tuple[int, int]:
    """(line, column), 1-based, of a schema file problem in `text`: where `tomllib` stopped
    for a syntax error, else where the offending key (`SchemaError.key`) is written."""
    if isinstance(exc, tomllib.TOMLDecodeError):
        found = _TOML_AT.search(str(exc))
        return (int(found.group(1)), int(found.group(2))) if found else (1, 1)
    key = getattr(exc, "key", ())
    return KeyPositions(text).find(key) if key else (1, 1)


def load_schema(path: str | Path) -> Schema:
    """Read a schema file.  Raises `SchemaError` (`FILE:LINE:COL: …`, the table named) or
    `OSError`."""
    path = Path(path)
    try:
        text = read_utf8(path)
    except NotUtf8Error as exc:
        raise SchemaError(str(exc)) from None
    try:
        return parse_schema(loads_toml(text), str(path))
    except (tomllib.TOMLDecodeError, SchemaError) as exc:
        line, column = error_position(text, exc)
        message = str(exc).removeprefix(f"{path}: ")
        raise SchemaError(f"{path}:{line}:{column}: {message}",
                          getattr(exc, "key", ())) from exc


def find_schema(policy_path: str | Path) -> Path | None:
    """The schema file beside a policy set (a directory, or the directory of one file)."""
    path = Path(policy_path)
    candidate = (path if path.is_dir() else path.parent) / SCHEMA_FILE
    return candidate if candidate.is_file() else None


def parse_schema(data: Mapping[str, Any], source: str = "") -> Schema:
    tables_data = data.get("tables", {})
    unknown = set(data) - {"tables"}
    if unknown:
        first = sorted(unknown)[0]
        raise SchemaError(f"{source}: unknown top-level key {first!r} "
                          "(expected [tables.NAME])", (first,))
    if not isinstance(tables_data, dict):
        raise SchemaError(f"{source}: `tables` must be a table of tables", ("tables",))
    tables = {}
    for name, spec in tables_data.items():
        where = f"{source}: table {name}"
        if not isinstance(spec, dict) or not isinstance(spec.get("columns"), dict):
            raise SchemaError(f"{where}: needs `columns`", ("tables", name))
        columns = tuple(_parse_column(f"{where}, column {cname}", cname, cspec,
                                      ("tables", name, "columns", cname))
                        for cname, cspec in spec["columns"].items())
        primary_key = spec.get("primary_key", [])
        if isinstance(primary_key, str):
            primary_key = [primary_key]
        names = {c.name for c in columns}
        for key in primary_key:
            if key not in names:
                raise SchemaError(f"{where}: primary key column {key!r} is not a column",
                                  ("tables", name, "primary_key"))
        extra = set(spec) - {"columns", "primary_key"}
        if extra:
            first = sorted(extra)[0]
            raise SchemaError(f"{where}: unknown key {first!r}", ("tables", name, first))
        tables[name] = Table(name, columns, tuple(primary_key))
    return Schema(tables, source)


def _parse_column(where: str, name: str, spec: Any, key: tuple[str, ...] = ()) -> Column:
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or "type" not in spec:
        raise SchemaError(f"{where}: needs a `type` (one of {', '.join(MEANINGS)})", key)
    type_ = spec["type"]
    if type_ not in MEANINGS:
        raise SchemaError(f"{where}: unknown type {type_!r} (one of {', '.join(MEANINGS)})",
                          (*key, "type"))
    raw_variants = spec.get("variants", [])
    if not isinstance(raw_variants, list) or not all(isinstance(v, str) and v
                                                     for v in raw_variants):
        raise SchemaError(f"{where}: `variants` must be a list of names, e.g. "
                          f'["Read", "Write"] (got {raw_variants!r})', (*key, "variants"))
    if len(set(raw_variants)) != len(raw_variants):
        raise SchemaError(f"{where}: `variants` names a variant twice", (*key, "variants"))
    variants = tuple(raw_variants)
    optional = spec.get("optional", False)
    if not isinstance(optional, bool):
        raise SchemaError(f"{where}: `optional` must be true or false (got {optional!r})",
                          (*key, "optional"))
    if type_ == "enum" and not variants:
        raise SchemaError(f"{where}: an enum needs `variants`", key)
    element = spec.get("element")
    if type_ == "list" and element not in MEANINGS:
        raise SchemaError(f"{where}: a list needs an `element` type",
                          (*key, "element") if "element" in spec else key)
    extra = set(spec) - {"type", "optional", "variants", "element", "storage"}
    if extra:
        first = sorted(extra)[0]
        raise SchemaError(f"{where}: unknown key {first!r}", (*key, first))
    return Column(name, type_, optional, variants, element,
                  str(spec.get("storage", "")))


def dump_schema(schema: Schema, header: str = "") -> str:
    """The schema as a schema file (TOML), columns in table order."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for table in schema.tables.values():
        if lines:
            lines.append("")
        lines.append(f"[tables.{_key(table.name)}]")
        if table.primary_key:
            lines.append(f"primary_key = [{', '.join(_str(k) for k in table.primary_key)}]")
        for column in table.columns:
            parts = [f"type = {_str(column.type)}"]
            if column.optional:
                parts.append("optional = true")
            if column.variants:
                parts.append(f"variants = [{', '.join(_str(v) for v in column.variants)}]")
            if column.element:
                parts.append(f"element = {_str(column.element)}")
            if column.storage:
                parts.append(f"storage = {_str(column.storage)}")
            lines.append(f"columns.{_key(column.name)} = {{ {', '.join(parts)} }}")
    return "\n".join(lines) + "\n"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _str(name)


def _str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- backend type mappings ---------------------------------------------------------------


def meaning_from_sqlite(declared: str) -> str:
    """The default meaning of a SQLite declared type (its affinity rules, sqlite.org
    datatype3 §3.1): the operator refines text into address, network, enum, …"""
    upper = declared.upper()
    if "INT" in upper:
        return "integer"
    if "BOOL" in upper:
        return "bool"
    if any(word in upper for word in ("REAL", "FLOA", "DOUB")):
        return "float"
    return "text"


_SATS_INTEGERS = {"I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64", "I128", "U128",
                  "I256", "U256"}
_SATS_SPECIAL = {
    "__identity__": "identity",
    "__connection_id__": "identity",
    "__timestamp_micros_since_unix_epoch__": "timestamp",
    "__time_duration_micros__": "integer",
}


def column_from_sats(name: str, algebraic_type: Mapping[str, Any]) -> Column:
    """A column from a SATS `AlgebraicType` in the typed JSON of SpacetimeDB's schema and
    SQL responses (`crates/sats/src/algebraic_type.rs`; reference §2.2): `{"String": []}`,
    `{"U64": []}`, `{"Sum": …}` (Option when its variants are `some`/`none`, an enum when
    every variant is a unit), `{"Product": …}` with a magic field (`__identity__`, …),
    `{"Array": …}`.  Raises `SchemaError` for a type no meaning fits."""
    meaning, optional, variants, element, storage = _sats(name, algebraic_type)
    return Column(name, meaning, optional, variants, element, storage)


def _sats(name: str, at: Mapping[str, Any]) -> tuple[str, bool, tuple[str, ...],
                                                        str | None, str]:
    if not isinstance(at, Mapping) or len(at) != 1:
        raise SchemaError(f"column {name}: not a SATS AlgebraicType: {at!r}")
    (kind, body), = at.items()
    if kind == "String":
        return "text", False, (), None, "String"
    if kind == "Bool":
        return "bool", False, (), None, "Bool"
    if kind in _SATS_INTEGERS:
        return "integer", False, (), None, kind
    if kind in ("F32", "F64"):
        return "float", False, (), None, kind
    if kind == "Product":
        elements = body.get("elements", [])
        if len(elements) == 1:
            field_name = _sats_name(elements[0])
            if field_name in _SATS_SPECIAL:
                return _SATS_SPECIAL[field_name], False, (), None, field_name.strip("_")
    if kind == "Sum":
        variants = body.get("variants", [])
        names = [_sats_name(v) for v in variants]
        if sorted(names) == ["none", "some"]:
            inner = variants[names.index("some")]["algebraic_type"]
            meaning, _, inner_variants, element, storage = _sats(name, inner)
            return meaning, True, inner_variants, element, f"Option<{storage}>"
        if all(_is_unit(v.get("algebraic_type", {})) for v in variants) and names:
            return "enum", False, tuple(str(n) for n in names), None, "enum"
    if kind == "Array":
        meaning, _, _, _, storage = _sats(name, body)
        return "list", False, (), meaning, f"Vec<{storage}>"
    if kind == "Ref":
        raise SchemaError(f"column {name}: a SATS type reference (resolve it against the "
                          "module's typespace first)")
    raise SchemaError(f"column {name}: no column meaning for SATS type {kind}")


def _sats_name(element: Mapping[str, Any]) -> str | None:
    name = element.get("name")
    if isinstance(name, Mapping):
        return name.get("some")
    return name


def _is_unit(at: Mapping[str, Any]) -> bool:
    return at == {"Product": {"elements": []}}


def tables_named(schema: Schema, names: Iterable[str]) -> Schema:
    """The part of a schema with only the tables named."""
    return Schema({n: schema.tables[n] for n in names if n in schema.tables}, schema.source)
