"""Table rows as a snapshot holds them: typed fields, identity, first-row order.

A `Row` has one slot per column (`row.email`) and two hidden slots the snapshot keeps
for its indexes: `_ident` (the row's identity: its rowid, its primary key, or the whole
row) and `_order` (the first-row order: lowest primary key, or rowid, first).  Rows
compare by table and column values only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from .schema import BadValue, Column, Table, decode_value


class Row:
    """A table row: fields by column name (`row.email`), equal when values are equal."""

    __slots__ = ("_ident", "_order")
    _table: str = ""
    _fields: tuple[str, ...] = ()
    _key: tuple[str, ...] = ()
    """The table's primary-key columns (none: the row is known by its rowid, if any)."""

    def __init__(self, *values: Any) -> None:
        for name, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, name, value)
        self._ident = self._order = None

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self._fields)

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self._fields, self.values(), strict=True))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Row) and other._table == self._table
                and other.values() == self.values())

    def __hash__(self) -> int:
        return hash(self.values())

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"{self._table}({body})"

    def __str__(self) -> str:
        return repr(self)


def row_identity(row: Row) -> dict[str, Any]:
    """What names a row and nothing more (the decision record's lookup results): its
    primary-key columns ({column: value}); without a primary key its SQLite `rowid`
    ({"rowid": n}); else {} (a SpacetimeDB table without a primary key: the lookup's own
    key arguments say which rows matched).  A function, not a method: a column may be
    called anything, `identity` included."""
    key = row._key
    if key:
        return {name: getattr(row, name) for name in key}
    ident = row._ident
    if ident.__class__ is tuple and len(ident) == 2 and ident[0] == "rowid":
        return {"rowid": ident[1]}
    return {}


def row_class(table: Table) -> type[Row]:
    """A `Row` subclass with one slot per column."""
    fields = table.column_names
    return type(f"Row_{table.name}", (Row,), {
        "__slots__": fields, "_table": table.name, "_fields": fields,
        "_key": tuple(table.primary_key)})


def make_row(cls: type[Row], values: Mapping[str, Any], ident: Any, order: Any) -> Row:
    """A row of `cls` from decoded column values (in column order), without the checks
    of `Row.__init__` (the values come from `decode_value` of every column)."""
    row = cls.__new__(cls)
    setter = object.__setattr__
    for name, value in values.items():
        setter(row, name, value)
    row._ident = ident
    row._order = order
    return row


def order_value(value: Any) -> tuple[Any, ...]:
    """A total order over key values of mixed types (None first, v4 before v6)."""
    if value is None:
        return (0,)
    if isinstance(value, bool | int | float):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return (3, value.version, int(value.network_address), value.prefixlen)
    if isinstance(value, tuple):
        return (4, tuple(order_value(v) for v in value))
    return (5, repr(value))


_PLAIN_ORDER = frozenset({"integer", "text", "address", "enum"})
"""Column meanings whose non-optional values order among themselves as they are."""


def order_function(table: Table) -> Callable[[Mapping[str, Any], Any], Any]:
    """`order(values, ident)`: a row's first-row order key.  A single non-optional
    integer or text primary key orders by its value itself (no tuple per row)."""
    key = table.primary_key
    if len(key) == 1:
        column = table.by_name[key[0]]
        name = column.name
        if column.type in _PLAIN_ORDER and not column.optional:
            return lambda values, ident: values[name]
        if column.type == "network" and not column.optional:  # v4 before v6, as order_value
            return lambda values, ident: (values[name].version, int(
                values[name].network_address), values[name].prefixlen)
    if key:
        return lambda values, ident: order_value(tuple(values[c] for c in key))
    return _ident_order


_ROWID_ORDER = order_value("rowid")


def _ident_order(values: Mapping[str, Any], ident: Any) -> Any:
    """`order_value(ident)`, built directly for a SQLite rowid identity ("rowid", n)
    (the same value; `order_value` walks the tuple and costs 20 µs a row in a bulk
    load)."""
    if ident.__class__ is tuple and len(ident) == 2 and ident[0] == "rowid" and (
            ident[1].__class__ is int):
        return (4, (_ROWID_ORDER, (1, ident[1])))
    return order_value(ident)


def sort_key(row: Row) -> tuple[Any, Any]:
    """Rows of one bucket in first-row order (identity breaks ties)."""
    return row._order, order_value(row._ident)


def ident_from(table: Table, row: Mapping[str, Any], values: Mapping[str, Any]) -> Any:
    """`ident_of` a row whose columns decoded to `values` (no second decoding, and the
    identity shares the row's value objects)."""
    if "rowid" in row and "rowid" not in table.by_name:
        return ("rowid", row["rowid"])
    key = table.primary_key
    if len(key) == 1:
        return values[key[0]]
    if key:
        return tuple(values[c] for c in key)
    return tuple(values.values())


def ident_of(table: Table, row: Mapping[str, Any]) -> Any:
    """A backend row's identity: its rowid (SQLite), else its primary key (the value
    itself for a one-column key), else the whole row."""
    if "rowid" in row and "rowid" not in table.by_name:
        return ("rowid", row["rowid"])
    key = table.primary_key
    if len(key) == 1:
        return _decode_or_raw(table.by_name[key[0]], row.get(key[0]))
    if key:
        return tuple(_decode_or_raw(table.by_name[c], row.get(c)) for c in key)
    return tuple(_decode_or_raw(c, row.get(c.name)) for c in table.columns)


def _decode_or_raw(column: Column, value: Any) -> Any:
    try:
        return decode_value(column, value)
    except BadValue:
        return value


def describe_key(table: Table, row: Mapping[str, Any]) -> str:
    names = table.primary_key or (("rowid",) if "rowid" in row else table.column_names)
    return ", ".join(f"{n}={row.get(n)!r}" for n in names)
