"""The compiled fast path of table lookups (`table_readers`, `table_lookups`): readers
specialised at load time answer exactly as the snapshot's generic `first`/`all`/`exists`;
calls proved to run once per decision skip the memo, the others keep it; the fast path is
the one taken on a local snapshot, the generic one when timed or on a stand-in."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from komm_policy import runtime
from komm_policy.context import EvalContext
from komm_policy.directory.keys import column_key, lookup_key
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.directory.schema import parse_schema
from komm_policy.directory.snapshot import IndexSpec, Needs, TablesSnapshot, spec_name
from komm_policy.ipset import IP
from komm_policy.policyset import PolicySet, Source, compile_sources
from komm_policy.table_lookups import LookupSite, settle_sites
from komm_policy.table_readers import RESULTS, reader

from .test_runtime import request

SCHEMA = parse_schema({"tables": {
    "members": {"primary_key": ["id"], "columns": {
        "id": {"type": "integer"}, "email": {"type": "address"},
        "group_id": {"type": "integer"}, "active": {"type": "bool"},
        "status": {"type": "enum", "variants": ["Active", "Suspended"]},
        "note": {"type": "text", "optional": True}}},
    "nets": {"primary_key": ["net"], "columns": {
        "net": {"type": "network"}, "active": {"type": "bool"}}},
}})
MEMBERS = SCHEMA.tables["members"]
ADDRESSES = ["a@x.example", "A@X.Example", " a@x.example ", "b@bücher.example",
             "B@XN--BCHER-KVA.example", "c@y.example", "x.example"]
NETS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "2001:db8::/32", "2001:db8::1"]
IPS = ["10.1.2.3", "10.9.9.9", "11.0.0.1", "2001:db8::1", "2001:db8:5::1", "::ffff:10.1.2.3"]

_member = st.fixed_dictionaries({
    "email": st.sampled_from(ADDRESSES), "group_id": st.integers(1, 3),
    "active": st.booleans(), "status": st.sampled_from(["Active", "Suspended"]),
    "note": st.sampled_from([None, "n"])})
_net = st.fixed_dictionaries({"net": st.sampled_from(NETS), "active": st.booleans()})
_key_values = {
    "email": st.sampled_from([*ADDRESSES, "nobody@x.example", 5]),
    "group_id": st.sampled_from([1, 2, 3, 4, "1", True]),
    "active": st.sampled_from([True, False, 1]),
    "status": st.sampled_from(["Active", "Suspended", "Gone"]),
    "note": st.sampled_from(["n", "m"]),
    "id": st.integers(0, 12),
}
_member_specs = st.lists(st.sampled_from(["email", "group_id", "active", "status", "note",
                                          "id"]), min_size=1, max_size=3, unique=True)


def _snapshot(members: list[dict[str, Any]], nets: list[dict[str, Any]],
              specs: list[IndexSpec]) -> TablesSnapshot:
    rows = {"members": [{"id": i, **m} for i, m in enumerate(members, start=1)],
            "nets": nets}
    return TablesSnapshot.build(SCHEMA, Needs(set(specs)), rows)


@settings(max_examples=200, deadline=None)
@given(st.lists(_member, max_size=12), _member_specs, st.data())
def test_specialised_equality_readers_equal_the_generic_path(
        members: list[dict[str, Any]], columns: list[str], data: Any) -> None:
    spec = IndexSpec("members", tuple(sorted(columns)))
    snap = _snapshot(members, [], [spec])
    name = spec_name(spec)
    width = len(spec.columns)
    dynamic_count = data.draw(st.integers(1, min(2, width)))
    dynamic = tuple(sorted(data.draw(st.permutations(range(width)))[:dynamic_count]))
    keys = [data.draw(_key_values[c]) for c in spec.columns]
    constants = {i: keys[i] for i in range(width) if i not in dynamic}
    read = reader(spec, name, constants, dynamic, [MEMBERS.by_name[c] for c in spec.columns])
    for method in ("first", "all", "exists"):
        expected = getattr(snap, method)(name, tuple(keys))
        model = _model(snap, spec, keys)  # the definition, by brute force
        assert expected == {"first": model[0] if model else None, "all": model,
                            "exists": bool(model)}[method]
        if read is None:  # only a constant that can match nothing is left to the generic path
            assert expected in (None, [], False)
            continue
        got = RESULTS[method](read(snap, *(keys[i] for i in dynamic)))
        assert got == expected, (method, spec, keys, dynamic)


def _model(snap: TablesSnapshot, spec: IndexSpec, keys: list[Any]) -> list[Any]:
    """The rows whose every column's key equals the lookup key (none: nothing), by id."""
    wanted = [lookup_key(MEMBERS.by_name[c], k) for c, k in zip(spec.columns, keys,
                                                                 strict=True)]
    if None in wanted:
        return []
    return [row for row in snap.rows("members")
            if all(column_key(MEMBERS.by_name[c], getattr(row, c)) == w
                   for c, w in zip(spec.columns, wanted, strict=True))]


@settings(max_examples=100, deadline=None)
@given(st.lists(_net, max_size=6), st.sampled_from(IPS), st.booleans())
def test_specialised_network_readers_equal_the_generic_path(
        nets: list[dict[str, Any]], ip: str, active: bool) -> None:
    spec = IndexSpec("nets", ("net", "active"), "net")
    snap = _snapshot([], nets, [spec])
    name = spec_name(spec)
    columns = [SCHEMA.tables["nets"].by_name[c] for c in spec.columns]
    key = IP.parse(ip)
    read = reader(spec, name, {1: active}, (0,), columns)
    assert read is not None
    for method in ("first", "all", "exists"):
        result = RESULTS[method]
        assert result(read(snap, key)) == getattr(snap, method)(name, (key, active))
        assert result(read(snap, "10.1.2.3")) == getattr(snap, method)(name, ("10.1.2.3",
                                                                              active))


# -- memo: skipped where the compiler proved one evaluation, kept elsewhere -----------------

def test_settle_sites_skips_the_memo_only_for_a_single_unrepeated_call() -> None:
    once, twice_a, twice_b = LookupSite(False), LookupSite(False), LookupSite(False)
    looped = LookupSite(True)
    settle_sites({"a": [once], "b": [twice_a, twice_b], "c": [looped]})
    assert (once.memo, twice_a.memo, twice_b.memo, looped.memo) == (False, True, True, True)


ROWS = {"members": [
    {"id": 1, "email": "a@x.example", "group_id": 1, "active": True, "status": "Active",
     "note": None},
    {"id": 2, "email": "b@x.example", "group_id": 2, "active": True, "status": "Suspended",
     "note": "n"}],
    "nets": [{"net": "10.0.0.0/8", "active": True}]}
POLICY = """
def member(address) = lookup("members", email = address, active = true)
def in_group(address, group) = any m in lookup_all("members", email = address):
    m.group_id == group
stage rcpt {
    rule blocked: when exists("nets", net = client.ip, active = true) reject
    rule unknown: when member(sender) == none reject
    rule suspended: when member(sender).status == "Suspended" reject
    rule grouped: when in_group(sender, 1) and in_group(sender, 2) reject
    rule looped: when any r in envelope.to: exists("members", email = r, active = true)
        accept
    default tempfail
}
"""


def _compile(text: str = POLICY) -> PolicySet:
    result = compile_sources([Source("t.policy", text)], schema=SCHEMA)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    return result.policy_set


class CountingMemo(dict):
    """A memo that counts its writes."""

    writes: list[Any]

    def __setitem__(self, key: Any, value: Any) -> None:
        self.writes.append(key[0])
        super().__setitem__(key, value)


class CountingContext(EvalContext):
    last: ClassVar[CountingContext | None] = None

    def __post_init__(self) -> None:
        memo = CountingMemo()
        memo.writes = []
        self.memo = memo
        CountingContext.last = self


def test_memo_is_written_only_for_calls_that_may_repeat(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setattr(runtime, "EvalContext", CountingContext)
    policy = _compile()
    directory = InMemoryDirectory(tables=ROWS)
    directory.require(SCHEMA, policy.needs)
    decision = decide_for(policy, directory, sender="a@x.example",
                          to=["a@x.example", "b@x.example"])
    assert decision.action == "accept" and decision.rule and decision.rule.name == "looped"
    ctx = CountingContext.last
    assert ctx is not None
    writes = ctx.memo.writes  # type: ignore[attr-defined]
    # `nets` is read by one call, once: no memo; `member()` is inlined twice (shared tag),
    # `lookup_all` twice with the same key, the quantifier body per recipient: memoised
    assert not any(w.startswith("exists(nets") for w in writes)
    assert sum(w.startswith("lookup(members") for w in writes) == 1
    assert sum(w.startswith("lookup_all(members") for w in writes) == 1
    assert sum(w.startswith("exists(members") for w in writes) == 1  # a@ matched first
    functions = [r.function for r in decision.lookups]
    assert functions == ["exists(nets: net, active)", "lookup(members: active, email)",
                         "lookup_all(members: email)", "exists(members: active, email)"]


def decide_for(policy: PolicySet, directory: Any, *, trace: bool = False, **fields: Any
               ) -> Any:
    return runtime.decide(policy, request("rcpt", **fields), directory, trace=trace)


# -- the fast path is the one taken ----------------------------------------------------------

def test_local_snapshot_is_read_in_place_and_timed_decisions_take_the_generic_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    policy = _compile()
    directory = InMemoryDirectory(tables=ROWS)
    directory.require(SCHEMA, policy.needs)
    expected = decide_for(policy, directory, sender="b@x.example", to=["c@x.example"])
    assert expected.action == "reject" and expected.rule.name == "suspended"

    def refuse(*args: Any) -> Any:
        raise AssertionError("generic read")
    for method in ("first", "all", "exists"):
        monkeypatch.setattr(TablesSnapshot, method, refuse)
    fast = decide_for(policy, directory, sender="b@x.example", to=["c@x.example"])
    assert fast == expected  # no generic read happened
    traced = decide_for(policy, directory, trace=True, sender="b@x.example",
                        to=["c@x.example"])
    assert traced.fallback and "generic read" in (traced.cause or "")


def test_a_decision_reads_the_snapshot_it_started_with(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """A change published while a decision runs (here: as its context is created) is not
    seen by that decision's in-place reads, and is seen by the next decision."""
    policy = _compile()
    directory = InMemoryDirectory(tables=ROWS)
    directory.require(SCHEMA, policy.needs)
    published: list[bool] = []

    class PublishingContext(EvalContext):
        def __post_init__(self) -> None:
            if not published:
                published.append(True)
                directory.apply({"nets": ([], [{"net": "192.0.2.0/24", "active": True}])})

    monkeypatch.setattr(runtime, "EvalContext", PublishingContext)
    first = decide_for(policy, directory, sender="a@x.example", to=["a@x.example"])
    assert first.rule is not None and first.rule.name == "looped"  # the old snapshot
    second = decide_for(policy, directory, sender="a@x.example", to=["a@x.example"])
    assert second.rule is not None and second.rule.name == "blocked"


# -- end to end: compiled fast path == generic path ------------------------------------------

class GenericTables:
    """The snapshot's tables behind a stand-in: every lookup takes the generic path."""

    def __init__(self, inner: TablesSnapshot) -> None:
        self.inner = inner

    def first(self, spec: Any, keys: Any) -> Any:
        return self.inner.first(spec, keys)

    def all(self, spec: Any, keys: Any) -> Any:
        return self.inner.all(spec, keys)

    def exists(self, spec: Any, keys: Any) -> Any:
        return self.inner.exists(spec, keys)


class GenericDirectory:
    blocking = False

    def __init__(self, inner: InMemoryDirectory) -> None:
        self.tables = GenericTables(inner.snapshot().tables)

    def snapshot(self) -> GenericDirectory:
        return self


SHAPES = _compile("""
def member(address) = lookup("members", email = address, active = true)
stage rcpt {
    rule nets: when lookup_all("nets", net = client.ip, active = false) == []
            and lookup("nets", net = client.ip, active = true) == none
            and sender == "never@x.example"
        reject 550 5.7.1 "never"
    rule net: when exists("nets", net = client.ip, active = true) reject 550 5.7.1 "net"
    rule unknown: when member(sender) == none and lookup_all("members", email = rcpt) == []
        reject 550 5.7.1 "unknown"
    rule pair: when exists("members", group_id = member(sender).group_id,
                           email = rcpt, active = true)
        reject 550 5.7.1 "pair {member(sender).id}"
    rule status: when lookup("members", status = "Suspended", email = sender) != none
        reject 550 5.7.1 "suspended"
    rule noted: when lookup("members", note = lookup("members", email = rcpt).note) != none
        reject 550 5.7.1 "noted"
    rule grouped_by_id: when exists("members", group_id = member(rcpt).group_id, active = false)
            or len(lookup_all("members", group_id = member(sender).group_id)) > 2
        reject 550 5.7.1 "grouped by id"
    rule grouped: when any m in lookup_all("members", email = sender):
            exists("members", group_id = m.group_id, email = rcpt)
        reject 550 5.7.1 "grouped"
    default accept
}
""")


@settings(max_examples=120, deadline=None)
@given(st.lists(_member, max_size=8), st.lists(_net, max_size=4),
       st.sampled_from([*ADDRESSES, "nobody@x.example"]), st.sampled_from(ADDRESSES),
       st.sampled_from(["192.0.2.10", "10.1.2.3", "10.9.9.9", "2001:db8::1",
                        "2001:db8::7"]))
def test_compiled_lookups_decide_and_record_as_the_generic_path(
        members: list[dict[str, Any]], nets: list[dict[str, Any]], sender: str, rcpt: str,
        ip: str) -> None:
    rows = {"members": [{"id": i, **m} for i, m in enumerate(members, start=1)],
            "nets": nets}
    directory = InMemoryDirectory(tables=rows)
    directory.require(SCHEMA, SHAPES.needs)
    fields = {"sender": sender, "to": [rcpt], "ip": ip}
    fast = decide_for(SHAPES, directory, **fields)
    generic = decide_for(SHAPES, GenericDirectory(directory), **fields)
    assert not fast.fallback and not generic.fallback, (fast.cause, generic.cause)
    assert (fast.action, fast.reply, fast.rule) == (generic.action, generic.reply,
                                                    generic.rule)
    assert [(r.function, r.args, r.result) for r in fast.lookups] == [
        (r.function, r.args, r.result) for r in generic.lookups]
