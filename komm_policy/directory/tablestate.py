"""One table's rows and indexes inside a snapshot: built whole, or updated by changes.

Indexes map a key to a bucket: the tuple of matching rows in first-row order.  The key
of a one-column equality index is the column's key itself; of a wider one, the tuple of
the columns' keys; of a network index, (IP version, prefix length, network number, keys
of the other columns…).  The indexes are plain dicts shared by the states built from one
another and changed in place under version stamps (`versioned`): a read is a dict read,
a changed row costs O(1) per index, and a previous state reads what it always read.
Rows (identity → Row, read only by changes) live in a HAMT map (`immutables`).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, NamedTuple

import immutables

from ..gcpause import no_gc_pauses
from .bulkcopy import copied_map, frozen_map
from .declared_keys import collider, collision, key_reader
from .keys import column_key, key_normalizer
from .rows import (
    Row,
    describe_key,
    ident_from,
    ident_of,
    make_row,
    order_function,
    row_class,
    sort_key,
)
from .schema import BadValue, Table, decode_value
from .versioned import Lineage, Since, fork, resolve

BadRow = Callable[[str, str, str], None]
"""`on_bad_row(table, row key, reason)`."""


class IndexSpec(NamedTuple):
    """An index a lookup reads: equality on `columns`, or (`kind="net"`) containment of an
    IP in the network of the first column and equality on the others.  `where`: a
    partial index, of the rows whose columns have these keys ((column, key) pairs, keys
    as `keys.lookup_key` gives them): a call's constant keys (`active = true`) are
    folded into its index, so a read is keyed by the other columns alone (one text key
    instead of a tuple: no tuple to build and hash per read)."""

    table: str
    columns: tuple[str, ...]
    kind: str = "eq"
    where: tuple[tuple[str, Any], ...] = ()


def spec_name(spec: IndexSpec) -> str:
    """An index's name, e.g. `account(email,is_active)`, `blocked_networks(ip~)` for a
    network index, `account(email|is_active=True)` for a partial one; lookups may name
    an index this way."""
    where = ("|" + ",".join(f"{c}={k!r}" for c, k in spec.where)) if spec.where else ""
    return f"{spec.table}({','.join(spec.columns)}{'~' if spec.kind == 'net' else ''}{where})"


NetLengths = tuple[immutables.Map, dict[int, tuple[tuple[int, int], ...]]]
"""A network index's prefix lengths in use: (Map[(version, length) → networks],
{version: ((length, shift), …) longest first}); an IP of width w is looked up under
`value >> shift` for each, shift = w - length."""


class TableState:
    """One table's rows and indexes, unchanging once built (as read at `version`)."""

    __slots__ = ("__weakref__", "buckets", "cls", "key_of", "keys", "lineage", "net_lengths",
                 "normalizers", "order", "rows", "table", "version")

    def __init__(self, table: Table, cls: type[Row], rows: immutables.Map,
                 buckets: dict[IndexSpec, dict[Any, Any]],
                 net_lengths: dict[IndexSpec, NetLengths],
                 normalizers: dict[IndexSpec, tuple[Callable[[Any], Any], ...]] | None = None,
                 lineage: Lineage | None = None, version: int = 0,
                 keys: immutables.Map | None = None) -> None:
        self.table = table
        self.cls = cls
        self.order = order_function(table)
        self.rows = rows
        """ident → Row"""
        self.key_of = key_reader(table)
        """A row's declared key (`primary_key` of the schema file) from its values, or
        None when the table declares none."""
        self.keys = keys if keys is not None else immutables.Map()
        """declared key → the ident of the row that has it (`declared_keys`: a second
        row with the same declared key is a bad row); empty without a declared key."""
        self.buckets = buckets
        """spec → dict[key → tuple of rows in first-row order, or a `versioned.Since`
        entry: read through `bucket`]"""
        self.lineage = lineage if lineage is not None else Lineage(version)
        self.version = version
        self.lineage.register(version, self)
        self.net_lengths = net_lengths
        self.normalizers = normalizers if normalizers is not None else {
            spec: tuple(key_normalizer(table.by_name[c]) for c in spec.columns)
            for spec in buckets}
        """spec → per column: lookup value → index key (None: matches nothing)"""

    @classmethod
    def empty(cls, table: Table, specs: Iterable[IndexSpec]) -> TableState:
        specs = list(specs)
        return cls(table, row_class(table), immutables.Map(),
                   {s: {} for s in specs},
                   {s: (immutables.Map(), {}) for s in specs if s.kind == "net"})

    def evolve(self, rows: immutables.Map, buckets: dict[IndexSpec, dict[Any, Any]],
               net_lengths: dict[IndexSpec, NetLengths], lineage: Lineage | None = None,
               version: int = 0, keys: immutables.Map | None = None) -> TableState:
        """A state of this table with other contents (a new lineage unless given)."""
        return TableState(self.table, self.cls, rows, buckets, net_lengths, self.normalizers,
                          lineage, version, keys)

    def bucket(self, spec: IndexSpec, key: Any) -> Any:
        """The rows of `key` in the index `spec` as this state reads them, or None."""
        entry = self.buckets[spec].get(key)
        return resolve(entry, self.version) if entry.__class__ is Since else entry


def bucket_key(table: Table, spec: IndexSpec, values: Mapping[str, Any]) -> Any:
    """A row's key in the index `spec` (None: the row is not in it)."""
    for name, key in spec.where:  # a partial index holds the rows with these keys only
        if column_key(table.by_name[name], values[name]) != key:
            return None
    columns = spec.columns
    if spec.kind == "eq" and len(columns) == 1:
        return column_key(table.by_name[columns[0]], values[columns[0]])
    net_column = spec.kind == "net"
    key = tuple(column_key(table.by_name[c], values[c]) for c in columns[net_column:])
    if None in key:
        return None
    if net_column:
        net = values[columns[0]]
        if net is None:
            return None
        return (net.version, net.prefixlen, int(net.network_address) >> (
            net.max_prefixlen - net.prefixlen), *key)
    return key


def _lengths(counts: immutables.Map) -> NetLengths:
    by_version: dict[int, list[tuple[int, int]]] = {}
    for version, length in sorted(counts.keys(), key=lambda vl: -vl[1]):
        by_version.setdefault(version, []).append((length, (32 if version == 4 else 128)
                                                   - length))
    return counts, {v: tuple(ls) for v, ls in by_version.items()}


def build_table(state: TableState, inserted: Iterable[Mapping[str, Any]],
                on_bad_row: BadRow | None) -> TableState:
    """`state` (empty) filled with whole tables: plain dictionaries, frozen once."""
    rows: dict[Any, Row] = {}
    keys: dict[Any, Any] = {}
    with no_gc_pauses():
        _decode_into(state, rows, inserted, on_bad_row, keys, whole=True)
        return _indexed(state, rows, keys)


def _decode_into(state: TableState, rows: dict[Any, Row],
                 inserted: Iterable[Mapping[str, Any]], on_bad_row: BadRow | None,
                 keys: dict[Any, Any], whole: bool = False) -> None:
    """Decode `inserted` into `rows` (ident → Row) and `keys` (declared key → ident): an
    insert over an existing identity replaces it, a row that does not fit, or whose
    declared key another row has, removes the row it would replace.  `whole`: `rows`
    starts empty and `inserted` is a whole table, so a second row with the same declared
    key is a bad row also where the key is the identity (SpacetimeDB: an `address` key
    the server compares case-sensitively)."""
    table = state.table
    columns = table.columns
    order = state.order
    cls = state.cls
    key_of = state.key_of
    for raw in inserted:
        try:
            values = {c.name: decode_value(c, raw.get(c.name)) for c in columns}
        except BadValue as exc:
            _forget(state, rows, keys, ident_of(table, raw))
            if on_bad_row is not None:
                on_bad_row(table.name, describe_key(table, raw), str(exc))
            continue
        ident = ident_from(table, raw, values)
        if key_of is not None:
            if whole and ident in rows:
                if on_bad_row is not None:
                    on_bad_row(table.name, collider(table, raw), collision(table, None))
                continue
            _forget(state, rows, keys, ident)
            key = key_of(values)
            owner = keys.get(key)
            if owner is not None and owner != ident:
                if on_bad_row is not None:
                    on_bad_row(table.name, collider(table, raw), collision(table, owner))
                continue
            keys[key] = ident
        rows[ident] = make_row(cls, values, ident, order(values, ident))


def _forget(state: TableState, rows: dict[Any, Row], keys: dict[Any, Any],
            ident: Any) -> None:
    """Remove the row `ident` (if any) from `rows` and its declared key from `keys`."""
    old = rows.pop(ident, None)
    if old is not None and state.key_of is not None:
        key = state.key_of(_values(old))
        if keys.get(key) == ident:
            del keys[key]


def _indexed(state: TableState, rows: dict[Any, Row], keys: dict[Any, Any]) -> TableState:
    """`state`'s indexes built in one pass over `rows`, all frozen once."""
    table = state.table
    buckets: dict[IndexSpec, dict[Any, Any]] = {}
    lengths = {}
    for spec in state.buckets:
        index: dict[Any, Any] = {}
        for row in rows.values():
            key = bucket_key(table, spec, _values(row))
            if key is not None:
                bucket = index.get(key)
                if bucket is None:
                    index[key] = (row,)
                else:
                    index[key] = (*bucket, row)
        for key, bucket in index.items():
            if len(bucket) > 1:
                index[key] = tuple(sorted(bucket, key=sort_key))
        buckets[spec] = index
        if spec.kind == "net":
            counts: dict[tuple[int, int], int] = {}
            for key in index:
                counts[key[:2]] = counts.get(key[:2], 0) + 1
            lengths[spec] = _lengths(immutables.Map(counts))
    return state.evolve(frozen_map(rows), buckets, lengths,
                        keys=frozen_map(keys) if keys else None)


class _Values:
    """A row's columns as a mapping, without building a dict."""

    __slots__ = ("row",)

    def __init__(self, row: Row) -> None:
        self.row = row

    def __getitem__(self, name: str) -> Any:
        return getattr(self.row, name)


def _values(row: Row) -> Mapping[str, Any]:
    return _Values(row)  # type: ignore[return-value]


BULK_MIN_ROWS = 256
BULK_FRACTION = 0.25
"""A change of at least `BULK_MIN_ROWS` rows and `BULK_FRACTION` of the table's size is
applied by rebuilding the table's indexes in one pass (`rebuild_table`, with the cyclic
garbage collector paused): 100k new rows in a 1k-row table took 2.2–3.7 s row by row and
1.5–1.8 s in one pass on a 2-core machine loaded by other work (bench/bulk_change.py)."""


def apply_table(state: TableState, deleted: Iterable[Mapping[str, Any]],
                inserted: Iterable[Mapping[str, Any]], on_bad_row: BadRow | None,
                bulk: bool | None = None) -> TableState:
    """The next state: `deleted` rows removed, then `inserted` rows added (an insert over
    an existing identity replaces it).  `state` is not modified.  `bulk`: rebuild the
    indexes in one pass (True), change them row by row (False), or choose by the size of
    the change (None, see `BULK_FRACTION`); the result is the same."""
    if bulk is None:
        # A sized iterable (a list, or rows decoded as they are read) is not copied
        deleted = deleted if isinstance(deleted, Sized) else list(deleted)
        inserted = inserted if isinstance(inserted, Sized) else list(inserted)
        changed = max(len(deleted), len(inserted))
        bulk = changed >= BULK_MIN_ROWS and changed >= BULK_FRACTION * len(state.rows)
    if bulk:
        return rebuild_table(state, deleted, inserted, on_bad_row)
    table = state.table
    lineage, version = state.lineage, state.version + 1
    if lineage.claim(state.version):
        buckets = state.buckets
    else:  # a second change to the same state: it gets maps of its own
        lineage = Lineage(version)
        buckets = {spec: fork(index, state.version) for spec, index in state.buckets.items()}
    rows = state.rows.mutate()
    key_of = state.key_of
    keys = state.keys.mutate()
    counts = {spec: pair[0].mutate() for spec, pair in state.net_lengths.items()}
    put = lineage.put

    def current(index: dict[Any, Any], key: Any) -> Any:
        entry = index.get(key)
        return resolve(entry, version) if entry.__class__ is Since else entry

    def unindex(ident: Any) -> None:
        old = rows.get(ident)
        if old is None:
            return
        values = _values(old)
        del rows[ident]
        if key_of is not None:
            key = key_of(values)
            if keys.get(key) == ident:
                del keys[key]
        for spec, index in buckets.items():
            key = bucket_key(table, spec, values)
            if key is None:
                continue
            rest = tuple(r for r in current(index, key) or () if r is not old)
            put(index, key, rest or None, version)
            if not rest and spec.kind == "net":
                _count(counts[spec], key[:2], -1)

    for raw in deleted:
        unindex(ident_of(table, raw))
    for raw in inserted:
        try:
            values = {c.name: decode_value(c, raw.get(c.name)) for c in table.columns}
        except BadValue as exc:
            unindex(ident_of(table, raw))  # an update to a bad value removes the old row too
            if on_bad_row is not None:
                on_bad_row(table.name, describe_key(table, raw), str(exc))
            continue
        ident = ident_from(table, raw, values)
        unindex(ident)
        if key_of is not None:
            key = key_of(values)
            owner = keys.get(key)
            if owner is not None:  # its own entry went with `unindex`: another row's
                if on_bad_row is not None:
                    on_bad_row(table.name, collider(table, raw), collision(table, owner))
                continue
            keys[key] = ident
        row = make_row(state.cls, values, ident, state.order(values, ident))
        rows[ident] = row
        for spec, index in buckets.items():
            key = bucket_key(table, spec, values)
            if key is None:
                continue
            bucket = current(index, key)
            if bucket is None:
                put(index, key, (row,), version)
                if spec.kind == "net":
                    _count(counts[spec], key[:2], +1)
            else:
                items = list(bucket)
                insort(items, row, key=sort_key)
                put(index, key, tuple(items), version)
    lengths = {}
    for spec, mutable in counts.items():
        finished = mutable.finish()
        old_counts, old_order = state.net_lengths[spec]
        lengths[spec] = ((finished, old_order) if set(finished.keys()) == set(
            old_counts.keys()) else _lengths(finished))
    new = state.evolve(rows.finish(), buckets, lengths, lineage, version, keys.finish())
    lineage.sweep()
    return new


def rebuild_table(state: TableState, deleted: Iterable[Mapping[str, Any]],
                  inserted: Iterable[Mapping[str, Any]], on_bad_row: BadRow | None
                  ) -> TableState:
    """`apply_table` for a large change: the rows kept and the decoded inserts in one
    dictionary, then every index built in one pass (the unchanged rows' objects are
    reused; `state` is not modified)."""
    table = state.table
    with no_gc_pauses():
        rows: dict[Any, Row] = copied_map(state.rows)
        keys: dict[Any, Any] = copied_map(state.keys)
        for raw in deleted:
            _forget(state, rows, keys, ident_of(table, raw))
        _decode_into(state, rows, inserted, on_bad_row, keys)
        return _indexed(state, rows, keys)


def _count(counts: Any, key: tuple[int, int], delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        del counts[key]
