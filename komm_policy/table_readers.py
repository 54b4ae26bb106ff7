"""Index readers specialised when a table lookup is compiled (`table_lookups`).

A lookup's index, its kind and its columns' meanings are literals of the call, so
everything but the dynamic keys is settled at load time: constant keys are normalised
once, each dynamic key's normaliser (`keys.key_normalizer`, chosen by the column's
meaning) is picked once, and the index key is assembled around the dynamic values with
no loop.  A reader then does one map read of the decision's `TablesSnapshot` (a network
index: one per prefix length in use, most specific first) and turns the bucket into the
method's result.  Readers equal `TablesSnapshot.first/all/exists` (tests/
test_table_readers.py checks that with hypothesis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .directory.keys import key_normalizer, lookup_key
from .directory.schema import Column
from .directory.snapshot import IndexSpec, TablesSnapshot
from .ipset import IP

Result = Callable[[Any], Any]
"""The lookup's value from a bucket (a tuple or list of rows, or None)."""

RESULTS: dict[str, Result] = {
    "first": lambda bucket: bucket[0] if bucket else None,
    "all": lambda bucket: list(bucket) if bucket else [],
    "exists": lambda bucket: bool(bucket),
}

Reader1 = Callable[[TablesSnapshot, Any], Any]
"""`read(tables, value)`: one dynamic key."""
Reader2 = Callable[[TablesSnapshot, Any, Any], Any]
"""`read(tables, a, b)`: two dynamic keys."""


def reader(spec: IndexSpec, name: str, constants: dict[int, Any], dynamic: tuple[int, ...],
           columns: Sequence[Column] | None, method: str) -> Reader1 | Reader2 | None:
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
        return _net_reader(name, tuple(normal[i] for i in range(1, width)), method)
    result = RESULTS[method]
    if len(dynamic) == 1:
        (i,) = dynamic
        normalize = key_normalizer(columns[i])
        if width == 1:  # a one-column index is keyed by the column's key itself
            def read_one(tables: TablesSnapshot, value: Any) -> Any:
                key = normalize(value)
                return result(None if key is None else tables.maps[name].get(key))
            return read_one
        before = tuple(normal[k] for k in range(i))
        after = tuple(normal[k] for k in range(i + 1, width))

        def read1(tables: TablesSnapshot, value: Any) -> Any:
            key = normalize(value)
            return result(None if key is None else tables.maps[name].get(
                (*before, key, *after)))
        return read1
    i, j = dynamic
    first, second = key_normalizer(columns[i]), key_normalizer(columns[j])
    before = tuple(normal[k] for k in range(i))
    between = tuple(normal[k] for k in range(i + 1, j))
    after = tuple(normal[k] for k in range(j + 1, width))

    def read2(tables: TablesSnapshot, a: Any, b: Any) -> Any:
        a = first(a)
        b = second(b)
        if a is None or b is None:
            return result(None)
        return result(tables.maps[name].get((*before, a, *between, b, *after)))
    return read2


def _net_reader(name: str, rest: tuple[Any, ...], method: str) -> Reader1:
    """An IP in a network index, the other columns constant: most specific first."""
    result = RESULTS[method]

    if method == "exists":
        def exists(tables: TablesSnapshot, ip: Any) -> Any:
            if ip.__class__ is not IP:
                return False
            version, value = ip.version, ip.value
            buckets = tables.maps[name]
            for length, shift in tables.nets[name].get(version, ()):
                if buckets.get((version, length, value >> shift, *rest)):
                    return True
            return False
        return exists

    def rows(tables: TablesSnapshot, ip: Any) -> Any:
        if ip.__class__ is not IP:
            return result(None)
        version, value = ip.version, ip.value
        buckets = tables.maps[name]
        found: list[Any] = []
        for length, shift in tables.nets[name].get(version, ()):
            bucket = buckets.get((version, length, value >> shift, *rest))
            if bucket:
                found.extend(bucket)
        return result(found)
    return rows
