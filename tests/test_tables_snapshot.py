"""The table snapshot: keys per column meaning, first-row order, networks, incremental
updates equal to a full rebuild, isolation, bad rows."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from komm_policy.directory.schema import (
    BadValue,
    Column,
    column_from_sats,
    decode_value,
    dump_schema,
    parse_schema,
)
from komm_policy.directory.snapshot import IndexSpec, Needs, TablesSnapshot
from komm_policy.ipset import IP

SCHEMA = parse_schema({"tables": {
    "blocked": {"primary_key": ["ip"], "columns": {
        "ip": {"type": "network"}, "reason": {"type": "text"}}},
    "account_emails": {"primary_key": ["id"], "columns": {
        "id": {"type": "integer"}, "account_id": {"type": "integer"},
        "email": {"type": "address"}, "verified": {"type": "bool"},
        "status": {"type": "enum", "variants": ["Active", "Suspended"]},
        "note": {"type": "text", "optional": True},
        "owner": {"type": "identity", "optional": True},
        "since": {"type": "timestamp", "optional": True}}},
}})
NET = IndexSpec("blocked", ("ip",), "net")
EXACT_NET = IndexSpec("blocked", ("ip",))
EMAIL = IndexSpec("account_emails", ("email",))
EMAIL_STATUS = IndexSpec("account_emails", ("email", "status"))
ACCOUNT = IndexSpec("account_emails", ("account_id",))
OWNER = IndexSpec("account_emails", ("owner",))
NOTE = IndexSpec("account_emails", ("note",))
NEEDS = Needs({NET, EXACT_NET, EMAIL, EMAIL_STATUS, ACCOUNT, OWNER, NOTE})


def email(id_: int, address: str, account: int = 1, status: Any = "Active", **extra: Any
          ) -> dict[str, Any]:
    return {"id": id_, "account_id": account, "email": address, "verified": True,
            "status": status, "note": None, "owner": None, "since": None, **extra}


def build(rows: dict[str, list[dict[str, Any]]], bad: list | None = None) -> TablesSnapshot:
    return TablesSnapshot.build(SCHEMA, NEEDS, rows,
                                (lambda *a: bad.append(a)) if bad is not None else None)


def test_address_keys_are_case_and_idn_insensitive() -> None:
    snap = build({"account_emails": [email(2, "Anna@BÜCHER.example"),
                                      email(1, "anna@xn--bcher-kva.example", account=7)]})
    for key in ("anna@bücher.example", "ANNA@XN--BCHER-KVA.EXAMPLE", "Anna@Bücher.Example"):
        rows = snap.all(EMAIL, (key,))
        assert [r.id for r in rows] == [1, 2]  # lowest primary key first
        first = snap.first(EMAIL, (key,))
        assert first is not None and first.account_id == 7
    assert snap.first(EMAIL, ("anna@buecher.example",)) is None
    assert snap.first(EMAIL, (None,)) is None  # a none key matches nothing
    assert snap.all(EMAIL, (None,)) == []
    assert not snap.exists(EMAIL, (None,))


def test_enum_columns_and_sats_tags() -> None:
    snap = build({"account_emails": [email(1, "a@x.example", status=1),
                                      email(2, "a@x.example", status="Active")]})
    row = snap.first(EMAIL_STATUS, ("a@x.example", "Suspended"))
    assert row is not None and row.id == 1 and row.status == "Suspended"
    assert snap.first(EMAIL_STATUS, ("a@x.example", "Active")).id == 2  # type: ignore[union-attr]
    assert snap.first(EMAIL_STATUS, ("a@x.example", "Gone")) is None


def test_optional_identity_and_timestamp_columns() -> None:
    owner = "0x" + "AB" * 4
    snap = build({"account_emails": [
        email(1, "a@x.example", owner=owner, since=1_700_000_000, note="n"),
        email(2, "b@x.example")]})
    row = snap.first(OWNER, ("ab" * 4,))
    assert row is not None and row.id == 1
    assert row.owner == "0" * 56 + "ab" * 4
    assert row.since == 1_700_000_000 * 1_000_000
    assert snap.first(EMAIL, ("b@x.example",)).note is None  # type: ignore[union-attr]
    assert snap.first(NOTE, (None,)) is None  # none keys never match a NULL column
    assert snap.first(NOTE, ("n",)).id == 1  # type: ignore[union-attr]


def test_networks_most_specific_first_v4_and_v6() -> None:
    snap = build({"blocked": [
        {"ip": "10.0.0.0/8", "reason": "wide"}, {"ip": "10.1.0.0/16", "reason": "mid"},
        {"ip": "10.1.2.3", "reason": "host"}, {"ip": "2001:db8::/32", "reason": "v6 wide"},
        {"ip": "2001:db8:1::/48", "reason": "v6 mid"}, {"ip": "::ffff:192.0.2.0/120",
                                                       "reason": "mapped"}]})
    assert [r.reason for r in snap.all(NET, (IP.parse("10.1.2.3"),))] == [
        "host", "mid", "wide"]
    assert snap.first(NET, (IP.parse("10.9.9.9"),)).reason == "wide"  # type: ignore[union-attr]
    assert snap.first(NET, (IP.parse("11.0.0.1"),)) is None
    assert [r.reason for r in snap.all(NET, (IP.parse("2001:db8:1::5"),))] == [
        "v6 mid", "v6 wide"]
    assert snap.first(NET, (IP.parse("192.0.2.9"),)).reason == "mapped"  # type: ignore[union-attr]
    assert snap.first(NET, (IP.parse("::ffff:10.1.2.3"),)).reason == "host"  # type: ignore[union-attr]
    assert snap.first(NET, (None,)) is None
    exact = snap.first(EXACT_NET, (ipaddress.ip_network("10.1.0.0/16"),))
    assert exact is not None and exact.reason == "mid"


def test_bad_rows_are_skipped_and_reported() -> None:
    bad: list[tuple[str, str, str]] = []
    snap = build({"blocked": [{"ip": "300.1.2.3", "reason": "x"},
                              {"ip": "10.0.0.1/8", "reason": "host bits"},
                              {"ip": None, "reason": "null"},
                              {"ip": "192.0.2.1", "reason": "fine"}],
                  "account_emails": [email(1, "a@x.example", status="Nope")]}, bad)
    assert snap.counts() == {"blocked": 1, "account_emails": 0}
    reasons = {(t, k): reason for t, k, reason in bad}
    assert sorted(reasons) == sorted([
        ("blocked", "ip='300.1.2.3'"), ("blocked", "ip='10.0.0.1/8'"),
        ("blocked", "ip=None"), ("account_emails", "id=1")])
    assert len(bad) == 4
    assert "host bits set" in reasons[("blocked", "ip='10.0.0.1/8'")]
    assert "not optional" in reasons[("blocked", "ip=None")]
    assert "Active, Suspended" in reasons[("account_emails", "id=1")]


def test_an_update_never_changes_a_published_snapshot() -> None:
    before = build({"blocked": [{"ip": "192.0.2.0/24", "reason": "old"}]})
    after = before.apply({"blocked": ([{"ip": "192.0.2.0/24"}],
                                      [{"ip": "198.51.100.0/24", "reason": "new"}])})
    ip = IP.parse("192.0.2.1")
    assert before.first(NET, (ip,)).reason == "old"  # type: ignore[union-attr]
    assert after.first(NET, (ip,)) is None
    assert after.first(NET, (IP.parse("198.51.100.7"),)).reason == "new"  # type: ignore[union-attr]
    assert before.first(NET, (IP.parse("198.51.100.7"),)) is None


def test_schema_file_round_trip_and_sats_mapping() -> None:
    assert parse_schema(__import__("tomllib").loads(dump_schema(SCHEMA))) == SCHEMA
    option = {"Sum": {"variants": [
        {"name": {"some": "some"}, "algebraic_type": {"U64": []}},
        {"name": {"some": "none"}, "algebraic_type": {"Product": {"elements": []}}}]}}
    assert column_from_sats("n", option) == Column("n", "integer", True, storage="Option<U64>")
    status = {"Sum": {"variants": [
        {"name": {"some": n}, "algebraic_type": {"Product": {"elements": []}}}
        for n in ("ManuallySubscribed", "LinkUnsubscribed")]}}
    assert column_from_sats("s", status).variants == ("ManuallySubscribed", "LinkUnsubscribed")
    identity = {"Product": {"elements": [{"name": {"some": "__identity__"},
                                          "algebraic_type": {"U256": []}}]}}
    assert column_from_sats("i", identity).type == "identity"
    stamp = {"Product": {"elements": [{"name": {"some": "__timestamp_micros_since_unix_epoch__"},
                                       "algebraic_type": {"I64": []}}]}}
    assert column_from_sats("t", stamp).type == "timestamp"
    vec = {"Array": {"String": []}}
    assert column_from_sats("v", vec) == Column("v", "list", element="text",
                                                storage="Vec<String>")
    assert column_from_sats("b", {"Bool": []}).type == "bool"
    assert column_from_sats("w", {"U256": []}).type == "integer"
    assert decode_value(Column("w", "integer"), str(2**256 - 1)) == 2**256 - 1


def test_decode_refusals() -> None:
    for column, value in ((Column("b", "bool"), 2), (Column("i", "integer"), "x"),
                          (Column("i", "integer"), True), (Column("t", "text"), 3),
                          (Column("a", "address"), "a b@x"), (Column("n", "network"), "x"),
                          (Column("d", "identity"), "zz")):
        try:
            decode_value(column, value)
        except BadValue:
            continue
        raise AssertionError(f"{column.type} accepted {value!r}")


# -- incremental == full rebuild ---------------------------------------------------------

_addresses = st.sampled_from(["a@x.example", "A@X.example", "b@bücher.example",
                              "b@xn--bcher-kva.example", "c@y.example", "bad address"])
_nets = st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "2001:db8::/32",
                         "2001:db8::1", "300.1.2.3", "10.0.0.1/8"])
_ops = st.lists(st.one_of(
    st.tuples(st.just("email"), st.integers(1, 6), _addresses, st.integers(1, 3),
              st.sampled_from(["Active", "Suspended", 0, 1, "Gone"])),
    st.tuples(st.just("del_email"), st.integers(1, 6)),
    st.tuples(st.just("net"), _nets, st.text(max_size=3)),
    st.tuples(st.just("del_net"), _nets)), max_size=25)


def _full_state(ops: list[tuple[Any, ...]]) -> dict[str, dict[Any, dict[str, Any]]]:
    emails: dict[Any, dict[str, Any]] = {}
    nets: dict[Any, dict[str, Any]] = {}
    for op in ops:
        if op[0] == "email":
            emails[op[1]] = email(op[1], op[2], account=op[3], status=op[4])
        elif op[0] == "del_email":
            emails.pop(op[1], None)
        elif op[0] == "net":
            nets[op[1]] = {"ip": op[1], "reason": op[2]}
        else:
            nets.pop(op[1], None)
    return {"account_emails": emails, "blocked": nets}


def _view(snap: TablesSnapshot) -> tuple[Any, ...]:
    keys = ["a@x.example", "b@bücher.example", "c@y.example", "bad address", None]
    ips = [IP.parse(x) for x in ("10.1.2.3", "10.9.9.9", "2001:db8::1", "2001:db8:5::1")]
    return (
        snap.counts(),
        tuple(tuple(r.values() for r in snap.all(EMAIL, (k,))) for k in keys),
        tuple(tuple(r.values() for r in snap.all(ACCOUNT, (a,))) for a in (1, 2, 3)),
        tuple(tuple(r.values() for r in snap.all(EMAIL_STATUS, (k, s)))
              for k in keys for s in ("Active", "Suspended")),
        tuple(tuple(r.values() for r in snap.all(NET, (ip,))) for ip in ips),
        tuple(snap.rows("blocked")), tuple(snap.rows("account_emails")),
    )


@settings(max_examples=150, deadline=None)
@given(_ops, st.integers(0, 25))
def test_incremental_updates_equal_a_full_rebuild(ops: list[tuple[Any, ...]],
                                                  split: int) -> None:
    """Apply the operations one change set at a time onto a snapshot of a prefix; the
    result equals building the final rows from scratch."""
    start = _full_state(ops[:split])
    snap = build({name: list(rows.values()) for name, rows in start.items()})
    state = start
    for index in range(split, len(ops)):
        after = _full_state(ops[:index + 1])
        changes = {}
        for name in ("account_emails", "blocked"):
            old, new = state[name], after[name]
            deleted = [old[k] for k in old if k not in new or new[k] != old[k]]
            inserted = [new[k] for k in new if k not in old or old[k] != new[k]]
            changes[name] = (deleted, inserted)
        snap = snap.apply(changes)
        state = after
    full = build({name: list(rows.values()) for name, rows in state.items()})
    assert _view(snap) == _view(full)
