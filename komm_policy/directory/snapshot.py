"""Immutable snapshots of directory tables, updated in time proportional to the changes.

This is the one concurrency model of every directory backend (product.md §4): a decision
reads one `TablesSnapshot`; the backend's refresher builds the next one from the current
one and publishes it by one reference assignment.  Nothing a decision holds ever changes.

Backend-neutral API (SQLite change triggers and SpacetimeDB `TransactionUpdate` deltas feed
it the same way)::

    snap = TablesSnapshot.build(schema, needs, {"blocked_networks": rows, ...}, on_bad_row)
    snap = snap.apply({"blocked_networks": (deleted_rows, inserted_rows)}, on_bad_row)

- `schema`: the tables' `Schema`; `needs`: the `Needs` of the compiled policy set (which
  tables, which indexes); tables and indexes nobody needs are not built.
- A row is a mapping column name → value as the backend decodes it (`schema.decode_value`
  turns it into the replica's value: SATS tags into enum names, hex into identities, …).
- A row's identity: its `rowid` entry when the backend gives one (SQLite), else its
  primary-key columns, else the whole row (SpacetimeDB tables without a primary key: a
  delete names the whole old row, as `TransactionUpdate` does).  A deleted row needs only
  the columns of its identity (SpacetimeDB: also those of the declared key, as sent, to
  tell a row that waits for its key from the row that holds it, `claims`).  An update is
  a delete plus an insert, in one `apply`.
- Rows whose declared key another row holds are bad rows that wait (`claims`): the
  change that frees their key brings the first of them in.
- First-row order: lowest primary key (or rowid), as the lookups promise.
- `on_bad_row(table, key, reason)` is called for every row that does not fit the schema
  (NULL in a non-optional column, `300.1.2.3` in a network column, …); the row is skipped.

Cost: every changed row costs O(1) per index (plain dicts shared by successive snapshots
and changed in place under version stamps, `versioned`; buckets of equal keys are copied
when touched; a read is a dict read); a change to a large part of a table (a bulk import)
rebuilds that table's indexes in one pass instead, with Python's cyclic garbage collector
paused (`tablestate.BULK_FRACTION`).  A network index is keyed by (prefix
length, network number): an IP lookup is one shift and one map read per prefix length in
use, most specific first.  The rows and indexes of one table: `tablestate`; rows:
`rows`.  Compiled lookups read `maps` and `nets` directly (`table_lookups`) and resolve
the rare `versioned.Since` entry with `resolve`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..ipset import IP
from .rows import Row, row_class, sort_key
from .schema import Schema
from .tablestate import BadRow, IndexSpec, TableState, apply_table, build_table, spec_name
from .versioned import Since, resolve

__all__ = ["BadRow", "Changes", "IndexSpec", "Needs", "Row", "TablesSnapshot", "row_class",
           "spec_name"]

Changes = Mapping[str, tuple[Iterable[Mapping[str, Any]], Iterable[Mapping[str, Any]]]]


@dataclass
class Needs:
    """What a compiled policy set reads: tables and the indexes on them."""

    indexes: set[IndexSpec] = field(default_factory=set)

    @property
    def tables(self) -> set[str]:
        return {spec.table for spec in self.indexes}

    def __bool__(self) -> bool:
        return bool(self.indexes)


class TablesSnapshot:
    """The tables one decision reads.  Lookups: `first`, `all`, `exists`."""

    __slots__ = ("_readers", "maps", "needs", "nets", "schema", "states", "versions")

    def __init__(self, schema: Schema, needs: Needs, states: dict[str, TableState]) -> None:
        self.schema = schema
        self.needs = needs
        self.states = states
        self.maps: dict[str, dict[Any, Any]] = {
            spec_name(spec): bucket for state in states.values()
            for spec, bucket in state.buckets.items()}
        """index name → dict[key → rows, or a `Since` entry: `resolve(entry,
        versions[name])`]: what compiled lookups read."""
        self.versions: dict[str, int] = {
            spec_name(spec): state.version for state in states.values()
            for spec in state.buckets}
        """index name → the version its map is read at."""
        self.nets: dict[str, dict[int, tuple[tuple[int, int], ...]]] = {
            spec_name(spec): lengths[1] for state in states.values()
            for spec, lengths in state.net_lengths.items()}
        """network index name → {IP version: ((prefix length, shift), …)}, longest first."""
        self._readers = {
            spec_name(spec): (spec.kind == "eq", len(spec.columns) == 1,
                              state.normalizers[spec], state.buckets[spec],
                              self.nets.get(spec_name(spec)), state.version)
            for state in states.values() for spec in state.buckets}

    # -- building ----------------------------------------------------------------------

    @classmethod
    def empty(cls, schema: Schema, needs: Needs) -> TablesSnapshot:
        return cls(schema, needs, {
            name: TableState.empty(schema.tables[name],
                                   [s for s in needs.indexes if s.table == name])
            for name in sorted(needs.tables)})

    @classmethod
    def build(cls, schema: Schema, needs: Needs,
              rows: Mapping[str, Iterable[Mapping[str, Any]]],
              on_bad_row: BadRow | None = None) -> TablesSnapshot:
        """A snapshot of whole tables (the first load, or a full reload): built in plain
        dictionaries and frozen once, several times faster than applying inserts."""
        empty = cls.empty(schema, needs)
        return cls(schema, needs, {
            name: build_table(state, rows.get(name, ()), on_bad_row)
            for name, state in empty.states.items()})

    def apply(self, changes: Changes, on_bad_row: BadRow | None = None,
              bulk: bool | None = None, replace: bool = True) -> TablesSnapshot:
        """The next snapshot: this one with `changes` ({table: (deleted, inserted)})
        applied.  Tables nobody needs are ignored; this snapshot is not modified.  A
        table changed in a large part is re-indexed in one pass (`bulk`: force it on or
        off; see `tablestate.BULK_FRACTION`).  `replace`: an insert over a held identity
        replaces it (True), or is another row with the same declared key, a bad row
        (False: SpacetimeDB, whose updates delete the old row first; `claims`)."""
        states = dict(self.states)
        for name, (deleted, inserted) in changes.items():
            state = states.get(name)
            if state is not None:
                states[name] = apply_table(state, deleted, inserted, on_bad_row, bulk,
                                           replace)
        return TablesSnapshot(self.schema, self.needs, states)

    # -- reading -----------------------------------------------------------------------

    def _bucket(self, spec: IndexSpec | str, key: tuple[Any, ...]) -> Any:
        """The matching rows in order (a tuple or list), or None.  `spec` may be given by
        its `spec_name`."""
        eq, single, normalizers, buckets, lengths, version = self._readers[
            spec if spec.__class__ is str else spec_name(spec)]  # type: ignore[arg-type]
        if eq:
            if single:
                k = normalizers[0](key[0])
                return None if k is None else resolve(buckets.get(k), version)
            normal = []
            for normalize, value in zip(normalizers, key, strict=True):
                k = normalize(value)
                if k is None:
                    return None
                normal.append(k)
            return resolve(buckets.get(tuple(normal)), version)
        rest = []
        for normalize, value in zip(normalizers[1:], key[1:], strict=True):
            k = normalize(value)
            if k is None:
                return None
            rest.append(k)
        ip = key[0]
        if not isinstance(ip, IP):
            return None
        found: list[Any] = []
        ip_version, value = ip.version, ip.value
        for length, shift in lengths.get(ip_version, ()):
            bucket = resolve(buckets.get((ip_version, length, value >> shift, *rest)),
                             version)
            if bucket:
                found.extend(bucket)
        return found or None

    def first(self, spec: IndexSpec | str, key: tuple[Any, ...]) -> Row | None:
        """The first row whose columns equal `key` (lowest primary key), or None."""
        bucket = self._bucket(spec, key)
        return bucket[0] if bucket else None

    def all(self, spec: IndexSpec | str, key: tuple[Any, ...]) -> list[Row]:
        """Every matching row, lowest primary key first (networks: most specific first)."""
        bucket = self._bucket(spec, key)
        return list(bucket) if bucket else []

    def exists(self, spec: IndexSpec | str, key: tuple[Any, ...]) -> bool:
        return bool(self._bucket(spec, key))

    def rows(self, table: str) -> list[Row]:
        """Every row of a replicated table, in first-row order (tests, `db export`)."""
        return sorted(self.states[table].rows.values(), key=sort_key)

    def resolve(self, name: str, entry: Since) -> Any:
        """The bucket a `Since` entry of the index `name` holds for this snapshot."""
        return resolve(entry, self.versions[name])

    def counts(self) -> dict[str, int]:
        return {name: len(state.rows) for name, state in self.states.items()}
