"""One table's rows and indexes inside a snapshot: built whole, or updated by changes.

Indexes map a key to a bucket: the tuple of matching rows in first-row order.  The key
of a one-column equality index is the column's key itself; of a wider one, the tuple of
the columns' keys; of a network index, (IP version, prefix length, network number, keys
of the other columns…).  The indexes are plain dicts shared by the states built from one
another and changed in place under version stamps (`versioned`): a read is a dict read,
a changed row costs O(1) per index, and a previous state reads what it always read.
Rows (identity → Row, read only by changes) live in a HAMT map (`immutables`), and so do
the declared keys and the rows waiting for one (`claims`).
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any, NamedTuple

import immutables

from ..gcpause import no_gc_pauses
from .bulkcopy import copied_map, frozen_map
from .claims import Claims, row_values
from .declared_keys import key_reader
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
                 "normalizers", "order", "rows", "table", "version", "waiting", "waiting_at")

    def __init__(self, table: Table, cls: type[Row], rows: immutables.Map,
                 buckets: dict[IndexSpec, dict[Any, Any]],
                 net_lengths: dict[IndexSpec, NetLengths],
                 normalizers: dict[IndexSpec, tuple[Callable[[Any], Any], ...]] | None = None,
                 lineage: Lineage | None = None, version: int = 0,
                 keys: immutables.Map | None = None,
                 waiting: tuple[immutables.Map, immutables.Map] | None = None) -> None:
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
        self.waiting, self.waiting_at = waiting if waiting is not None else (
            immutables.Map(), immutables.Map())
        """The rows skipped because another row holds their declared key (`claims`):
        declared key → Map[store identity → Row], and store identity → declared key."""
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
               version: int = 0, keys: immutables.Map | None = None,
               waiting: tuple[immutables.Map, immutables.Map] | None = None) -> TableState:
        """A state of this table with other contents (a new lineage unless given)."""
        return TableState(self.table, self.cls, rows, buckets, net_lengths, self.normalizers,
                          lineage, version, keys, waiting)

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
    claims = _claims(state, {}, {}, {}, on_bad_row)
    with no_gc_pauses():
        _decode_into(state, rows, inserted, on_bad_row, claims, replace=False)
        return _indexed(state, rows, claims)


def _claims(state: TableState, keys: dict[Any, Any], waiting: dict[Any, Any],
            waiting_at: dict[Any, Any], on_bad_row: BadRow | None) -> Claims | None:
    """The declared keys of a whole read or one-pass change (None: the table declares
    no `primary_key`)."""
    return None if state.key_of is None else Claims(state.table, state.key_of, keys,
                                                    waiting, waiting_at, on_bad_row)


def _decode_into(state: TableState, rows: dict[Any, Row],
                 inserted: Iterable[Mapping[str, Any]], on_bad_row: BadRow | None,
                 claims: Claims | None, replace: bool) -> None:
    """Decode `inserted` into `rows` (ident → Row), declared keys into `claims`.
    `replace`: an insert over a held identity replaces it (SQLite: the identity is the
    rowid; a row that does not fit removes the row it would replace), else (a whole
    read, or SpacetimeDB, where an update deletes the old row first) an insert whose
    identity is held is a row whose declared key another row has: a bad row, kept
    waiting (`claims`).  Then the waiting rows whose keys this change freed come in."""
    table = state.table
    columns = table.columns
    order = state.order
    cls = state.cls
    for raw in inserted:
        try:
            values = {c.name: decode_value(c, raw.get(c.name)) for c in columns}
        except BadValue as exc:
            if replace and (claims is None or not claims.drop_waiting(raw)):
                _forget(rows, claims, ident_of(table, raw))
            if on_bad_row is not None:
                on_bad_row(table.name, describe_key(table, raw), str(exc))
            continue
        ident = ident_from(table, raw, values)
        row = make_row(cls, values, ident, order(values, ident))
        if claims is None:
            rows[ident] = row
            continue
        if replace and not claims.drop_waiting(raw):
            _forget(rows, claims, ident)
        if claims.claim(raw, row, values):
            rows[ident] = row
    if claims is not None:
        for row in claims.promoted():
            rows[row._ident] = row


def _forget(rows: dict[Any, Row], claims: Claims | None, ident: Any) -> None:
    """Remove the row `ident` (if any) from `rows` and release its declared key."""
    old = rows.pop(ident, None)
    if old is not None and claims is not None:
        claims.release(ident, _values(old))


def _indexed(state: TableState, rows: dict[Any, Row], claims: Claims | None) -> TableState:
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
    if claims is None:
        return state.evolve(frozen_map(rows), buckets, lengths)
    return state.evolve(frozen_map(rows), buckets, lengths, keys=frozen_map(claims.keys),
                        waiting=(immutables.Map(claims.waiting),
                                 immutables.Map(claims.waiting_at)))


_values = row_values


BULK_MIN_ROWS = 256
BULK_FRACTION = 0.25
"""A change of at least `BULK_MIN_ROWS` rows and `BULK_FRACTION` of the table's size is
applied by rebuilding the table's indexes in one pass (`rebuild_table`, with the cyclic
garbage collector paused): 100k new rows in a 1k-row table took 2.2–3.7 s row by row and
1.5–1.8 s in one pass on a 2-core machine loaded by other work (bench/bulk_change.py)."""


def apply_table(state: TableState, deleted: Iterable[Mapping[str, Any]],
                inserted: Iterable[Mapping[str, Any]], on_bad_row: BadRow | None,
                bulk: bool | None = None, replace: bool = True) -> TableState:
    """The next state: `deleted` rows removed, then `inserted` rows added.  `replace`:
    an insert over a held identity replaces it (SQLite, whose identity is the rowid),
    else it is another row of the store with the same declared key (SpacetimeDB: an
    update is a delete and an insert), a bad row (`claims`).  `state` is not modified.
    `bulk`: rebuild the indexes in one pass (True), change them row by row (False), or
    choose by the size of the change (None, see `BULK_FRACTION`); the result is the
    same."""
    if bulk is None:
        # A sized iterable (a list, or rows decoded as they are read) is not copied
        deleted = deleted if isinstance(deleted, Sized) else list(deleted)
        inserted = inserted if isinstance(inserted, Sized) else list(inserted)
        changed = max(len(deleted), len(inserted))
        bulk = changed >= BULK_MIN_ROWS and changed >= BULK_FRACTION * len(state.rows)
    if bulk:
        return rebuild_table(state, deleted, inserted, on_bad_row, replace)
    table = state.table
    lineage, version = state.lineage, state.version + 1
    if lineage.claim(state.version):
        buckets = state.buckets
    else:  # a second change to the same state: it gets maps of its own
        lineage = Lineage(version)
        buckets = {spec: fork(index, state.version) for spec, index in state.buckets.items()}
    rows = state.rows.mutate()
    keys = state.keys.mutate()
    waiting, waiting_at = state.waiting.mutate(), state.waiting_at.mutate()
    claims = None if state.key_of is None else Claims(
        table, state.key_of, keys, waiting, waiting_at, on_bad_row)
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
        if claims is not None:
            claims.release(ident, values)
        for spec, index in buckets.items():
            key = bucket_key(table, spec, values)
            if key is None:
                continue
            rest = tuple(r for r in current(index, key) or () if r is not old)
            put(index, key, rest or None, version)
            if not rest and spec.kind == "net":
                _count(counts[spec], key[:2], -1)

    def add(row: Row) -> None:
        rows[row._ident] = row
        values = _values(row)
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

    for raw in deleted:
        if claims is None or not claims.drop_waiting(raw):
            unindex(ident_of(table, raw))
    for raw in inserted:
        try:
            values = {c.name: decode_value(c, raw.get(c.name)) for c in table.columns}
        except BadValue as exc:
            if replace and (claims is None or not claims.drop_waiting(raw)):
                unindex(ident_of(table, raw))  # an update to a bad value removes the old row
            if on_bad_row is not None:
                on_bad_row(table.name, describe_key(table, raw), str(exc))
            continue
        ident = ident_from(table, raw, values)
        if claims is None or (replace and not claims.drop_waiting(raw)):
            unindex(ident)
        row = make_row(state.cls, values, ident, state.order(values, ident))
        if claims is None or claims.claim(raw, row, values):
            add(row)
    if claims is not None:
        for row in claims.promoted():
            add(row)
    lengths = {}
    for spec, mutable in counts.items():
        finished = mutable.finish()
        old_counts, old_order = state.net_lengths[spec]
        lengths[spec] = ((finished, old_order) if set(finished.keys()) == set(
            old_counts.keys()) else _lengths(finished))
    new = state.evolve(rows.finish(), buckets, lengths, lineage, version, keys.finish(),
                       (waiting.finish(), waiting_at.finish()))
    lineage.sweep()
    return new


def rebuild_table(state: TableState, deleted: Iterable[Mapping[str, Any]],
                  inserted: Iterable[Mapping[str, Any]], on_bad_row: BadRow | None,
                  replace: bool = True) -> TableState:
    """`apply_table` for a large change: the rows kept and the decoded inserts in one
    dictionary, then every index built in one pass (the unchanged rows' objects are
    reused; `state` is not modified)."""
    table = state.table
    with no_gc_pauses():
        rows: dict[Any, Row] = copied_map(state.rows)
        claims = _claims(state, copied_map(state.keys), dict(state.waiting.items()),
                         dict(state.waiting_at.items()), on_bad_row)
        for raw in deleted:
            if claims is None or not claims.drop_waiting(raw):
                _forget(rows, claims, ident_of(table, raw))
        _decode_into(state, rows, inserted, on_bad_row, claims, replace)
        return _indexed(state, rows, claims)


def _count(counts: Any, key: tuple[int, int], delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        del counts[key]
