"""Replaced tables of the SpacetimeDB replica are freed a slice at a time in a worker
thread, not in one pause of the replica's loop: after a new snapshot (every table) and
after a transaction that rebuilt a big table (`tablestate.BULK_FRACTION`); a table changed
row by row shares its maps with the next snapshot and is left alone."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from komm_policy.directory.spacetimedb import SpacetimeDirectory
from komm_policy.directory.spacetimedb_apply import RELEASE_AFTER_S, replaced_states
from komm_policy.spacetimedb.protocol import parse_message

from .bigupdate import blocked_rows
from .spacetimedb_double import DoubleServer
from .test_spacetimedb_big_update import _frame, shipped_replica

BIG = 12_000


@pytest.fixture
def replica() -> Iterator[tuple[SpacetimeDirectory, DoubleServer]]:
    with shipped_replica() as pair:
        yield pair
    gc.unfreeze()  # a large build froze this process's objects: give them back


def _apply(directory: SpacetimeDirectory, frame: str, kind: str) -> None:
    """The replica's own path for one message, on this thread (as its loop would)."""
    message = parse_message(frame)
    handler = directory.on_snapshot if kind == "InitialSubscription" else directory.on_update
    pending = handler(message.tables)
    if pending is not None:
        asyncio.run(pending)  # type: ignore[arg-type]


def _freed_on(directory: SpacetimeDirectory) -> tuple[list[str], weakref.ref]:
    """A list that receives the name of the thread that frees blocked_ips' current table."""
    assert directory._replica is not None and directory._replica.tables is not None
    state = directory._replica.tables.states["blocked_ips"]
    where: list[str] = []
    weakref.finalize(state, lambda: where.append(threading.current_thread().name))
    return where, weakref.ref(state)


def _wait_freed(where: list[str]) -> None:
    deadline = time.monotonic() + RELEASE_AFTER_S + 10
    while not where:
        assert time.monotonic() < deadline, "the replaced table was never freed"
        time.sleep(0.02)


def test_a_transaction_rebuilding_a_big_table_frees_the_old_one_in_a_worker(
        replica: tuple[SpacetimeDirectory, DoubleServer]) -> None:
    directory, double = replica
    _apply(directory, _frame(double, "TransactionUpdate", blocked_rows(0, BIG)),
           "TransactionUpdate")
    where, ref = _freed_on(directory)
    # as many rows again: at least a quarter of the table, so it is rebuilt
    _apply(directory, _frame(double, "TransactionUpdate", blocked_rows(BIG, BIG)),
           "TransactionUpdate")
    assert directory.table_rows()["blocked_ips"] >= 2 * BIG
    assert where == [] and ref() is not None  # kept a while for decisions still reading it
    _wait_freed(where)
    assert where == ["komm-spacetimedb-release"]  # before the fix: this test's thread


def test_a_new_snapshot_frees_every_old_table_in_a_worker(
        replica: tuple[SpacetimeDirectory, DoubleServer]) -> None:
    directory, double = replica
    _apply(directory, _frame(double, "TransactionUpdate", blocked_rows(0, BIG)),
           "TransactionUpdate")
    where, _ = _freed_on(directory)
    directory._pending = directory._replica  # the schema check of a reconnection
    _apply(directory, _frame(double, "InitialSubscription", blocked_rows(0, BIG)),
           "InitialSubscription")
    _wait_freed(where)
    assert where == ["komm-spacetimedb-release"]


def test_a_small_change_to_a_big_table_is_not_taken_apart(
        replica: tuple[SpacetimeDirectory, DoubleServer]) -> None:
    directory, double = replica
    _apply(directory, _frame(double, "TransactionUpdate", blocked_rows(0, BIG)),
           "TransactionUpdate")
    assert directory._replica is not None
    before = directory._replica.tables
    assert before is not None
    _apply(directory, _frame(double, "TransactionUpdate", blocked_rows(BIG, 10)),
           "TransactionUpdate")
    after = directory._replica.tables
    assert after is not None and after is not before
    # changed row by row: its index dicts are the new snapshot's too
    assert replaced_states(before, after) == []
    rebuilt = after.apply({"blocked_ips": ([], blocked_rows_dicts(BIG + 10, BIG))})
    assert replaced_states(after, rebuilt) == [after.states["blocked_ips"]]
    assert replaced_states(after, after) == []


def blocked_rows_dicts(start: int, count: int) -> list[dict[str, object]]:
    names = ("ip", "reason", "blocked_at", "active")
    return [dict(zip(names, row, strict=True)) for row in blocked_rows(start, count)]


@pytest.mark.xfail(strict=True, reason="known: a big build freezes the cycles other "
                   "threads drop meanwhile (gcpause.no_gc_pauses); the fix tried cost "
                   "more than it saved")
def test_repeated_big_transactions_keep_no_garbage_other_threads_drop(
        replica: tuple[SpacetimeDirectory, DoubleServer]) -> None:
    """Reference cycles another thread drops while big transactions are applied (as the
    hook's requests do, ~46 objects each) should still be collected.  With the collector
    off during a build and `gc.freeze()` at its end every such cycle is kept forever:
    65-78% of what was made here."""
    directory, double = replica
    stop = threading.Event()
    made = [0]

    def drop_cycles() -> None:
        while not stop.is_set():
            for _ in range(100):
                a: dict[str, object] = {}
                a["self"] = [a]
                made[0] += 1
            time.sleep(0.001)

    worker = threading.Thread(target=drop_cycles, daemon=True)
    gc.collect()
    worker.start()
    try:
        for i in range(4):  # every one replaces the whole table: rebuilt, frozen
            rows = blocked_rows(BIG * (i % 2), BIG)
            old = blocked_rows(BIG * ((i + 1) % 2), BIG) if i else []
            assert double.control().tx("komm", "blocked_ips", inserts=rows, deletes=old)
            deadline = time.monotonic() + 60
            while directory.updates < i + 1:
                assert time.monotonic() < deadline, directory.last_error
                time.sleep(0.02)
    finally:
        stop.set()
        worker.join(5)
    assert made[0] > 10_000  # the other thread did drop cycles throughout
    gc.unfreeze()
    kept = gc.collect()  # what freezing had kept out of the collector's reach
    assert kept < 0.1 * 2 * made[0], (kept, made[0])
