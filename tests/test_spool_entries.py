"""Spool entries (decisionlog/entries.py): the compact entry the answer path packs gives,
in the writer, exactly the record built from the request and decision objects; an entry
of the first format (an older spool) still gives its record."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from komm_policy.decision import Decision, DryRunHit, LookupRecord, Reply, RuleRef
from komm_policy.decisionlog.entries import (
    ENTRY_FIELDS,
    ENTRY_FORMAT,
    EntryPacker,
    first_format_entry,
    line_from_raw,
    raw_entry,
    record_from_raw,
)
from komm_policy.decisionlog.records import (
    QUARANTINE_HEADER,
    RecordIds,
    Timestamps,
    encode_record,
    make_record,
)
from komm_policy.directory.rows import row_class
from komm_policy.directory.schema import Column, Table
from komm_policy.ipset import IP
from komm_policy.wire import (
    AddHeader,
    AddRecipient,
    Address,
    ChangeFrom,
    ChangeHeader,
    Client,
    Context,
    DeleteHeader,
    DeleteRecipient,
    Envelope,
    InsertHeader,
    Queue,
    ReplaceContents,
    Request,
    Sasl,
    Server,
    Tls,
)

from .test_decisionlog import decided

_PEOPLE = row_class(Table("people", (Column("id", "integer"), Column("email", "address"),
                                     Column("net", "network")), ("id",)))
_PAIRS = row_class(Table("pairs", (Column("a", "integer"), Column("b", "text"),
                                   Column("c", "bool")), ("a", "b")))
_NO_KEY = row_class(Table("loose", (Column("x", "text"),), ()))

text = st.text(max_size=12)
maybe_text = st.none() | text
ips = st.sampled_from(["198.51.100.23", "::ffff:192.0.2.1", "2001:DB8::1", "not an ip",
                       "10.0.0.1"])
ports = st.integers(0, 65535)


def _row(draw: st.DrawFn) -> object:
    kind = draw(st.sampled_from(["people", "pairs", "loose"]))
    if kind == "people":
        return _PEOPLE(draw(st.integers(-5, 10**12)), draw(text),
                       ipaddress.ip_network(draw(st.sampled_from(
                           ["192.0.2.0/24", "2001:db8::/32"]))))
    if kind == "pairs":
        return _PAIRS(draw(st.integers(0, 9)), draw(text), draw(st.booleans()))
    return _NO_KEY(draw(text))


@st.composite
def values(draw: st.DrawFn) -> object:
    """What a lookup's arguments and results hold: scalars, IPs, networks, rows, lists."""
    kind = draw(st.sampled_from(["scalar", "ip", "network", "row", "rows", "none"]))
    if kind == "scalar":
        return draw(st.booleans() | st.integers(-2**63, 2**63 - 1) | text
                    | st.floats(allow_nan=False, allow_infinity=False))
    if kind == "ip":
        return IP.parse(draw(st.sampled_from(["192.0.2.7", "2001:db8::7"])))
    if kind == "network":
        return ipaddress.ip_network(draw(st.sampled_from(["192.0.2.0/24", "2001:db8::/48"])))
    if kind == "row":
        return _row(draw)
    if kind == "rows":
        return [_row(draw) for _ in range(draw(st.integers(0, 3)))]
    return None


lookups = st.builds(LookupRecord, text, st.lists(values(), max_size=3).map(tuple), values(),
                    maybe_text, st.none() | st.floats(0, 1e6, allow_nan=False))
rules = st.builds(RuleRef, text, text, st.integers(1, 10**6), st.integers(1, 500))
replies = st.builds(Reply, st.integers(200, 599), maybe_text, text)
modifications = st.one_of(
    st.builds(AddHeader, st.sampled_from([QUARANTINE_HEADER, "X-Spam"]), text),
    st.builds(InsertHeader, st.integers(0, 9), text, text),
    st.builds(ChangeHeader, st.integers(0, 9), text, text),
    st.builds(DeleteHeader, st.integers(0, 9), text),
    st.builds(ChangeFrom, text, st.none() | st.dictionaries(text, maybe_text, max_size=2)),
    st.builds(AddRecipient, text),
    st.builds(DeleteRecipient, text),
    st.builds(ReplaceContents, text),
)
decisions = st.builds(
    Decision,
    stage=st.sampled_from(["connect", "ehlo", "mail", "rcpt", "data"]),
    action=st.sampled_from(["accept", "reject", "tempfail", "discard", "quarantine"]),
    reply=st.none() | replies,
    modifications=st.lists(modifications, max_size=3).map(tuple),
    rule=st.none() | rules,
    dry_run=st.lists(st.builds(DryRunHit, rules, st.sampled_from(["reject", "accept"]),
                               st.none() | replies), max_size=2).map(tuple),
    lookups=st.lists(lookups, max_size=4).map(tuple),
    logs=st.lists(text, max_size=2).map(tuple),
    errors=st.lists(text, max_size=2).map(tuple),
    fallback=st.booleans(),
    cause=maybe_text,
    policy_version=text,
)
requests = st.builds(
    Request,
    context=st.builds(
        Context,
        stage=st.sampled_from(["connect", "ehlo", "auth", "mail", "rcpt", "data"]),
        client=st.builds(Client, ip=ips, port=ports, ptr=maybe_text, helo=maybe_text),
        sasl=st.none() | st.builds(Sasl, text, maybe_text),
        tls=st.none() | st.builds(Tls, text, text),
        server=st.builds(Server, text, ports, st.none() | ips),
        queue=st.none() | st.builds(Queue, text),
    ),
    envelope=st.none() | st.builds(
        Envelope, st.builds(Address, text),
        st.lists(st.builds(Address, text), max_size=3).map(tuple)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, decisions, st.floats(0, 1e5, allow_nan=False),
       st.floats(1e9, 4e9, allow_nan=False), st.booleans(), st.booleans(),
       st.none() | st.integers(0, 2**40))
def test_a_compact_entry_gives_exactly_the_record_of_its_request_and_decision(
        request: Request, decision: Decision, duration_ms: float, at: float, shadow: bool,
        redact: bool, number: int | None) -> None:
    """Byte for byte the JSON line `make_record` gives for the same request and decision
    (the record's schema and version are unchanged), and the same from an entry of the
    first format."""
    stamp = Timestamps()(at)
    record_id = "0123456789abcdef" if number is not None else "a-test-id"
    expected_id = f"{record_id}-{number:010x}" if number is not None else record_id
    expected = encode_record(make_record(request, decision, duration_ms, shadow=shadow,
                                         redact_client_ip=redact, record_id=expected_id,
                                         at=stamp))
    entry = raw_entry(request, decision, duration_ms, at, record_id, number, shadow=shadow,
                      redact_client_ip=redact)
    record, answered_at = record_from_raw(entry, Timestamps())
    assert answered_at == at
    assert encode_record(record) == expected
    old = first_format_entry(request, decision, duration_ms, at, expected_id,
                             shadow=shadow, redact_client_ip=redact)
    assert line_from_raw(old, Timestamps()) == expected


_SHARED = EntryPacker(max_rows=5)
"""One packer for every example below: rows remembered from earlier examples (and its
memory starting over every 5 rows) must not change an entry."""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests, decisions, st.floats(0, 1e5, allow_nan=False),
       st.floats(1e9, 4e9, allow_nan=False), st.booleans(), st.booleans(),
       st.none() | st.integers(0, 2**40), st.integers(1, 3))
def test_a_packer_remembering_rows_packs_the_same_bytes_and_records(
        request: Request, decision: Decision, duration_ms: float, at: float, shadow: bool,
        redact: bool, number: int | None, times: int) -> None:
    """The answer path's packer (rows remembered across decisions) gives byte for byte
    the entry a fresh packer gives, every time the same decision is packed again, and
    its record is `make_record`'s."""
    record_id = "0123456789abcdef"
    expected_id = f"{record_id}-{number:010x}" if number is not None else record_id
    expected = encode_record(make_record(request, decision, duration_ms, shadow=shadow,
                                         redact_client_ip=redact, record_id=expected_id,
                                         at=Timestamps()(at)))
    fresh = raw_entry(request, decision, duration_ms, at, record_id, number, shadow=shadow,
                      redact_client_ip=redact)
    for _ in range(times):
        entry = _SHARED.pack(request, decision, duration_ms, at, record_id, number,
                             shadow=shadow, redact_client_ip=redact)
        assert entry == fresh
        assert line_from_raw(entry, Timestamps()) == expected


def test_a_remembered_row_never_stands_for_another() -> None:
    """Rows of the same class with other keys, and a new row object once the first is
    gone (its id may be reused), are each logged by their own identity; the memory
    stays within its bound."""
    packer = EntryPacker(max_rows=4)
    request, decision = decided("derived-rcpt-1")
    seen = []
    for n in range(20):
        row = _PAIRS(n, f"b{n}", n % 2 == 0)
        lookup = LookupRecord("lookup(pairs: a)", (n,), [row, _PEOPLE(
            n, "x@example.org", ipaddress.ip_network("192.0.2.0/24"))])
        changed = msgspec.structs.replace(decision, lookups=(lookup,))
        entry = packer.pack(request, changed, 0.1, time.time(), "id", n)
        result = json.loads(line_from_raw(entry, Timestamps()))["lookups"][0]["result"]
        seen.append(result)
        assert len(packer._rows) <= 4
        del row, lookup, changed  # the next row may take this one's address
    assert seen == [[{"a": n, "b": f"b{n}"}, {"id": n}] for n in range(20)]


def test_the_compact_entry_is_smaller_and_positional() -> None:
    """The shipped RCPT decision: no request or decision field names in the entry (the
    lookups, rule and reply keep theirs), well under the first
    format's size; its elements are `ENTRY_FIELDS`, in order."""
    request, decision = decided("derived-rcpt-1")
    ids = RecordIds()
    entry = raw_entry(request, decision, 0.25, time.time(), ids.prefix, next(ids.numbers))
    old = first_format_entry(request, decision, 0.25, time.time(), ids())
    assert entry[:1] == b"\xdc" and old[:1] == b"\x98"
    assert len(entry) < 0.75 * len(old)
    for name in ("policy_version", "client", "lookups", "address", "helo", "action"):
        key = msgspec.msgpack.encode(name)  # as a map key would be written
        assert key in old and key not in entry
    fields = msgspec.msgpack.decode(entry)
    assert len(fields) == len(ENTRY_FIELDS)
    named = dict(zip(ENTRY_FIELDS, fields, strict=True))
    assert named["format"] == ENTRY_FORMAT
    assert named["client_ip"] == request.context.client.ip
    assert named["recipients"] == [a.address for a in request.envelope.to]
    assert named["id_number"] == 1
    data = json.loads(line_from_raw(entry, Timestamps()))
    assert data["id"] == f"{ids.prefix}-{1:010x}"
    assert data["lookups"] and data["rule"]["name"]


@pytest.mark.parametrize("entry", [b"", b"\x01", b"\xdc\x00\x01\x02",
                                   b"\x98" + b"\x00" * 8, b"{}"])
def test_an_entry_of_no_known_format_is_an_error(entry: bytes) -> None:
    with pytest.raises((ValueError, msgspec.DecodeError)):
        record_from_raw(entry, Timestamps())


def test_an_entry_of_an_unknown_format_number_is_an_error() -> None:
    request, decision = decided("derived-rcpt-1")
    entry = raw_entry(request, decision, 0.25, time.time(), "x")
    fields = msgspec.msgpack.decode(entry)
    fields[0] = ENTRY_FORMAT + 1
    with pytest.raises(ValueError, match="format"):
        record_from_raw(msgspec.msgpack.encode(fields), Timestamps())


def test_a_spool_with_entries_of_both_formats_is_delivered_whole(tmp_path: Path) -> None:
    """An upgrade without a clean stop: the spool holds first-format entries (written by
    the version before), then compact ones; the writer delivers every record, in order,
    with nothing counted undecodable."""
    from komm_policy.decisionlog.spool import SpoolAppender
    from komm_policy.decisionlog.writer import SpoolWriter

    from .test_spool import FakeSink

    request, decision = decided("derived-rcpt-1")
    ids = RecordIds()
    older = [first_format_entry(request, decision, 0.1, time.time(), ids()) for _ in range(5)]
    newer = [raw_entry(request, decision, 0.1, time.time(), ids.prefix, next(ids.numbers))
             for _ in range(5)]
    appender = SpoolAppender(tmp_path, fsync_interval=0)
    appender.append_batch(older)
    appender.append_batch(newer)
    appender.close()
    sink = FakeSink()
    writer = SpoolWriter(tmp_path, [sink])
    while writer.step():
        pass
    assert writer.undecodable == 0
    assert sink.ids == [f"{ids.prefix}-{n:010x}" for n in range(1, 11)]
    lines = [json.loads(r.line) for r in sink.records]
    assert {line["action"] for line in lines} == {decision.action}
    assert lines[0]["lookups"] == lines[-1]["lookups"]
