"""Partial indexes: a lookup's literal keys (`active = true`) folded into the index it
reads (`IndexSpec.where`, `tablecheck.partial_index`).

A partial index holds the rows whose folded columns have those keys, keyed by the other
columns; it must answer every lookup exactly as the full index over all the call's
columns does (and as the definition, by brute force), after any changes, and a policy
whose keys are folded must decide exactly as the same policy with those keys given as
`let` constants (which are not folded), records included."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from komm_policy.directory.keys import column_key, lookup_key
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.directory.snapshot import IndexSpec, Needs, TablesSnapshot, spec_name
from komm_policy.policyset import PolicySet, Source, compile_sources
from komm_policy.runtime import decide

from .test_codegen import without_generated
from .test_runtime import request
from .test_table_readers import ADDRESSES, MEMBERS, SCHEMA, _key_values, _member

COLUMNS = ("active", "email", "group_id", "status")


def _model(rows: list[Any], columns: tuple[str, ...], keys: tuple[Any, ...]) -> list[Any]:
    """The rows whose every column's key equals the lookup key, by id (none: nothing)."""
    wanted = [lookup_key(MEMBERS.by_name[c], k) for c, k in zip(columns, keys, strict=True)]
    if None in wanted:
        return []
    return [row for row in rows
            if all(column_key(MEMBERS.by_name[c], getattr(row, c)) == w
                   for c, w in zip(columns, wanted, strict=True))]


@settings(max_examples=150, deadline=None)
@given(st.lists(_member, max_size=10), st.lists(_member, max_size=4),
       st.lists(st.integers(1, 10), max_size=4), st.data())
def test_a_partial_index_answers_as_the_full_index(
        members: list[dict[str, Any]], inserted: list[dict[str, Any]],
        deleted: list[int], data: Any) -> None:
    columns = tuple(sorted(data.draw(st.lists(st.sampled_from(COLUMNS), min_size=2,
                                              max_size=3, unique=True))))
    folded = data.draw(st.sampled_from(columns))
    value = data.draw(st.sampled_from([v for v in [True, False, 1, 2, "Active",
                                                   "Suspended", *ADDRESSES]
                                       if lookup_key(MEMBERS.by_name[folded], v)
                                       is not None]))
    rest = tuple(c for c in columns if c != folded)
    full = IndexSpec("members", columns)
    partial = IndexSpec("members", rest, "eq",
                        ((folded, lookup_key(MEMBERS.by_name[folded], value)),))
    rows = [{"id": i, **m} for i, m in enumerate(members, start=1)]
    snap = TablesSnapshot.build(SCHEMA, Needs({full, partial}), {"members": rows})
    changed = snap.apply({"members": ([{"id": i} for i in deleted],
                                      [{"id": 20 + i, **m} for i, m in enumerate(inserted)])})
    rebuilt = TablesSnapshot.build(SCHEMA, Needs({full, partial}),
                                   {"members": [{"id": r.id, **{c: getattr(r, c) for c in (
                                       "email", "group_id", "active", "status", "note")}}
                                       for r in changed.rows("members")]})
    for _ in range(4):
        keys = {c: data.draw(_key_values[c]) for c in rest}
        full_key = tuple(value if c == folded else keys[c] for c in columns)
        partial_key = tuple(keys[c] for c in rest)
        for tables in (snap, changed, rebuilt):
            model = _model(tables.rows("members"), columns, full_key)
            for method in ("first", "all", "exists"):
                expected = {"first": model[0] if model else None, "all": model,
                            "exists": bool(model)}[method]
                assert getattr(tables, method)(full, full_key) == expected
                assert getattr(tables, method)(partial, partial_key) == expected
                assert getattr(tables, method)(spec_name(partial), partial_key) == expected


ROWS = [
    {"id": 1, "email": "a@x.example", "group_id": 1, "active": True, "status": "Active",
     "note": None},
    {"id": 2, "email": "A@X.example", "group_id": 2, "active": False, "status": "Suspended",
     "note": "n"},
    {"id": 3, "email": "b@bücher.example", "group_id": 1, "active": True,
     "status": "Suspended", "note": None},
    {"id": 4, "email": "c@y.example", "group_id": 3, "active": False, "status": "Active",
     "note": None},
]

FOLDED = """
stage rcpt {
    rule inactive: when exists("members", email = sender, active = false) reject
    rule suspended:
        when lookup("members", email = sender, status = "Suspended", active = true) != none
        reject
    rule grouped:
        when any m in lookup_all("members", email = rcpt, active = true):
            exists("members", group_id = m.group_id, status = "Active")
        accept
    rule third: when lookup("members", email = sender, group_id = 3) == none
        reject 550 5.7.1 "unknown"
    default tempfail
}
"""
LETS = """
let no = false
let yes = true
let suspended = "Suspended"
let active = "Active"
let three = 3
""" + FOLDED.replace("active = false", "active = no").replace(
    'status = "Suspended", active = true', "status = suspended, active = yes").replace(
    "rcpt, active = true", "rcpt, active = yes").replace(
    'status = "Active"', "status = active").replace("group_id = 3", "group_id = three")


def _compile(text: str) -> PolicySet:
    result = compile_sources([Source("t.policy", text)], schema=SCHEMA)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    return result.policy_set


def test_literal_keys_are_folded_and_let_keys_are_not() -> None:
    folded, lets = _compile(FOLDED), _compile(LETS)
    assert LETS.count("active = yes") == 2 and "three" in LETS
    assert all(spec.where for spec in folded.needs.indexes)
    assert {spec.columns for spec in folded.needs.indexes} == {("email",), ("group_id",)}
    assert not any(spec.where for spec in lets.needs.indexes)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([r["email"] for r in ROWS]
                       + ["nobody@x.example", "B@XN--BCHER-KVA.example"]),
       st.sampled_from([r["email"] for r in ROWS] + ["nobody@x.example"]))
def test_a_folded_policy_decides_as_the_unfolded_one(sender: str, rcpt: str) -> None:
    folded, lets = _compile(FOLDED), _compile(LETS)
    directory = InMemoryDirectory(tables={"members": ROWS})
    directory.require(SCHEMA, Needs(folded.needs.indexes | lets.needs.indexes))
    req = request("rcpt", sender=sender, to=[rcpt])
    decisions = [decide(p, req, directory) for p in (folded, lets, without_generated(folded))]
    first = decisions[0]
    for other in decisions[1:]:  # the same decision, and the same lookups recorded
        assert (first.action, first.rule and first.rule.name, first.reply) == (
            other.action, other.rule and other.rule.name, other.reply)
        assert [(r.function, r.args, r.result) for r in first.lookups] == [
            (r.function, r.args, r.result) for r in other.lookups]
