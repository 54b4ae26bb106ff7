"""Immutable snapshots of directory tables, updated in time proportional to the changes.

This is the one concurrency model of every directory backend (product.md §4): a decision
reads one `TablesSnapshot`; the backend's refresher builds the next one from the current
one and publishes it by one reference assignment.  Nothing a decision holds ever changes.

Backend-neutral API (SQLite change triggers and SpacetimeDB `TransactionUpdate` deltas feed
it the same way)::

    snap = TablesSnapshot.build(schema, needs, {"blocked_ips": rows, ...}, on_bad_row)
    snap = snap.apply({"blocked_ips": (deleted_rows, inserted_rows)}, on_bad_row)

- `schema`: the tables' `Schema`; `needs`: the `Needs` of the compiled policy set (which
  tables, which indexes); tables and indexes nobody needs are not built.
- A row is a mapping column name → value as the backend decodes it (`schema.decode_value`
  turns it into the replica's value: SATS tags into enum names, hex into identities, …).
- A row's identity: its `rowid` entry when the backend gives one (SQLite), else its
  primary-key columns, else the whole row (SpacetimeDB tables without a primary key: a
  delete names the whole old row, as `TransactionUpdate` does).  A deleted row needs only
  the columns of its identity.  An update is a delete plus an insert, in one `apply`.
- First-row order: lowest primary key (or rowid), as the lookups promise.
- `on_bad_row(table, key, reason)` is called for every row that does not fit the schema
  (NULL in a non-optional column, `300.1.2.3` in a network column, …); the row is skipped.

Cost: every changed row costs O(log n) per index (HAMT maps of the `immutables` package,
buckets of equal keys are copied when touched).  A network index is keyed by (prefix
length, network number): an IP lookup is one mask and one map read per prefix length in
use, most specific first.
"""

from __future__ import annotations

import ipaddress
from bisect import insort
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import immutables

from ..ipset import IP
from .keys import column_key, key_normalizer
from .schema import BadValue, Column, Schema, Table, decode_value

BadRow = Callable[[str, str, str], None]
"""`on_bad_row(table, row key, reason)`."""

Row_ = Any
Changes = Mapping[str, tuple[Iterable[Mapping[str, Any]], Iterable[Mapping[str, Any]]]]


class IndexSpec(NamedTuple):
    """An index a lookup reads: equality on `columns`, or (`kind="net"`) containment of an
    IP in the network of the first column and equality on the others.  (A tuple: it is
    hashed on every lookup.)"""

    table: str
    columns: tuple[str, ...]
    kind: str = "eq"


def spec_name(spec: IndexSpec) -> str:
    """An index's name, e.g. `account(email,is_active)` or `blocked_ips(ip~)` for a
    network index; lookups may name an index this way."""
    return f"{spec.table}({','.join(spec.columns)}{'~' if spec.kind == 'net' else ''})"


@dataclass
class Needs:
    """What a compiled policy set reads: tables and the indexes on them."""

    indexes: set[IndexSpec] = field(default_factory=set)
    legacy: bool = True
    """Whether it calls the first-version helpers (`ip_blocked`, `category`, …), whose
    index over the origin tables is then kept too."""

    @property
    def tables(self) -> set[str]:
        return {spec.table for spec in self.indexes}

    def __bool__(self) -> bool:
        return bool(self.indexes)


class Row:
    """A table row: fields by column name (`row.email`), equal when values are equal."""

    __slots__ = ()
    _table: str = ""
    _fields: tuple[str, ...] = ()

    def __init__(self, *values: Any) -> None:
        for name, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, name, value)

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


def row_class(table: Table) -> type[Row]:
    """A `Row` subclass with one slot per column."""
    fields = table.column_names
    return type(f"Row_{table.name}", (Row,), {
        "__slots__": fields, "_table": table.name, "_fields": fields})


def _order(value: Any) -> tuple[Any, ...]:
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
        return (4, tuple(_order(v) for v in value))
    return (5, repr(value))


class TableState:
    """One table's rows and indexes, immutable once built."""

    __slots__ = ("buckets", "cls", "net_lengths", "normalizers", "rows", "table")

    def __init__(self, table: Table, cls: type[Row], rows: immutables.Map,
                 buckets: dict[IndexSpec, immutables.Map],
                 net_lengths: dict[IndexSpec, tuple[immutables.Map, tuple[tuple[int, int], ...]]]
                 ) -> None:
        self.table = table
        self.cls = cls
        self.rows = rows
        """ident → (order key, Row)"""
        self.buckets = buckets
        """spec → Map[key → tuple of (order key, ident) sorted]"""
        self.net_lengths = net_lengths
        """net spec → (Map[(version, prefixlen) → count], prefix lengths in use, longest first)"""
        self.normalizers = {spec: tuple(key_normalizer(table.by_name[c]) for c in spec.columns)
                            for spec in buckets}
        """spec → per column: lookup value → index key (None: matches nothing)"""


class TablesSnapshot:
    """The tables one decision reads.  Lookups: `first`, `all`, `exists`."""

    __slots__ = ("_readers", "needs", "schema", "states")

    def __init__(self, schema: Schema, needs: Needs, states: dict[str, TableState]) -> None:
        self.schema = schema
        self.needs = needs
        self.states = states
        # Lookups find their index by a string (its hash is cached, a tuple's is not).
        self._readers = {
            spec_name(spec): (state, spec.kind == "eq", state.normalizers[spec],
                              state.buckets[spec], state.net_lengths.get(spec))
            for state in states.values() for spec in state.buckets}

    # -- building ----------------------------------------------------------------------

    @classmethod
    def empty(cls, schema: Schema, needs: Needs) -> TablesSnapshot:
        states = {}
        for name in sorted(needs.tables):
            table = schema.tables[name]
            specs = [s for s in needs.indexes if s.table == name]
            states[name] = TableState(
                table, row_class(table), immutables.Map(),
                {s: immutables.Map() for s in specs},
                {s: (immutables.Map(), ()) for s in specs if s.kind == "net"})
        return cls(schema, needs, states)

    @classmethod
    def build(cls, schema: Schema, needs: Needs,
              rows: Mapping[str, Iterable[Mapping[str, Any]]],
              on_bad_row: BadRow | None = None) -> TablesSnapshot:
        """A snapshot of whole tables (the first load, or a full reload): built in plain
        dictionaries and frozen once, several times faster than applying inserts."""
        empty = cls.empty(schema, needs)
        return cls(schema, needs, {
            name: _build_table(state, rows.get(name, ()), on_bad_row)
            for name, state in empty.states.items()})

    def apply(self, changes: Changes, on_bad_row: BadRow | None = None) -> TablesSnapshot:
        """The next snapshot: this one with `changes` ({table: (deleted, inserted)})
        applied.  Tables nobody needs are ignored; this snapshot is not modified."""
        states = dict(self.states)
        for name, (deleted, inserted) in changes.items():
            state = states.get(name)
            if state is not None:
                states[name] = _apply_table(state, deleted, inserted, on_bad_row)
        return TablesSnapshot(self.schema, self.needs, states)

    # -- reading -----------------------------------------------------------------------

    def _bucket(self, spec: IndexSpec | str, key: tuple[Any, ...]) -> Any:
        """(state, the matching (order, ident) pairs in order), or (state, None).  `spec`
        may be given by its `spec_name`."""
        state, eq, normalizers, buckets, lengths = self._readers[
            spec if spec.__class__ is str else spec_name(spec)]  # type: ignore[arg-type]
        if eq:
            if len(key) == 1:
                k = normalizers[0](key[0])
                if k is None:
                    return state, None
                return state, buckets.get((k,))
            normal = []
            for normalize, value in zip(normalizers, key, strict=True):
                k = normalize(value)
                if k is None:
                    return state, None
                normal.append(k)
            return state, buckets.get(tuple(normal))
        rest = []
        for normalize, value in zip(normalizers[1:], key[1:], strict=True):
            k = normalize(value)
            if k is None:
                return state, None
            rest.append(k)
        ip = key[0]
        if not isinstance(ip, IP):
            return state, None
        found: list[Any] = []
        version, value = ip.version, ip.value
        width = 32 if version == 4 else 128
        for row_version, length in lengths[1]:
            if row_version != version:
                continue
            bucket = buckets.get((version, length, value >> (width - length), *rest))
            if bucket:
                found.extend(bucket)
        return state, found or None

    def first(self, spec: IndexSpec | str, key: tuple[Any, ...]) -> Row | None:
        """The first row whose columns equal `key` (lowest primary key), or None."""
        state, bucket = self._bucket(spec, key)
        return state.rows[bucket[0][1]][1] if bucket else None

    def all(self, spec: IndexSpec | str, key: tuple[Any, ...]) -> list[Row]:
        """Every matching row, lowest primary key first (networks: most specific first)."""
        state, bucket = self._bucket(spec, key)
        if not bucket:
            return []
        rows = state.rows
        return [rows[ident][1] for _, ident in bucket]

    def exists(self, spec: IndexSpec | str, key: tuple[Any, ...]) -> bool:
        return bool(self._bucket(spec, key)[1])

    def rows(self, table: str) -> list[Row]:
        """Every row of a replicated table, in first-row order (tests, `db export`)."""
        state = self.states[table]
        return [row for _, row in sorted(state.rows.values(), key=lambda p: p[0])]

    def counts(self) -> dict[str, int]:
        return {name: len(state.rows) for name, state in self.states.items()}


def _ident(table: Table, row: Mapping[str, Any]) -> Any:
    if "rowid" in row and "rowid" not in table.by_name:
        return ("rowid", row["rowid"])
    if table.primary_key:
        return tuple(_decode_or_raw(table.by_name[c], row.get(c)) for c in table.primary_key)
    return tuple(_decode_or_raw(c, row.get(c.name)) for c in table.columns)


def _decode_or_raw(column: Column, value: Any) -> Any:
    try:
        return decode_value(column, value)
    except BadValue:
        return value


def _describe_key(table: Table, row: Mapping[str, Any]) -> str:
    names = table.primary_key or (("rowid",) if "rowid" in row else table.column_names)
    return ", ".join(f"{n}={row.get(n)!r}" for n in names)


def _bucket_key(table: Table, spec: IndexSpec, values: Mapping[str, Any]) -> Any:
    net_column = spec.kind == "net"
    key = tuple(column_key(table.by_name[c], values[c]) for c in spec.columns[net_column:])
    if None in key:
        return None
    if net_column:  # (version, prefix length, network number, equality keys…)
        net = values[spec.columns[0]]
        if net is None:
            return None
        return (net.version, net.prefixlen, int(net.network_address) >> (
            net.max_prefixlen - net.prefixlen), *key)
    return key


def _build_table(state: TableState, inserted: Iterable[Mapping[str, Any]],
                 on_bad_row: BadRow | None) -> TableState:
    table = state.table
    decoded: dict[Any, tuple[Any, dict[str, Any]]] = {}
    for raw in inserted:
        ident = _ident(table, raw)
        try:
            values = {c.name: decode_value(c, raw.get(c.name)) for c in table.columns}
        except BadValue as exc:
            decoded.pop(ident, None)
            if on_bad_row is not None:
                on_bad_row(table.name, _describe_key(table, raw), str(exc))
            continue
        order = _order(tuple(values[c] for c in table.primary_key) if table.primary_key
                       else ident)
        decoded[ident] = (order, values)  # a later row of one identity replaces it
    rows = {}
    buckets: dict[IndexSpec, dict[Any, list[tuple[Any, Any]]]] = {
        spec: {} for spec in state.buckets}
    cls = state.cls
    for ident, (order, values) in decoded.items():
        rows[ident] = (order, cls(*values.values()))
        for spec, index in buckets.items():
            key = _bucket_key(table, spec, values)
            if key is not None:
                index.setdefault(key, []).append((order, ident))
    frozen = {}
    lengths = {}
    for spec, index in buckets.items():
        for items in index.values():
            if len(items) > 1:
                items.sort(key=lambda p: (p[0], _order(p[1])))
        frozen[spec] = immutables.Map({k: tuple(v) for k, v in index.items()})
        if spec.kind == "net":
            counts: dict[tuple[int, int], int] = {}
            for key in index:
                counts[key[:2]] = counts.get(key[:2], 0) + 1
            lengths[spec] = (immutables.Map(counts),
                             tuple(sorted(counts, key=lambda vl: -vl[1])))
    return TableState(table, cls, immutables.Map(rows), frozen, lengths)


def _apply_table(state: TableState, deleted: Iterable[Mapping[str, Any]],
                 inserted: Iterable[Mapping[str, Any]], on_bad_row: BadRow | None
                 ) -> TableState:
    table = state.table
    rows = state.rows.mutate()
    buckets = {spec: m.mutate() for spec, m in state.buckets.items()}
    lengths = {spec: pair[0].mutate() for spec, pair in state.net_lengths.items()}

    def unindex(ident: Any) -> None:
        old = rows.get(ident)
        if old is None:
            return
        row = old[1]
        values = row.as_dict()
        del rows[ident]
        for spec, index in buckets.items():
            key = _bucket_key(table, spec, values)
            if key is None:
                continue
            bucket = index.get(key, ())
            rest = tuple(p for p in bucket if p[1] != ident)
            if rest:
                index[key] = rest
            else:
                del index[key]
                if spec.kind == "net":
                    _count(lengths[spec], key[:2], -1)

    for raw in deleted:
        unindex(_ident(table, raw))
    for raw in inserted:
        ident = _ident(table, raw)
        try:
            values = {c.name: decode_value(c, raw.get(c.name)) for c in table.columns}
        except BadValue as exc:
            unindex(ident)  # an update to a bad value removes the old row too
            if on_bad_row is not None:
                on_bad_row(table.name, _describe_key(table, raw), str(exc))
            continue
        unindex(ident)  # an insert over an existing identity replaces it
        order = _order(tuple(values[c] for c in table.primary_key) if table.primary_key
                       else ident)
        row = state.cls(*values.values())
        rows[ident] = (order, row)
        for spec, index in buckets.items():
            key = _bucket_key(table, spec, values)
            if key is None:
                continue
            bucket = index.get(key)
            if bucket is None:
                index[key] = ((order, ident),)
                if spec.kind == "net":
                    _count(lengths[spec], key[:2], +1)
            else:
                items = list(bucket)
                insort(items, (order, ident), key=lambda p: (p[0], _order(p[1])))
                index[key] = tuple(items)
    new_lengths = {}
    for spec, counts in lengths.items():
        finished = counts.finish()
        old_counts, old_order = state.net_lengths[spec]
        order = old_order if set(finished.keys()) == set(old_counts.keys()) else tuple(
            sorted(finished.keys(), key=lambda vl: -vl[1]))
        new_lengths[spec] = (finished, order)
    return TableState(table, state.cls, rows.finish(),
                      {spec: m.finish() for spec, m in buckets.items()}, new_lengths)


def _count(counts: Any, key: tuple[int, int], delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        del counts[key]
