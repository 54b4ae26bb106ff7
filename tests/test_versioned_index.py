"""The snapshot's shared index maps (`directory/versioned.py`): changes in place never
reach an older snapshot, forks get their own maps, sweeps turn entries back into plain
buckets without changing what any live snapshot reads, and incremental == rebuild."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from komm_policy.directory.schema import parse_schema
from komm_policy.directory.snapshot import IndexSpec, Needs, TablesSnapshot
from komm_policy.directory.versioned import Lineage, Since
from komm_policy.ipset import IP

SCHEMA = parse_schema({"tables": {
    "account": {"primary_key": ["id"], "columns": {
        "id": {"type": "integer"}, "email": {"type": "address"},
        "active": {"type": "bool"}, "name": {"type": "text"}}},
    "blocked": {"primary_key": ["ip"], "columns": {
        "ip": {"type": "network"}, "active": {"type": "bool"}}},
}})
EMAIL = IndexSpec("account", ("email", "active"))
NAME = IndexSpec("account", ("name",))
NET = IndexSpec("blocked", ("ip", "active"), "net")
NEEDS = Needs({EMAIL, NAME, NET})
EMAILS = [f"m{i}@example.net" for i in range(8)]
NETS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "2001:db8::/32", "2001:db8::1"]
PROBES = [IP.parse(x) for x in ("10.1.2.3", "10.9.9.9", "2001:db8::1")]


def account(id_: int, email: str, active: bool = True, name: str = "n") -> dict[str, Any]:
    return {"id": id_, "email": email, "active": active, "name": name}


def build(state: dict[str, dict[Any, dict[str, Any]]]) -> TablesSnapshot:
    return TablesSnapshot.build(SCHEMA, NEEDS, {t: list(r.values()) for t, r in state.items()})


def view(snap: TablesSnapshot) -> tuple[Any, ...]:
    return (
        snap.counts(),
        tuple(tuple(r.values() for r in snap.all(EMAIL, (e, a)))
              for e in EMAILS for a in (True, False)),
        tuple(tuple(r.values() for r in snap.all(NAME, (n,))) for n in ("n", "x", "y")),
        tuple(tuple(r.values() for r in snap.all(NET, (ip, a)))
              for ip in PROBES for a in (True, False)),
        tuple(snap.rows("account")), tuple(snap.rows("blocked")),
    )


def changes(old: dict[str, dict[Any, dict[str, Any]]],
            new: dict[str, dict[Any, dict[str, Any]]]) -> dict[str, Any]:
    out = {}
    for name in old:
        a, b = old[name], new[name]
        out[name] = ([a[k] for k in a if k not in b or b[k] != a[k]],
                     [b[k] for k in b if k not in a or a[k] != b[k]])
    return out


def since_entries(snap: TablesSnapshot) -> int:
    return sum(1 for m in snap.maps.values() for e in m.values() if e.__class__ is Since)


@contextmanager
def sweep_every(n: int) -> Iterator[None]:
    old = Lineage.SWEEP_MIN
    Lineage.SWEEP_MIN = n
    try:
        yield
    finally:
        Lineage.SWEEP_MIN = old


def test_an_old_snapshot_never_sees_a_later_change() -> None:
    """600 one-row changes in a chain (sweeps run along the way): every snapshot kept
    reads what a build of its own rows reads, and the maps are shared, not copied."""
    state = {"account": {i: account(i, EMAILS[i % 8], name="n") for i in range(40)},
             "blocked": {n: {"ip": n, "active": True} for n in NETS[:2]}}
    snap = build(state)
    kept = []
    for step in range(600):
        new = {"account": dict(state["account"]), "blocked": dict(state["blocked"])}
        i = step % 50
        if step % 7 == 3:
            new["account"].pop(i, None)
        else:
            new["account"][i] = account(i, EMAILS[step % 8], step % 3 != 0,
                                        ("n", "x", "y")[step % 3])
        net = NETS[step % len(NETS)]
        if step % 5 == 0:
            new["blocked"][net] = {"ip": net, "active": step % 2 == 0}
        elif step % 5 == 1:
            new["blocked"].pop(net, None)
        nxt = snap.apply(changes(state, new), bulk=False)
        assert nxt.maps[spec_name_of(EMAIL)] is snap.maps[spec_name_of(EMAIL)]  # in place
        if step % 97 == 0:
            kept.append((snap, view(build(state))))
        snap, state = nxt, new
    for old, expected in kept:
        assert view(old) == expected
    assert view(snap) == view(build(state))


def spec_name_of(spec: IndexSpec) -> str:
    from komm_policy.directory.snapshot import spec_name
    return spec_name(spec)


def test_sweeps_turn_entries_back_into_plain_buckets() -> None:
    """With no older snapshot alive, changed keys end up plain dict entries again."""
    state = {"account": {i: account(i, EMAILS[i % 8]) for i in range(20)}, "blocked": {}}
    snap = build(state)
    for step in range(Lineage.SWEEP_MIN * 3):
        new = {"account": dict(state["account"]), "blocked": {}}
        new["account"][step % 20] = account(step % 20, EMAILS[step % 8], name=f"v{step}")
        snap = snap.apply(changes(state, new), bulk=False)  # the old one is freed
        state = new
    assert since_entries(snap) <= Lineage.SWEEP_MIN * 2  # bounded, not one per change
    with sweep_every(1):
        new = {"account": dict(state["account"]), "blocked": {}}
        new["account"][0] = account(0, EMAILS[1], name="last")
        older, snap = snap, snap.apply(changes(state, new), bulk=False)
        del older
        gc.collect()
        snap.states["account"].lineage.sweep(force=True)
    assert since_entries(snap) == 0
    assert view(snap) == view(build(new))


def test_a_second_change_to_the_same_snapshot_gets_its_own_maps() -> None:
    state = {"account": {1: account(1, EMAILS[0]), 2: account(2, EMAILS[1])},
             "blocked": {NETS[0]: {"ip": NETS[0], "active": True}}}
    base = build(state)
    one = {"account": {**state["account"], 3: account(3, EMAILS[0])}, "blocked": {}}
    two = {"account": {1: account(1, EMAILS[2])}, "blocked": state["blocked"]}
    first = base.apply(changes(state, one), bulk=False)
    second = base.apply(changes(state, two), bulk=False)  # a fork: base is not the newest
    assert second.maps[spec_name_of(EMAIL)] is not first.maps[spec_name_of(EMAIL)]
    third = first.apply(changes(one, two), bulk=False)  # the first lineage goes on
    assert (view(base), view(first), view(second), view(third)) == (
        view(build(state)), view(build(one)), view(build(two)), view(build(two)))


_ops = st.lists(st.one_of(
    st.tuples(st.just("acc"), st.integers(0, 5), st.sampled_from(EMAILS[:4]), st.booleans(),
              st.sampled_from(["n", "x"])),
    st.tuples(st.just("del_acc"), st.integers(0, 5)),
    st.tuples(st.just("net"), st.sampled_from(NETS), st.booleans()),
    st.tuples(st.just("del_net"), st.sampled_from(NETS)),
    st.tuples(st.just("keep")), st.tuples(st.just("fork"))), max_size=30)


@settings(max_examples=120, deadline=None)
@given(_ops, st.integers(1, 4))
def test_every_snapshot_kept_equals_a_rebuild(ops: list[tuple[Any, ...]], sweep: int) -> None:
    """Changes one at a time, sweeps every few changed keys, snapshots kept along the way
    and forks from them: each snapshot reads what a full build of its rows reads."""
    state: dict[str, dict[Any, dict[str, Any]]] = {"account": {}, "blocked": {}}
    with sweep_every(sweep):
        snap = build(state)
        kept: list[tuple[TablesSnapshot, dict[str, Any]]] = []
        for op in ops:
            if op[0] == "keep":
                kept.append((snap, state))
                continue
            if op[0] == "fork" and kept:
                old, old_state = kept[-1]
                new = {"account": {**old_state["account"], 9: account(9, EMAILS[5])},
                       "blocked": old_state["blocked"]}
                kept.append((old.apply(changes(old_state, new), bulk=False), new))
                continue
            new = {"account": dict(state["account"]), "blocked": dict(state["blocked"])}
            if op[0] == "acc":
                new["account"][op[1]] = account(op[1], op[2], op[3], op[4])
            elif op[0] == "del_acc":
                new["account"].pop(op[1], None)
            elif op[0] == "net":
                new["blocked"][op[1]] = {"ip": op[1], "active": op[2]}
            elif op[0] == "del_net":
                new["blocked"].pop(op[1], None)
            snap, state = snap.apply(changes(state, new), bulk=False), new
        for old, old_state in kept:
            assert view(old) == view(build(old_state))
        assert view(snap) == view(build(state))


def test_a_reader_thread_sees_whole_snapshots_while_a_writer_changes_the_maps() -> None:
    """A writer thread moves one row between two addresses 3,000 times (changing the
    shared maps in place, sweeping along the way); a reader in this thread holds each
    published snapshot for a while: it always finds the row under exactly one address,
    the same one on every read of that snapshot."""
    state = {"account": {1: account(1, EMAILS[0])}, "blocked": {}}
    published = [build(state)]
    done = threading.Event()

    def write() -> None:
        snap, old = published[0], state
        for step in range(3000):
            new = {"account": {1: account(1, EMAILS[(step + 1) % 2], name=f"v{step}")},
                   "blocked": {}}
            snap, old = snap.apply(changes(old, new), bulk=False), new
            published[0] = snap
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    try:
        while not done.is_set() or reads < 10:
            snap = published[0]
            first = [len(snap.all(EMAIL, (e, True))) for e in EMAILS[:2]]
            assert sorted(first) == [0, 1]
            for _ in range(20):
                assert [len(snap.all(EMAIL, (e, True))) for e in EMAILS[:2]] == first
            reads += 1
    finally:
        writer.join(30)
    assert reads >= 10 and not writer.is_alive()
    assert view(published[0]) == view(build(
        {"account": {1: account(1, EMAILS[0], name="v2999")}, "blocked": {}}))
