"""Building the SpacetimeDB replica's next tables from one subscription message.

The work of a message (`InitialSubscription` or one committed transaction) is a pure
function of the replica's current tables and the message's row strings: it builds the
next `TablesSnapshot` and publishes nothing, so `SpacetimeDirectory` runs a large one in a
worker thread while decisions keep reading the previous snapshot, and publishes the result
by one reference swap (a transaction becomes visible whole or not at all).

Memory: rows are decoded one at a time as the table builder reads them (`DecodedRows`),
and each row string is dropped from the message once decoded, so the raw rows, the decoded
rows and the new table are never all held together: what a message adds on top of the
table it produces is its own row strings and one dictionary of the table's rows.

Pauses: a message of at least `FREEZE_MIN_ROWS` rows is built with Python's cyclic
garbage collector paused and the objects it built are then moved out of the collector's
reach (`gc.freeze`).  Otherwise the first collections after it walk every new object in
one go while holding the interpreter lock, pausing every thread (0.54 s after a
200,000-row transaction on a 2-core machine: the hook's answers waited that long).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from itertools import islice
from typing import Any

import msgspec

from ..gcpause import no_gc_pauses
from ..spacetimedb.protocol import RowText, TableRows, raw_text, row_text
from ..spacetimedb.rownames import RowNamer
from ..spacetimedb.sats import Decoder
from ..spacetimedb.schema import ModuleSchema
from .bulkcopy import C_CALL_ITEMS
from .schema import Schema
from .snapshot import BadRow, Needs, TablesSnapshot
from .tablestate import TableState

RowDict = dict[str, Any]

OFFLOAD_MIN_ROWS = 1_000
"""A message with at least this many rows is applied in a worker thread (the replica's
event loop keeps answering pings meanwhile); a smaller one inline, with no thread hop."""

FREEZE_MIN_ROWS = 10_000
"""A message with at least this many rows is built with the collector paused and its
objects frozen (see the module's docstring): below it the young collections that follow
walk at most a few tens of thousands of new objects (milliseconds)."""


class Replica:
    """The state one subscription builds: decoders for the subscribed tables and the
    published tables."""

    def __init__(self, module: ModuleSchema, tables: list[str], schema: Schema,
                 needs: Needs) -> None:
        decoder = Decoder(module.typespace, micros=True)
        self.names = {t: module.tables[t].row_type.names for t in tables}
        self.decoders = {t: decoder.product(module.tables[t].row_type) for t in tables}
        self.keys = {t: module.tables[t].primary_key for t in tables}
        self.namers = {t: RowNamer(decoder, module.tables[t].row_type,
                                   module.tables[t].primary_key) for t in tables}
        self.schema = schema
        self.needs = needs
        self.tables: TablesSnapshot | None = None


class DecodedRows:
    """One message's rows of one table, decoded one at a time as they are read
    (once: each string is released from the message's list when decoded).  `len` is the
    number of row strings, what the table builder sizes a change by.

    A row that cannot be decoded, for any reason (a wrong type, invalid JSON, nesting too
    deep for the JSON decoder), is skipped and reported to `on_bad_row` once by its
    `RowNamer` name (never by its position in the message, which repeats across messages
    and shifts after a reconnect)."""

    __slots__ = ("on_bad_row", "replica", "table", "texts")

    def __init__(self, replica: Replica, table: str, texts: list[RowText],
                 on_bad_row: BadRow) -> None:
        self.replica = replica
        self.table = table
        self.texts: list[RowText | None] = texts  # type: ignore[assignment]
        self.on_bad_row = on_bad_row

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[RowDict]:
        table, texts = self.table, self.texts
        decode, names = self.replica.decoders[table], self.replica.names[table]
        for i in range(len(texts)):
            row = texts[i]
            texts[i] = None  # the message's copy goes as soon as the row is read
            if row is None:
                continue
            text = None
            try:
                text = row_text(row)
                values = decode(msgspec.json.decode(text))
            except Exception as e:  # any failure of one row skips that row only
                # (RecursionError: msgspec's answer to a value nested ~1,000 levels deep)
                reason = str(e) or type(e).__name__
                if isinstance(e, RecursionError):
                    reason = f"nested too deeply to decode ({e})"
                self.on_bad_row(table, self.replica.namers[table](
                    raw_text(row) if text is None else text), reason)
                continue
            yield dict(zip(names, values, strict=True))


def message_rows(tables: tuple[TableRows, ...]) -> int:
    """How many row strings (deletes and inserts) a message carries."""
    return sum(len(t.deletes) + len(t.inserts) for t in tables)


def snapshot_tables(replica: Replica, tables: tuple[TableRows, ...],
                    on_bad_row: BadRow) -> TablesSnapshot:
    """The replica's tables from an `InitialSubscription` (a table the message lacks is
    empty).  Consumes the message's row strings."""
    received: Mapping[str, TableRows] = {t.table_name: t for t in tables}
    rows = {name: DecodedRows(replica, name, received[name].inserts, on_bad_row)
            for name in replica.decoders if name in received}
    with no_gc_pauses(freeze=message_rows(tables) >= FREEZE_MIN_ROWS):
        return TablesSnapshot.build(replica.schema, replica.needs,
                                    {t: rows.get(t, ()) for t in replica.needs.tables},
                                    on_bad_row)


def updated_tables(replica: Replica, tables: tuple[TableRows, ...],
                   on_bad_row: BadRow) -> TablesSnapshot | None:
    """The replica's tables after one committed transaction (None: it has none yet).
    Tables the replica does not hold are ignored.  Consumes the message's row strings.
    An update is a delete and an insert, so an insert whose identity (the declared key,
    decoded: an address in lower case) a row still holds is another row of the store
    with the same declared key: skipped, reported and counted, kept waiting for the key
    (`claims`), whether the message is applied row by row or in one pass."""
    current = replica.tables
    if current is None:
        return None
    changes = {}
    for part in tables:
        name = part.table_name
        if name in replica.decoders and name in replica.needs.tables:
            changes[name] = (DecodedRows(replica, name, part.deletes, on_bad_row),
                             DecodedRows(replica, name, part.inserts, on_bad_row))
    if not changes:
        return current
    with no_gc_pauses(freeze=message_rows(tables) >= FREEZE_MIN_ROWS):
        return current.apply(changes, on_bad_row, replace=False)


RELEASE_AFTER_S = 0.5
"""How long replaced tables are kept before `release` takes them apart: a decision that
read them when they were replaced (microseconds to milliseconds) is long done by then."""

RELEASE_MIN_ROWS = OFFLOAD_MIN_ROWS
"""Replaced tables of at least this many rows together are freed by `release` in a worker
thread; smaller ones where their last reference goes (well under a millisecond)."""


def replaced_states(old: TablesSnapshot, new: TablesSnapshot) -> list[TableState]:
    """The tables of `old` that `new` no longer shares anything with: all of them after a
    new `InitialSubscription`, the ones a large transaction rebuilt
    (`tablestate.BULK_FRACTION`: new maps, a new lineage) after an update.  A table
    changed row by row shares its index dicts with `new` (changed in place by the next
    transactions) and an unchanged one is `new`'s own: neither is listed."""
    out = []
    for name, state in old.states.items():
        now = new.states.get(name)
        if now is None or (now.lineage is not state.lineage and all(
                now.buckets.get(spec) is not index for spec, index in state.buckets.items())):
            out.append(state)
    return out


def release(holder: list[list[TableState]], settle: float = RELEASE_AFTER_S) -> None:
    """Free the tables in `holder` (popped: the caller keeps no other reference to them nor
    to a snapshot holding them) a slice at a time, in a worker thread.  Dropping a
    200,000-row table at once frees every row in one C call that holds the interpreter
    lock (0.7–2.7 s on a 2-core machine, every thread paused; ~90 ms for the maps a
    rebuild replaced, whose rows live on); here its rows and index buckets are first
    moved to lists of `C_CALL_ITEMS`, then its maps go, then the lists one by one.  Only
    for tables nothing shares and nothing changes any more (`replaced_states`): the index
    dicts are read here while the replica builds its next tables."""
    time.sleep(settle)
    states = holder.pop()
    chunks: list[list[Any]] = []
    for state in states:
        for values in (state.rows.values(), state.keys.values(),
                       *(index.values() for index in state.buckets.values())):
            items = iter(values)
            while chunk := list(islice(items, C_CALL_ITEMS)):
                chunks.append(chunk)
    state = values = items = None  # type: ignore[assignment]
    del states  # the maps and index dicts go; their rows and buckets live on in `chunks`
    while chunks:
        chunks.pop()


def release_replaced(old: TablesSnapshot, new: TablesSnapshot) -> None:
    """Free the tables of `old` that `new` does not share, when they are large, a slice at
    a time in a worker thread (`release`) instead of in one pause of every thread where
    the last reference goes (in the replica's loop, or when a decision holding `old`
    ends).  The caller drops its reference to `old` at once."""
    states = replaced_states(old, new)
    if sum(len(state.rows) for state in states) < RELEASE_MIN_ROWS:
        return
    holder = [states]
    del states
    threading.Thread(target=release, args=(holder,), daemon=True,
                     name="komm-spacetimedb-release").start()
