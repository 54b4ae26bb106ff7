"""Rows that wait for their declared key (`directory.claims`): a row skipped because
another row holds its `primary_key` comes in with the change that frees the key, row by
row and in the one-pass rebuild alike, for SQLite-shaped changes (rowid identities, an
insert over a held rowid replaces it) and SpacetimeDB-shaped ones (the decoded key is the
identity, an update deletes the old row first).  The replica end to end, through SQLite
and the SpacetimeDB double: tests/test_declared_keys_waiting.py."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from komm_policy.directory.schema import parse_schema
from komm_policy.directory.snapshot import IndexSpec, Needs, TablesSnapshot

SCHEMA = parse_schema({"tables": {"accounts": {"primary_key": ["email"], "columns": {
    "email": {"type": "address"}, "name": {"type": "text"}}}}})
EMAIL = IndexSpec("accounts", ("email",))
NAME = IndexSpec("accounts", ("name",))
NEEDS = Needs({EMAIL, NAME})


class Store:
    """A table as a store holds it, and the replica's snapshot of it."""

    def __init__(self, rows: list[dict[str, Any]], sqlite: bool, bulk: bool) -> None:
        self.sqlite, self.bulk = sqlite, bulk
        self.bad: list[tuple[str, str, str]] = []
        self.rows = {self.sid(r): r for r in rows}
        self.snap = TablesSnapshot.build(SCHEMA, NEEDS, {"accounts": rows}, self.report)

    def report(self, table: str, key: str, reason: str) -> None:
        self.bad.append((table, key, reason))

    def sid(self, row: dict[str, Any]) -> Any:
        return row["rowid"] if self.sqlite else row["email"]

    def change(self, deleted: list[dict[str, Any]], inserted: list[dict[str, Any]]) -> None:
        for row in deleted:
            del self.rows[self.sid(row)]
        for row in inserted:
            self.rows[self.sid(row)] = row
        if self.sqlite:  # SQLite's refresh: each changed rowid deleted, then read again
            gone = [{"rowid": r["rowid"]} for r in [*deleted, *inserted]]
            deleted, inserted = gone, inserted
        self.snap = self.snap.apply({"accounts": (deleted, inserted)}, self.report,
                                    bulk=self.bulk, replace=self.sqlite)

    def names(self, email: str) -> list[str]:
        return [r.name for r in self.snap.all(EMAIL, (email,))]

    def check(self) -> None:
        """Every store row is held or waiting, one per key held, each as stored."""
        state = self.snap.states["accounts"]
        held = {(r.email, r.name) for r in state.rows.values()}
        waiting = [row for entries in state.waiting.values() for row in entries.values()]
        assert len(state.rows) + len(waiting) == len(self.rows)
        assert len(state.waiting_at) == len(waiting)
        stored = {(r["email"].lower(), r["name"]) for r in self.rows.values()}
        assert held <= stored
        assert {r.email for r in state.rows.values()} == {e for e, _ in stored}
        assert {(r.email, r.name) for r in waiting} == stored - held
        for email, _ in stored:  # the index holds exactly the held row of each key
            assert len(self.snap.all(EMAIL, (email,))) == 1


def row(sqlite: bool, rowid: int, email: str, name: str) -> dict[str, Any]:
    return {"rowid": rowid, "email": email, "name": name} if sqlite else {
        "email": email, "name": name}


@pytest.mark.parametrize("bulk", [False, True], ids=["row-by-row", "one-pass"])
@pytest.mark.parametrize("sqlite", [True, False], ids=["sqlite", "spacetimedb"])
def test_a_skipped_row_comes_in_when_the_row_with_its_key_goes(sqlite: bool,
                                                               bulk: bool) -> None:
    first, second = row(sqlite, 1, "anna@x.example", "first"), row(
        sqlite, 2, "Anna@X.example", "second")
    store = Store([first, second], sqlite, bulk)
    assert store.names("anna@x.example") == ["first"]
    assert len(store.bad) == 1 and "Anna@X.example" in store.bad[0][1]
    assert "same primary_key (email" in store.bad[0][2]
    store.check()
    # the holder changes something else: the key stays with it, the other row waits
    renamed = {**first, "name": "first again"}
    store.change([first], [renamed])
    assert store.names("anna@x.example") == ["first again"]
    assert not store.snap.exists(NAME, ("second",))
    store.check()
    # the holder goes: the waiting row comes in with the same change
    store.change([renamed], [])
    assert store.names("anna@x.example") == ["second"]
    assert store.snap.exists(NAME, ("second",))
    assert len(store.bad) == 1  # nothing new to report
    store.check()
    assert not store.snap.states["accounts"].waiting


@pytest.mark.parametrize("bulk", [False, True], ids=["row-by-row", "one-pass"])
@pytest.mark.parametrize("sqlite", [True, False], ids=["sqlite", "spacetimedb"])
def test_a_later_insert_with_a_held_key_waits_and_its_delete_leaves_the_holder(
        sqlite: bool, bulk: bool) -> None:
    """SpacetimeDB: before, such an insert replaced the holder, and deleting it then took
    the holder's row away."""
    holder = row(sqlite, 1, "anna@x.example", "holder")
    store = Store([holder], sqlite, bulk)
    shout = row(sqlite, 7, "ANNA@x.example", "shout")
    store.change([], [shout])
    assert store.names("anna@x.example") == ["holder"]
    assert len(store.bad) == 1 and "ANNA@x.example" in store.bad[0][1]
    store.check()
    store.change([shout], [])
    assert store.names("anna@x.example") == ["holder"]
    assert not store.snap.states["accounts"].waiting
    store.check()
    # the holder's key changes: the key is free, nothing waits for it
    store.change([holder], [moved := row(sqlite, 1, "bert@x.example", "holder")])
    assert store.names("bert@x.example") == ["holder"]
    assert store.names("anna@x.example") == []
    store.check()
    # a row that waits and changes its own key to a free one comes in
    store.change([], [late := row(sqlite, 8, "Bert@X.example", "late")])
    assert store.names("bert@x.example") == ["holder"]
    store.change([late], [row(sqlite, 8, "carl@x.example", "late")])
    assert store.names("carl@x.example") == ["late"]
    store.check()
    store.change([moved], [])
    assert store.names("bert@x.example") == []
    store.check()


def test_the_first_waiting_row_in_first_row_order_takes_the_key() -> None:
    rows = [row(True, 5, "a@x.example", "five"), row(True, 9, "A@x.example", "nine"),
            row(True, 3, "a@X.example", "three")]
    store = Store(rows, sqlite=True, bulk=False)
    assert store.names("a@x.example") == ["five"]  # the first row read holds the key
    store.change([rows[0]], [])
    assert store.names("a@x.example") == ["three"]
    store.change([rows[2]], [])
    assert store.names("a@x.example") == ["nine"]
    store.check()


EMAILS = ["a@x.example", "A@x.example", "a@X.EXAMPLE", "b@x.example", "B@x.example"]


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.booleans(), st.lists(st.tuples(
    st.sampled_from(["insert", "delete", "update", "move"]), st.integers(0, 7),
    st.sampled_from(EMAILS)), max_size=25))
def test_every_store_row_is_held_or_waiting_and_every_key_held(
        sqlite: bool, bulk: bool, steps: list[tuple[str, int, str]]) -> None:
    """Whatever the store does, each key in the store is held by one of its rows, every
    other row waits, and the side map holds nothing else (its bound)."""
    store = Store([], sqlite, bulk)
    names = iter(range(10_000))
    for action, pick, email in steps:
        existing = sorted(store.rows, key=str)
        if action == "insert" or not existing:
            new = row(sqlite, 100 + next(names), email, f"n{next(names)}")
            if store.sid(new) not in store.rows:
                store.change([], [new])
        else:
            old = store.rows[existing[pick % len(existing)]]
            if action == "delete":
                store.change([old], [])
            elif action == "update":
                store.change([old], [{**old, "name": f"n{next(names)}"}])
            elif sqlite:  # only SQLite moves a row to another key under one identity
                store.change([old], [{**old, "email": email}])
        store.check()


def test_many_rows_waiting_for_one_key_cost_linear_time() -> None:
    """NULL under SQLite's UNIQUE may repeat in every row: 16 times the rows waiting for
    one key cost about 16 times the CPU time to read and to delete one by one (quadratic
    would be 256 times; a generous margin for a noisy machine)."""
    schema = parse_schema({"tables": {"t": {"primary_key": ["tag"], "columns": {
        "tag": {"type": "text", "optional": True}, "name": {"type": "text"}}}}})
    needs = Needs({IndexSpec("t", ("name",))})
    costs = []
    for count in (1000, 16000):
        rows = [{"rowid": i, "tag": None, "name": f"n{i}"} for i in range(count)]
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            snap = TablesSnapshot.build(schema, needs, {"t": rows})
            for i in range(1, count, 50):  # changes of 50 rows each, row by row
                snap = snap.apply({"t": ([{"rowid": r} for r in range(i, i + 50)], [])},
                                  bulk=False)
            best = min(best, time.process_time() - start)
        assert snap.counts() == {"t": 1} and not snap.states["t"].waiting
        costs.append(best)
    assert costs[1] < 64 * max(costs[0], 1e-4), costs
