"""Decision records (decisionlog/records.py) and their sinks (sinks.py, mta_log.py).

Records are built from the captured Stalwart payloads decided by the shipped policies on
the demo directory.  The spool and writer are tested in test_spool.py, the service's side
with the writer process in test_decisionlog_process.py.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from komm_policy.decision import Decision, Reply
from komm_policy.decisionlog import (
    RECORD_VERSION,
    JsonlSink,
    JsonlSpec,
    RecordIds,
    SpooledRecord,
    SqliteSink,
    Timestamps,
    decode_record,
    encode_record,
    make_record,
)
from komm_policy.demo import DEMO_TABLES
from komm_policy.directory import DirectoryError
from komm_policy.directory.sqlite import create_database
from komm_policy.directory.sqlite_tables import user_tables
from komm_policy.policyset import PolicySet, load_policy_set
from komm_policy.runtime import decide
from komm_policy.wire import Request, decode_request

from .conftest import POLICIES, ROOT
from .shipped import compile_with_directory
from .shipped import directory as demo_directory

FIXTURES = ROOT / "tests" / "fixtures" / "stalwart"
ISO_UTC = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\Z")


@functools.cache
def policy_set() -> PolicySet:
    return load_policy_set(POLICIES)


DEMO = demo_directory()


class DownDirectory:
    """Every lookup fails, as a store that cannot be read does."""

    blocking = False

    def snapshot(self) -> DownDirectory:
        return self

    @property
    def tables(self) -> None:
        raise DirectoryError("store down")


def fixture_request(name: str) -> Request:
    return decode_request((FIXTURES / f"{name}.json").read_bytes())


def decided(name: str, directory: object = DEMO) -> tuple[Request, Decision]:
    request = fixture_request(name)
    return request, decide(policy_set(), request, directory)  # type: ignore[arg-type]


def record_line(name: str, number: int = 0, **kwargs: object) -> bytes:
    request, decision = decided(name)
    return encode_record(make_record(request, decision, 0.5, record_id=f"{name}-{number}",
                                     at="2026-08-20T14:03:09.000001+00:00",
                                     **kwargs))  # type: ignore[arg-type]


_SEQ = itertools.count()


def spooled(*lines: bytes) -> list[SpooledRecord]:
    """Lines as the writer hands them to a sink (ids from the line, else made up)."""
    out = []
    for line in lines:
        try:
            data = json.loads(line)
        except ValueError:
            data = {}
        record_id = data.get("id") or f"anon-{next(_SEQ)}"
        out.append(SpooledRecord(next(_SEQ), record_id, 0.0, data.get("time", ""), line))
    return out


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSink:
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.lines: list[bytes] = []
        self.failing = False
        self.calls = 0
        self.closed = False

    def write(self, lines: list[bytes]) -> None:
        self.calls += 1
        if self.failing:
            raise OSError("disk full")
        self.lines.extend(lines)

    def close(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------------------
# Records


def test_record_fields_for_a_reject() -> None:
    request, decision = decided("derived-rcpt-2")
    record = make_record(request, decision, 1.23456, record_id="r-1",
                         at="2026-08-20T14:03:09.000001+00:00")
    assert record.id == "r-1"
    assert record.time == "2026-08-20T14:03:09.000001+00:00"
    assert record.stage == "rcpt"
    assert record.client_ip == request.context.client.ip
    assert record.sender == request.envelope.from_.address  # type: ignore[union-attr]
    assert record.recipients == tuple(a.address for a in request.envelope.to)  # type: ignore[union-attr]
    assert record.queue_id is None
    assert record.action == "reject"
    assert record.duration_ms == 1.235
    assert record.policy_version == policy_set().version
    assert record.reply == Reply(550, "5.7.1", "You are not allowed to post to this list")
    assert record.rule is not None and record.rule.name == "not_allowed_to_post"
    assert record.rule.file.endswith("20-envelope.policy")
    assert record.answered is None
    assert record.fallback is False
    assert record.cause is None
    assert record.lookups == decision.lookups and record.lookups
    assert record.errors == () and record.logs == () and record.dry_run == ()


def test_record_json_form() -> None:
    request, decision = decided("derived-rcpt-2")
    data = json.loads(encode_record(make_record(request, decision, 2.0, record_id="x")))
    assert data["id"] == "x"
    assert data["reply"] == {"status": 550, "enhanced": "5.7.1",
                             "message": "You are not allowed to post to this list"}
    assert data["rule"]["name"] == "not_allowed_to_post"
    assert [lookup["function"] for lookup in data["lookups"]] == [
        lookup.function for lookup in decision.lookups]
    # defaults are left out; the always-present fields are there even when null
    for absent in ("answered", "fallback", "cause", "dry_run", "logs", "errors"):
        assert absent not in data
    assert data["queue_id"] is None
    assert ISO_UTC.match(data["time"])


def test_record_default_id_and_time() -> None:
    request, decision = decided("derived-connect-1")
    before = datetime.now(UTC)
    first = make_record(request, decision, 0.0)
    second = make_record(request, decision, 0.0)
    assert re.fullmatch(r"[0-9a-f]{32}", first.id)
    assert first.id != second.id
    assert ISO_UTC.match(first.time)
    assert datetime.fromisoformat(first.time) >= before.replace(microsecond=0)


def test_record_at_data_has_the_queue_id() -> None:
    request, decision = decided("derived-data-1")
    record = make_record(request, decision, 0.0)
    assert record.stage == "data"
    assert record.queue_id == "482806d63a41001"
    assert record.recipients == ("info@solawi.example",)


@pytest.mark.parametrize("stage", ["connect", "ehlo", "auth"])
def test_an_envelope_sent_before_mail_is_not_logged(stage: str) -> None:
    """docs/decision-record.md: sender is null before the mail stage.  A request that
    carries an envelope anyway (not Stalwart's, which sends it from MAIL FROM on) logs
    neither its sender nor its recipients: the policy could not read them either."""
    payload = json.loads((FIXTURES / "derived-rcpt-2.json").read_text())
    payload["context"]["stage"] = stage
    request = decode_request(json.dumps(payload).encode())
    assert request.envelope is not None and request.envelope.to
    record = make_record(request, decide(policy_set(), request, DEMO), 0.0)
    assert (record.stage, record.sender, record.recipients) == (stage, None, ())
    logged = json.loads(encode_record(record))
    assert logged["sender"] is None and logged["recipients"] == []


def test_record_at_connect_has_no_envelope() -> None:
    request, decision = decided("derived-connect-2")
    record = make_record(request, decision, 0.0)
    assert (record.sender, record.recipients, record.queue_id) == (None, (), None)
    assert record.action == "reject"
    assert record.rule is not None and record.rule.name == "blocked_ip"


def test_shadow_records_what_stalwart_was_told() -> None:
    request, decision = decided("derived-rcpt-2")
    record = make_record(request, decision, 0.0, shadow=True)
    assert record.action == "reject"
    assert record.answered == "accept"
    request, decision = decided("derived-rcpt-1")
    assert decision.action == "accept"
    assert make_record(request, decision, 0.0, shadow=True).answered is None


def test_fallback_record() -> None:
    request, decision = decided("derived-rcpt-1", DownDirectory())
    record = make_record(request, decision, 0.0)
    assert record.fallback is True
    assert record.action == "tempfail"
    assert record.cause is not None and "store down" in record.cause
    assert json.loads(encode_record(record))["fallback"] is True


def test_every_fixture_makes_a_record_that_round_trips(
        stalwart_fixtures: dict[str, bytes]) -> None:
    ids = RecordIds()
    for name, payload in stalwart_fixtures.items():
        request = decode_request(payload)
        decision = decide(policy_set(), request, DEMO)
        line = encode_record(make_record(request, decision, 0.1, record_id=ids()))
        assert b"\n" not in line, name
        data = json.loads(line)
        assert data["stage"] == request.context.stage
        assert data["action"] == decision.action


def _marked_data_request() -> Request:
    payload = json.loads((FIXTURES / "derived-data-1.json").read_text())
    headers = payload["message"]["headers"]
    for header in headers:
        if header[0] == "Subject":
            header[1] = " subject-marker-5ab1 Gemuese\r\n"
    headers.append(["X-Secret", " header-marker-93c7\r\n"])
    headers.append(["X-Spam-Flag", " YES (spam-marker-11f0)\r\n"])
    payload["message"]["contents"] = "body-marker-d4e2\r\nmore text"
    return decode_request(json.dumps(payload))


def test_no_message_body_or_header_values_in_a_record() -> None:
    request = _marked_data_request()
    decision = decide(policy_set(), request, DEMO)
    assert decision.action == "quarantine"  # the X-Spam-Flag rule read the header
    line = encode_record(make_record(request, decision, 0.0)).decode()
    for marker in ("subject-marker-5ab1", "header-marker-93c7", "spam-marker-11f0",
                   "body-marker-d4e2"):
        assert marker not in line
    assert request.message is not None
    for name, value in request.message.headers:
        if len(value.strip()) > 25:  # Received, DKIM-Signature, Message-ID, …
            assert value.strip() not in line, name
    # modifications appear as a summary: header names and envelope addresses, no values
    record = json.loads(line)
    assert record["modifications"] == [
        {"type": "addHeader", "name": "X-Komm-Quarantine"},
        {"type": "addHeader", "name": "X-Komm-Original-Recipients"},
        {"type": "deleteRecipient", "address": "info@solawi.example"},
        {"type": "addRecipient", "address": "quarantine@solawi.example"}]
    assert record["quarantine_reason"] == decision.modifications[0].value  # type: ignore[union-attr]
    assert record["quarantine_reason"] and "marker" not in record["quarantine_reason"]


def test_record_version_1_carries_the_session() -> None:
    """helo, SASL login and method, TLS, server and client port/PTR: what the envelope
    stages can read, so `replay` can decide them again."""
    request, decision = decided("derived-auth-1")
    record = json.loads(encode_record(make_record(request, decision, 0.0)))
    assert record["record_version"] == RECORD_VERSION == 2  # session fields since 1
    assert record["helo"] == "[192.168.178.23]"
    assert record["sasl_login"] == "jane"
    assert record["tls_version"] == "TLSv1.3"
    assert record["tls_cipher"] == "TLS13_AES_256_GCM_SHA384"
    assert (record["server_name"], record["server_port"], record["server_ip"]) == (
        "Stalwart v0.16.18", 587, "203.0.113.25")
    assert record["client_port"] == 60498
    assert "client_ptr" not in record  # null in the request: left out
    request, decision = decided("derived-mail-1")
    record = json.loads(encode_record(make_record(request, decision, 0.0)))
    assert record["helo"] == "mail-ed1-f49.google.com"
    assert record["client_ptr"] == "mail-ed1-f49.google.com."
    assert record["sasl_login"] is None  # always present, null without authentication
    assert record["sender"] == "anna.mueller@gmail.com"
    assert decode_record(encode_record(make_record(request, decision, 0.0))).helo == (
        "mail-ed1-f49.google.com")


def test_record_reply_is_the_full_smtp_reply() -> None:
    request, decision = decided("derived-rcpt-2")
    record = json.loads(encode_record(make_record(request, decision, 0.0)))
    assert record["reply"] == {"status": 550, "enhanced": "5.7.1",
                               "message": "You are not allowed to post to this list"}
    assert "modifications" not in record and "quarantine_reason" not in record


def test_header_values_appear_only_as_lookup_arguments() -> None:
    """The shipped `mail_loop` rule looks up each X-BeenThere value.  Lookups are logged
    with their arguments (they explain the decision), so that value appears there, and
    only there; other headers (Subject, From, …) never reach the record (README)."""
    payload = json.loads((FIXTURES / "derived-data-1.json").read_text())
    payload["message"]["headers"].append(["X-BeenThere", " private-list@elsewhere.example\r\n"])
    request = decode_request(json.dumps(payload))
    decision = decide(policy_set(), request, DEMO)
    record = json.loads(encode_record(make_record(request, decision, 0.0)))
    assert {"function": "lookup(message_categories: active, email_address)",
            "args": [True, "private-list@elsewhere.example"]} in [
        {k: v for k, v in lookup.items() if k != "result"} for lookup in record["lookups"]]
    without_lookups = json.dumps({k: v for k, v in record.items() if k != "lookups"})
    assert "private-list@elsewhere.example" not in without_lookups
    assert "Abholung" not in json.dumps(record)  # the Subject
    # the From display name: not from the header (the sender's account row, a lookup
    # result, carries the same name from the directory)
    assert "Anna Mueller" not in without_lookups
    assert all("Anna Mueller" not in json.dumps(lookup["args"]) for lookup in record["lookups"])


@pytest.mark.parametrize("directory", [DEMO, DownDirectory()], ids=["blocked", "fallback"])
def test_ip_redaction_clears_the_client_ip_field(directory: object) -> None:
    request, decision = decided("derived-connect-2", directory)
    record = make_record(request, decision, 0.0, redact_client_ip=True)
    assert record.client_ip is None
    assert json.loads(encode_record(record))["client_ip"] is None
    assert make_record(request, decision, 0.0).client_ip == "2001:db8:4860:4864::1b"


@pytest.mark.parametrize("directory", [DEMO, DownDirectory()], ids=["blocked", "fallback"])
def test_ip_redaction_leaves_the_ip_nowhere_in_the_record(directory: object) -> None:
    """With redaction on, the client address must not reappear through the lookups made
    with it (`ip_blocked(client.ip)`: arguments, lookup errors, the fallback cause)."""
    request, decision = decided("derived-connect-2", directory)
    line = encode_record(make_record(request, decision, 0.0, redact_client_ip=True)).decode()
    assert "2001:db8:4860:4864::1b" not in line


def test_record_ids_are_unique() -> None:
    ids = RecordIds()
    many = [ids() for _ in range(20_000)]
    assert len(set(many)) == len(many)
    other = RecordIds()
    assert other() not in many
    prefix, counter = many[0].split("-")
    assert re.fullmatch(r"[0-9a-f]{16}", prefix)
    assert int(counter, 16) == 1
    assert all(i.startswith(prefix + "-") for i in many)
    assert sorted(many) == many  # fixed-width counter: ids sort in issue order


def _as_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_timestamps_format() -> None:
    stamp = Timestamps()
    assert stamp(0.0) == "1970-01-01T00:00:00.000000+00:00"
    assert stamp(1787233390.5) == "2026-08-20T13:43:10.500000+00:00"
    assert stamp(1787233390.25) == "2026-08-20T13:43:10.250000+00:00"
    assert stamp(1787233391.0) == "2026-08-20T13:43:11.000000+00:00"
    assert ISO_UTC.match(stamp(time.time()))


def test_timestamps_agree_with_datetime() -> None:
    stamp = Timestamps()
    at = 1787233390.0
    for step in range(5_000):
        at += 0.000731 * (step % 7) + 0.0137
        text = stamp(at)
        assert ISO_UTC.match(text), text
        expected = datetime.fromtimestamp(at, UTC)
        assert abs((_as_datetime(text) - expected).total_seconds()) <= 1e-6, (at, text)
        assert text[:19] == expected.isoformat()[:19], (at, text)


def test_timestamps_second_boundaries() -> None:
    stamp = Timestamps()
    base = 1787233399.0
    assert stamp(base + 0.999999) == "2026-08-20T13:43:19.999999+00:00"
    assert stamp(base + 1.0) == "2026-08-20T13:43:20.000000+00:00"
    assert stamp(base + 0.5) == "2026-08-20T13:43:19.500000+00:00"  # back again
    assert stamp(base + 61.0) == "2026-08-20T13:44:20.000000+00:00"
    for fraction in (0.9999994, 0.9999996, 0.99999999):  # never ".1000000" or a lost second
        text = stamp(base + fraction)
        assert ISO_UTC.match(text), text
        assert abs((_as_datetime(text) - datetime.fromtimestamp(base + fraction, UTC))
                   .total_seconds()) <= 1e-6
    assert stamp(86399.5) == "1970-01-01T23:59:59.500000+00:00"
    assert stamp(86400.0) == "1970-01-02T00:00:00.000000+00:00"


# ---------------------------------------------------------------------------------------
# JSON lines


def test_jsonl_sink_writes_lines(tmp_path: Path) -> None:
    path = tmp_path / "var" / "log" / "decisions.jsonl"  # parent directories are created
    sink = JsonlSink(path)
    try:
        lines = [record_line("derived-rcpt-2"), record_line("derived-connect-1")]
        sink.write(spooled(*lines))
        sink.write(spooled(record_line("derived-mail-1")))
    finally:
        sink.close()
    written = path.read_bytes().split(b"\n")
    assert written[-1] == b""
    assert written[:-1] == [*lines, record_line("derived-mail-1")]
    assert [json.loads(line)["stage"] for line in written[:-1]] == ["rcpt", "connect", "mail"]


def test_jsonl_sink_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b'{"old":1}\n')
    sink = JsonlSink(path)
    try:
        sink.write(spooled(b'{"new":2}'))
    finally:
        sink.close()
    assert path.read_bytes() == b'{"old":1}\n{"new":2}\n'


def test_jsonl_sink_rotates_by_size_keeping_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonlSink(path, max_bytes=100, backups=2)
    lines = [f'{{"n":{n:03d},"pad":"{"x" * 11}"}}'.encode() for n in range(20)]
    try:
        for line in lines:
            sink.write(spooled(line))
    finally:
        sink.close()
    assert not path.with_name("decisions.jsonl.3").exists()
    files = [path.with_name("decisions.jsonl.2"), path.with_name("decisions.jsonl.1"), path]
    kept: list[bytes] = []
    for file in files:
        data = file.read_bytes()
        assert 0 < len(data) <= 100, file
        kept.extend(data.splitlines())
    assert kept == lines[-len(kept):]  # oldest first, nothing reordered or repeated
    # 30 bytes a line: three fit in 100 bytes; 20 lines = 6 full files, the current
    # one holding the last two
    assert len(kept) == 3 + 3 + 2


def test_jsonl_sink_without_backups_truncates(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonlSink(path, max_bytes=50, backups=0)
    try:
        for n in range(5):
            sink.write(spooled(b'{"n":%d,"pad":"xxxxxxxxxx"}' % n))  # 26 bytes + newline
    finally:
        sink.close()
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b'{"n":4,"pad":"xxxxxxxxxx"}\n'


def test_jsonl_sink_counts_an_existing_file_towards_rotation(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b"x" * 95 + b"\n")
    sink = JsonlSink(path, max_bytes=100, backups=1)
    try:
        sink.write(spooled(b'{"n":1}'))
    finally:
        sink.close()
    assert path.with_name("decisions.jsonl.1").read_bytes() == b"x" * 95 + b"\n"
    assert path.read_bytes() == b'{"n":1}\n'


# ---------------------------------------------------------------------------------------
# SQLite


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "komm.sqlite3"
    create_database(path, DEMO_TABLES)
    return path


def mta_log(path: Path, columns: str = "*", where: str = "") -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT {columns} FROM mta_log {where}").fetchall()
    finally:
        conn.close()


def test_sqlite_sink_derives_the_columns(store: Path) -> None:
    rcpt_request, reject = decided("derived-rcpt-2")
    _, accept = decided("derived-data-1")
    data_request = fixture_request("derived-data-1")
    _, fallback = decided("derived-connect-1", DownDirectory())
    connect_request = fixture_request("derived-connect-1")
    no_enhanced = Decision("rcpt", "reject", Reply(554, None, "Go away"),
                           policy_version="v-test")
    records = [
        make_record(rcpt_request, reject, 1.5, record_id="reject",
                    at="2026-08-20T14:03:09.000001+00:00"),
        make_record(data_request, accept, 0.25, record_id="accept"),
        make_record(connect_request, fallback, 3.0, record_id="fallback",
                    redact_client_ip=True),
        make_record(rcpt_request, no_enhanced, 0.0, record_id="no-enhanced", shadow=True),
    ]
    sink = SqliteSink(store)
    try:
        sink.write(spooled(*(encode_record(r) for r in records)))
    finally:
        sink.close()
    columns = ("id, time, stage, client_ip, sender, recipients, queue_id, action, reply, rule,"
               " rule_location, fallback, cause, duration_ms, policy_version")
    rows = {row[0]: row for row in mta_log(store, columns)}
    assert set(rows) == {"reject", "accept", "fallback", "no-enhanced"}
    assert reject.rule is not None
    assert rows["reject"] == (
        "reject", "2026-08-20T14:03:09.000001+00:00", "rcpt", rcpt_request.context.client.ip,
        rcpt_request.envelope.from_.address,  # type: ignore[union-attr]
        json.dumps([a.address for a in rcpt_request.envelope.to],  # type: ignore[union-attr]
                   separators=(",", ":")),
        None, "reject", "550 5.7.1 You are not allowed to post to this list",
        "not_allowed_to_post", f"{reject.rule.file}:{reject.rule.line}", 0, None, 1.5,
        policy_set().version)
    accept_row = rows["accept"]
    assert accept_row[2] == "data"
    assert accept_row[6] == "482806d63a41001"
    assert accept_row[7] == "accept"
    assert accept_row[8] is None  # no reply
    assert accept_row[9] == accept.rule.name  # type: ignore[union-attr]
    assert accept_row[11] == 0
    assert accept_row[13] == 0.25
    fallback_row = rows["fallback"]
    assert fallback_row[3] is None  # redacted
    assert fallback_row[7] == "tempfail"
    assert fallback_row[8] == ("451 4.3.0 Directory temporarily unavailable, please try again "
                               "later")
    assert fallback_row[11] == 1
    assert "store down" in fallback_row[12]
    no_enhanced_row = rows["no-enhanced"]
    assert no_enhanced_row[8] == "554 Go away"
    assert no_enhanced_row[9] is None and no_enhanced_row[10] is None  # no rule
    assert no_enhanced_row[14] == "v-test"
    stored = {row[0]: row[1] for row in mta_log(store, "id, record")}
    assert stored["reject"] == encode_record(records[0]).decode()


def test_sqlite_sink_stores_a_record_once(store: Path) -> None:
    line = record_line("derived-rcpt-2", 1)
    sink = SqliteSink(store)
    try:
        sink.write(spooled(line, line))
        sink.write(spooled(line, record_line("derived-rcpt-2", 2)))
    finally:
        sink.close()
    assert sorted(mta_log(store, "id")) == [("derived-rcpt-2-1",), ("derived-rcpt-2-2",)]


def test_sqlite_sink_never_creates_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    with pytest.raises((sqlite3.Error, OSError)):
        SqliteSink(missing)
    assert not missing.exists()


def test_redaction_covers_logs_replies_and_the_ipv4_mapped_form() -> None:
    """The client address is gone from every part of the record, also where a policy
    interpolated it into a `log` line or a reply, and when Stalwart sent it IPv4-mapped."""
    policy = compile_with_directory(
        "stage connect {\n"
        '  rule note: when true log "client {client.ip}" continue\n'
        "  rule blocked: when ip_blocked(client.ip)\n"
        '    reject 550 5.7.1 "go away {client.ip}"\n'
        "  default accept\n}\n").policy_set
    assert policy is not None
    directory = demo_directory({"blocked_ips": [
        {"ip": "192.0.2.7", "reason": "", "blocked_at": 0, "active": True}]})
    for sent in ("192.0.2.7", "::ffff:192.0.2.7"):
        request = decode_request(json.dumps(
            {"context": {"stage": "connect", "client": {"ip": sent}}}))
        decision = decide(policy, request, directory)
        assert decision.action == "reject"
        plain = encode_record(make_record(request, decision, 0.0)).decode()
        assert "192.0.2.7" in plain
        line = encode_record(make_record(request, decision, 0.0,
                                         redact_client_ip=True)).decode()
        assert "192.0.2.7" not in line
        record = json.loads(line)
        assert record["client_ip"] is None
        assert record["logs"] == ["client [redacted]"]
        assert record["reply"]["message"] == "go away [redacted]"
        assert record["lookups"][0]["args"] == ["[redacted]", True]  # (ip, active)


def test_a_failed_rotation_does_not_kill_the_jsonl_sink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename that fails during rotation raises (the writer retries the batch from the
    spec); the batch is then written once, without duplicate lines."""
    path = tmp_path / "log" / "decisions.jsonl"
    spec = JsonlSpec(str(path), max_bytes=1024, backups=2)
    sink = spec.open()
    sink.write(spooled(*[b'{"id":"r%d","pad":"%s"}' % (i, b"x" * 300) for i in range(3)]))
    calls = []

    def failing_replace(src: object, dst: object) -> None:
        calls.append((src, dst))
        raise OSError("simulated rename failure")

    monkeypatch.setattr("komm_policy.decisionlog.sinks.os.replace", failing_replace)
    batch = spooled(b'{"id":"r3","pad":"%s"}' % (b"y" * 300))
    with pytest.raises(OSError):
        sink.write(batch)
    monkeypatch.undo()
    assert calls
    sink = spec.open()  # as the writer does after a failure
    sink.write(batch)
    sink.close()
    lines = [json.loads(x) for f in sorted(path.parent.iterdir())
             for x in f.read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == ["r0", "r1", "r2", "r3"]


def test_jsonl_sink_skips_ids_already_at_the_end_of_its_file(tmp_path: Path) -> None:
    """A writer killed after writing a batch but before saving its position is given the
    batch again: the new sink finds those ids at the end of the file and skips them."""
    path = tmp_path / "decisions.jsonl"
    sink = JsonlSink(path)
    first = spooled(*[b'{"id":"a%d"}' % i for i in range(5)])
    sink.write(first)
    sink.close()
    again = JsonlSink(path)
    again.write(first + spooled(b'{"id":"b0"}'))
    again.write(spooled(b'{"id":"b1"}'))
    again.close()
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert ids == ["a0", "a1", "a2", "a3", "a4", "b0", "b1"]


def test_jsonl_sink_drops_a_line_cut_short_by_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b'{"id":"a"}\n{"id":"b"}\n{"id":"c","tr')
    sink = JsonlSink(path)
    sink.write(spooled(b'{"id":"c","trail":1}'))
    sink.close()
    assert path.read_bytes() == b'{"id":"a"}\n{"id":"b"}\n{"id":"c","trail":1}\n'


def test_jsonl_sink_starts_a_new_file_when_its_file_was_moved(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonlSink(path)
    sink.write(spooled(b'{"id":"a"}'))
    path.rename(tmp_path / "moved.jsonl")  # logrotate, an operator
    sink.write(spooled(b'{"id":"b"}'))
    path.unlink()
    sink.write(spooled(b'{"id":"c"}'))
    sink.close()
    assert (tmp_path / "moved.jsonl").read_bytes() == b'{"id":"a"}\n'
    assert path.read_bytes() == b'{"id":"c"}\n'


def test_jsonl_retention_removes_only_old_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonlSink(path, max_bytes=1024, backups=3, max_age=3600)
    for i in range(8):
        sink.write(spooled(b'{"id":"r%d","pad":"%s"}' % (i, b"x" * 400)))
    rotated = sorted(tmp_path.glob("decisions.jsonl.*"))
    assert len(rotated) == 3
    old = time.time() - 7200
    os.utime(rotated[-1], (old, old))
    os.utime(path, (old, old))  # the current file is never removed, whatever its age
    sink.retain(time.time())
    assert sorted(tmp_path.glob("decisions.jsonl.*")) == rotated[:-1]
    assert path.exists()
    sink.close()


def test_sqlite_sink_adds_the_version_1_columns_to_an_older_table(tmp_path: Path) -> None:
    """A store whose mta_log predates record version 1 gets the new derived columns."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mta_log (record TEXT NOT NULL, id TEXT GENERATED ALWAYS AS "
                 "(json_extract(record, '$.id')) VIRTUAL)")
    conn.execute("""INSERT INTO mta_log (record) VALUES ('{"id":"old"}')""")
    conn.commit()
    conn.close()
    sink = SqliteSink(path)
    sink.write(spooled(record_line("derived-auth-1", 1)))
    sink.close()
    rows = mta_log(path, "id, record_version, helo, sasl_login", "ORDER BY rowid")
    assert rows == [("old", 0, None, None),
                    ("derived-auth-1-1", RECORD_VERSION, "[192.168.178.23]", "jane")]


def test_mta_log_is_a_view_over_a_plain_table(tmp_path: Path) -> None:
    """Inserts cost no derived column (SQLite computes generated columns on INSERT); an
    older `mta_log` table keeps its rows and rowids; the directory never sees the table."""
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mta_log (id TEXT NOT NULL, time TEXT NOT NULL, record TEXT "
                 "NOT NULL, stage TEXT GENERATED ALWAYS AS (json_extract(record, "
                 "'$.stage')) VIRTUAL)")
    conn.execute("""INSERT INTO mta_log (rowid, id, time, record) VALUES
                    (7, 'old', 't', '{"id":"old","stage":"rcpt"}')""")
    conn.commit()
    conn.close()
    sink = SqliteSink(path)
    sink.write(spooled(record_line("derived-auth-1", 1)))
    sink.close()
    SqliteSink(path).close()  # opening again changes nothing
    conn = sqlite3.connect(path)
    try:
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_schema WHERE name LIKE "
                                  "'mta_log%'").fetchall())
        assert kinds == {"mta_log": "view", "mta_log_records": "table",
                         "mta_log_id": "index", "mta_log_time": "index",
                         "mta_log_insert": "trigger"}
        assert [c[1] for c in conn.execute("PRAGMA table_xinfo(mta_log_records)")] == [
            "id", "time", "record"]
        assert user_tables(conn) == []
        conn.execute("""INSERT INTO mta_log (record) VALUES ('{"id":"by-hand","stage":"x"}')""")
        conn.commit()
    finally:
        conn.close()
    rows = mta_log(path, "rowid, id, stage, helo", "ORDER BY rowid")
    assert rows[0] == (7, "old", "rcpt", None)
    assert rows[1][1:] == ("derived-auth-1-1", "auth", "[192.168.178.23]")
    assert rows[2][1:] == ("by-hand", "x", None)


def test_sqlite_sink_writes_into_a_store_created_anew(store: Path) -> None:
    """Deleted and created again with `db init` while the sink is open: the next batch
    goes into the new file, none into the deleted one."""
    sink = SqliteSink(store)
    sink.write(spooled(record_line("derived-rcpt-2", 1)))
    store.unlink()
    for suffix in ("-wal", "-shm"):
        store.with_name(store.name + suffix).unlink(missing_ok=True)
    with pytest.raises(OSError):
        sink.write(spooled(record_line("derived-rcpt-2", 2)))  # gone: retried later
    create_database(store, DEMO_TABLES)
    sink.write(spooled(record_line("derived-rcpt-2", 2), record_line("derived-rcpt-2", 3)))
    sink.close()
    assert sorted(mta_log(store, "id")) == [("derived-rcpt-2-2",), ("derived-rcpt-2-3",)]
    assert sink.reopened == 1


def test_sqlite_retention_by_age_and_rows(store: Path) -> None:
    sink = SqliteSink(store, max_age=3600, max_rows=3)
    old = [b'{"id":"old%d","time":"2020-01-01T00:00:0%d.000000+00:00"}' % (i, i)
           for i in range(3)]
    now = datetime.now(UTC).isoformat(timespec="microseconds").encode()
    new = [b'{"id":"new%d","time":"%s"}' % (i, now) for i in range(5)]
    sink.write(spooled(*old, *new))
    sink.retain(time.time())
    sink.close()
    assert sorted(mta_log(store, "id")) == [("new2",), ("new3",), ("new4",)]


@pytest.mark.parametrize("key", [(), ("email",), ("id", "net")])
def test_a_lookup_row_is_logged_as_its_identity(key: tuple[str, ...]) -> None:
    """A row in a lookup record goes through the spool as its identity (record version
    2): its primary-key columns, networks as text (read by a per-class getter on the
    answer path), never its other columns; a row without a key or rowid as {}."""
    import ipaddress

    from komm_policy.decision import LookupRecord
    from komm_policy.decisionlog import entries
    from komm_policy.directory.rows import row_class
    from komm_policy.directory.schema import Column, Table

    names = ("id", "email", "net", "active")
    kinds = {"id": "integer", "email": "address", "net": "network", "active": "bool"}
    values = {"id": 7, "email": "anna@example.org",
              "net": ipaddress.ip_network("192.0.2.0/24"), "active": True}
    cls = row_class(Table("people", tuple(Column(n, kinds[n]) for n in names), key))
    row = cls(*(values[n] for n in names))
    request, decision = decided("derived-rcpt-1")
    lookups = (LookupRecord("lookup(people: email)", ("anna@example.org",), row),
               LookupRecord("lookup_all(people: email)", ("anna@example.org",), [row, row]))
    decision = decision.__class__(**{**{f: getattr(decision, f)
                                        for f in decision.__struct_fields__},
                                     "lookups": lookups})
    entry = entries.raw_entry(request, decision, 0.5, time.time(), "row-test")
    logged = json.loads(entries.line_from_raw(entry, Timestamps()))["lookups"]
    expected = {n: str(values[n]) if n == "net" else values[n] for n in key}
    assert logged[0]["result"] == expected
    assert logged[1]["result"] == [expected, expected]
