"""Index readers specialised when a table lookup is compiled (`table_lookups`).

A lookup's index, its kind and its columns' meanings are literals of the call, so
everything but the dynamic keys is settled at load time: constant keys are normalised
once, each dynamic key's normaliser (`keys.key_normalizer`, chosen by the column's
meaning) is picked once — a value already of the column's plain type (int, bool, text)
is its own key, an address is stripped and lower-cased inline — and the index key is
assembled around the dynamic values with no loop.  A reader then does one map read of
the decision's `TablesSnapshot` (a network index: one per prefix length in use, most
specific first) and returns the bucket: the matching rows in order, or None; `RESULTS`
turn a bucket into the method's value.  An entry changed since the maps' last sweep is a
`versioned.Since`, resolved to the snapshot's version (`TablesSnapshot.resolve`).
Readers equal `TablesSnapshot.first/all/exists` (tests/test_table_readers.py checks them
against those and a brute-force model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .addresses import comparison_form
from .directory.keys import key_normalizer, lookup_key
from .directory.schema import Column
from .directory.snapshot import IndexSpec, TablesSnapshot
from .directory.versioned import Since
from .ipset import IP

RESULTS: dict[str, Callable[[Any], Any]] = {
    "first": lambda bucket: bucket[0] if bucket else None,
    "all": lambda bucket: list(bucket) if bucket else [],
    "exists": lambda bucket: bool(bucket),
}

Reader1 = Callable[[TablesSnapshot, Any], Any]
"""`read(tables, value)` → bucket: one dynamic key."""
Reader2 = Callable[[TablesSnapshot, Any, Any], Any]
"""`read(tables, a, b)` → bucket: two dynamic keys."""

_PLAIN = {"integer": int, "bool": bool, "text": str, "enum": str}
"""Column meanings whose lookup key is the value itself when it has this exact class
(`keys.key_normalizer` does the same, behind a call)."""


def reader(spec: IndexSpec, name: str, constants: dict[int, Any], dynamic: tuple[int, ...],
           columns: Sequence[Column] | None) -> Reader1 | Reader2 | None:
    """The reader for a call with `dynamic` key positions (one or two) and `constants`
    at the others (their values as compiled), or None when the generic path must serve
    it (no schema, other shapes, a constant that matches nothing)."""
    if columns is None or len(dynamic) not in (1, 2):
        return None
    normal: dict[int, Any] = {}
    for i, value in constants.items():
        normal[i] = lookup_key(columns[i], value)
        if normal[i] is None:
            return None
    width = len(columns)
    if spec.kind == "net":
        if dynamic != (0,):
            return None
        return _net_reader(name, tuple(normal[i] for i in range(1, width)))
    if len(dynamic) == 1:
        (i,) = dynamic
        column = columns[i]
        before = tuple(normal[k] for k in range(i))
        after = tuple(normal[k] for k in range(i + 1, width))
        if column.type == "address":
            return address_reader(name, before, after)
        return _plain_reader(name, column, before, after, width == 1)
    i, j = dynamic
    first, second = key_normalizer(columns[i]), key_normalizer(columns[j])
    first_class, second_class = _PLAIN.get(columns[i].type), _PLAIN.get(columns[j].type)
    before = tuple(normal[k] for k in range(i))
    between = tuple(normal[k] for k in range(i + 1, j))
    after = tuple(normal[k] for k in range(j + 1, width))

    def read2(tables: TablesSnapshot, a: Any, b: Any) -> Any:
        if a.__class__ is not first_class:
            a = first(a)
            if a is None:
                return None
        if b.__class__ is not second_class:
            b = second(b)
            if b is None:
                return None
        bucket = tables.maps[name].get((*before, a, *between, b, *after))
        return tables.resolve(name, bucket) if bucket.__class__ is Since else bucket
    # what `codegen_lookups` needs to write the common case inline: both keys of their
    # columns' plain classes
    read2.parts = (  # type: ignore[attr-defined]
        name, first_class, second_class, before, between, after)
    return read2


def address_plan(spec: IndexSpec, constants: dict[int, Any], dynamic: tuple[int, ...],
                 columns: Sequence[Column] | None
                 ) -> tuple[tuple[Any, ...], tuple[Any, ...]] | None:
    """For a call with one dynamic key on an address column of an equality index: the
    index keys of the constant columns before and after it, so that the lookup closure
    can build the index key itself (`table_lookups`); None for any other call."""
    if columns is None or spec.kind != "eq" or len(dynamic) != 1:
        return None
    (i,) = dynamic
    if columns[i].type != "address":
        return None
    normal = {k: lookup_key(columns[k], v) for k, v in constants.items()}
    if any(v is None for v in normal.values()):
        return None
    return (tuple(normal[k] for k in range(i)),
            tuple(normal[k] for k in range(i + 1, len(columns))))


def address_reader(name: str, before: tuple[Any, ...], after: tuple[Any, ...]) -> Reader1:
    """An address key: stripped, lower-cased, the domain as A-label (`keys.address_key`,
    its ASCII case inline); `before`, `after`: the index keys of the constant columns
    around it (none: a one-column index, keyed by the key itself)."""
    if not before and not after:
        def read_address(tables: TablesSnapshot, value: Any) -> Any:
            if value.__class__ is not str:
                return None
            key = value.strip()
            key = key.lower() if key.isascii() else comparison_form(key)
            bucket = tables.maps[name].get(key)
            return tables.resolve(name, bucket) if bucket.__class__ is Since else bucket
        return read_address

    def read_address_with(tables: TablesSnapshot, value: Any) -> Any:
        if value.__class__ is not str:
            return None
        key = value.strip()
        key = key.lower() if key.isascii() else comparison_form(key)
        bucket = tables.maps[name].get((*before, key, *after))
        return tables.resolve(name, bucket) if bucket.__class__ is Since else bucket
    return read_address_with


def _plain_reader(name: str, column: Column, before: tuple[Any, ...],
                  after: tuple[Any, ...], alone: bool) -> Reader1:
    normalize = key_normalizer(column)
    plain = _PLAIN.get(column.type)
    if alone:  # a one-column index is keyed by the column's key itself
        def read_one(tables: TablesSnapshot, value: Any) -> Any:
            if value.__class__ is not plain:
                value = normalize(value)
                if value is None:
                    return None
            bucket = tables.maps[name].get(value)
            return tables.resolve(name, bucket) if bucket.__class__ is Since else bucket
        # what `codegen_lookups` needs to write this read inline (`before`, `after`
        # None: the key alone)
        read_one.parts = (name, plain, normalize, None, None)  # type: ignore[attr-defined]
        return read_one

    def read_with(tables: TablesSnapshot, value: Any) -> Any:
        if value.__class__ is not plain:
            value = normalize(value)
            if value is None:
                return None
        bucket = tables.maps[name].get((*before, value, *after))
        return tables.resolve(name, bucket) if bucket.__class__ is Since else bucket
    read_with.parts = (name, plain, normalize, before, after)  # type: ignore[attr-defined]
    return read_with


def _net_reader(name: str, rest: tuple[Any, ...]) -> Reader1:
    """An IP in a network index, the other columns constant: every matching row, the
    most specific network first."""

    def read_net(tables: TablesSnapshot, ip: Any) -> Any:
        if ip.__class__ is not IP:
            return None
        version, value = ip.version, ip.value
        buckets = tables.maps[name]
        found = None
        for length, shift in tables.nets[name].get(version, ()):
            bucket = buckets.get((version, length, value >> shift, *rest))
            if bucket.__class__ is Since:
                bucket = tables.resolve(name, bucket)
            if bucket:
                found = bucket if found is None else (*found, *bucket)
        return found
    return read_net
