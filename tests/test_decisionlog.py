"""Decision records and their sinks (decisionlog.py), and the writer process (logwriter.py).

Records are built from the captured Stalwart payloads decided by the shipped policies on
the demo directory.  `SinkWriter` is driven with fake sinks and a fake clock; the
`DecisionLog` tests run the real writer process.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from komm_policy.decision import Decision, Reply
from komm_policy.decisionlog import (
    DecisionRecord,
    JsonlSink,
    JsonlSpec,
    RecordIds,
    SinkWriter,
    SqliteSink,
    SqliteSpec,
    Timestamps,
    encode_record,
    make_record,
)
from komm_policy.demo import DEMO_ROWS
from komm_policy.directory import BlockedIpRow, DirectoryError, DirectoryRows
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.directory.sqlite import connect, create_database
from komm_policy.logwriter import DecisionLog
from komm_policy.policyset import PolicySet, load_policy_set
from komm_policy.runtime import decide
from komm_policy.wire import Request, decode_request

from .conftest import POLICIES, ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "stalwart"
ISO_UTC = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\Z")


@functools.cache
def policy_set() -> PolicySet:
    return load_policy_set(POLICIES)


DEMO = InMemoryDirectory(DEMO_ROWS)


class DownDirectory:
    """Every lookup fails, as a store that cannot be read does."""

    blocking = False

    def _fail(self, *args: object) -> None:
        raise DirectoryError("store down")

    ip_blocked = category = account = is_admin = subscribed = _fail


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
    assert "X-Komm-Original-Recipients" not in line  # modifications are not logged


def test_header_values_appear_only_as_lookup_arguments() -> None:
    """The shipped `mail_loop` rule looks up each X-BeenThere value.  Lookups are logged
    with their arguments (they explain the decision), so that value appears there, and
    only there; other headers (Subject, From, …) never reach the record (README)."""
    payload = json.loads((FIXTURES / "derived-data-1.json").read_text())
    payload["message"]["headers"].append(["X-BeenThere", " private-list@elsewhere.example\r\n"])
    request = decode_request(json.dumps(payload))
    decision = decide(policy_set(), request, DEMO)
    record = json.loads(encode_record(make_record(request, decision, 0.0)))
    assert {"function": "category", "args": ["private-list@elsewhere.example"]} in [
        {k: v for k, v in lookup.items() if k != "result"} for lookup in record["lookups"]]
    without_lookups = json.dumps({k: v for k, v in record.items() if k != "lookups"})
    assert "private-list@elsewhere.example" not in without_lookups
    assert "Abholung" not in json.dumps(record)  # the Subject
    assert "Anna Mueller" not in json.dumps(record)  # the From display name


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
        sink.write(lines)
        sink.write([record_line("derived-mail-1")])
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
        sink.write([b'{"new":2}'])
    finally:
        sink.close()
    assert path.read_bytes() == b'{"old":1}\n{"new":2}\n'


def test_jsonl_sink_rotates_by_size_keeping_n_backups(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    sink = JsonlSink(path, max_bytes=100, backups=2)
    lines = [f'{{"n":{n:03d},"pad":"{"x" * 11}"}}'.encode() for n in range(20)]
    try:
        for line in lines:
            sink.write([line])
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
            sink.write([b'{"n":%d,"pad":"xxxxxxxxxx"}' % n])  # 26 bytes + newline
    finally:
        sink.close()
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b'{"n":4,"pad":"xxxxxxxxxx"}\n'


def test_jsonl_sink_counts_an_existing_file_towards_rotation(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b"x" * 95 + b"\n")
    sink = JsonlSink(path, max_bytes=100, backups=1)
    try:
        sink.write([b'{"n":1}'])
    finally:
        sink.close()
    assert path.with_name("decisions.jsonl.1").read_bytes() == b"x" * 95 + b"\n"
    assert path.read_bytes() == b'{"n":1}\n'


# ---------------------------------------------------------------------------------------
# SQLite


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "komm.sqlite3"
    create_database(path, DEMO_ROWS)
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
        sink.write([encode_record(r) for r in records])
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
        sink.write([line, line])
        sink.write([line, record_line("derived-rcpt-2", 2)])
    finally:
        sink.close()
    assert sorted(mta_log(store, "id")) == [("derived-rcpt-2-1",), ("derived-rcpt-2-2",)]


def test_sqlite_sink_never_creates_a_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    with pytest.raises(sqlite3.Error):
        SqliteSink(missing)
    assert not missing.exists()


# ---------------------------------------------------------------------------------------
# SinkWriter


def test_sink_writer_writes_every_sink() -> None:
    first, second = FakeSink("a"), FakeSink("b")
    writer = SinkWriter([first, second], clock=FakeClock())
    writer.write([b"1", b"", b"2"])  # empty lines (from splitting) are dropped
    assert first.lines == second.lines == [b"1", b"2"]
    assert writer.written == 2
    assert writer.pending == 0
    assert writer.next_retry_in() is None
    assert writer.close() == 0
    assert first.closed and second.closed


def test_failing_sink_keeps_its_backlog_while_the_other_goes_on() -> None:
    clock = FakeClock()
    good, bad = FakeSink("good"), FakeSink("bad")
    bad.failing = True
    writer = SinkWriter([good, bad], clock=clock)
    writer.write([b"1"])
    assert good.lines == [b"1"]
    assert (writer.pending, writer.errors, bad.calls) == (1, 1, 1)
    delay = writer.next_retry_in()
    assert delay is not None and delay > 0
    writer.write([b"2"])  # the bad sink is waiting out its backoff: not even tried
    assert good.lines == [b"1", b"2"]
    assert bad.calls == 1
    assert writer.pending == 2
    clock.advance(delay - 0.01)
    writer.attempt()
    assert bad.calls == 1
    clock.advance(0.01)
    bad.failing = False
    writer.attempt()
    assert bad.lines == [b"1", b"2"]  # the whole backlog, in order, once
    assert bad.calls == 2
    assert good.lines == [b"1", b"2"]  # nothing written twice to the good sink
    assert writer.pending == 0
    assert writer.written == 2
    assert writer.next_retry_in() is None
    writer.write([b"3"])
    assert good.lines == bad.lines == [b"1", b"2", b"3"]


def test_backoff_schedule() -> None:
    """0.5 s, doubling after each further failure, at most 30 s (SinkWriter's contract)."""
    clock = FakeClock()
    bad = FakeSink()
    bad.failing = True
    writer = SinkWriter([bad], clock=clock)
    writer.write([b"x"])
    delays = []
    for _ in range(8):
        delay = writer.next_retry_in()
        assert delay is not None
        delays.append(delay)
        clock.advance(delay)
        writer.attempt()
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_backoff_grows_is_capped_and_resets_after_success() -> None:
    clock = FakeClock()
    bad = FakeSink()
    bad.failing = True
    writer = SinkWriter([bad], clock=clock)
    writer.write([b"x"])
    delays = []
    for _ in range(10):
        delay = writer.next_retry_in()
        assert delay is not None
        delays.append(delay)
        clock.advance(delay)
        writer.attempt()
    assert all(0 < a < b or b == 30.0 for a, b in itertools.pairwise(delays))
    assert max(delays) == 30.0
    assert delays[-1] == 30.0
    assert bad.calls == 11
    first_delay = delays[0]
    clock.advance(30.0)
    bad.failing = False
    writer.attempt()
    assert bad.lines == [b"x"]
    bad.failing = True
    writer.write([b"y"])
    assert writer.next_retry_in() == first_delay  # failures were reset by the success


def test_close_forces_a_last_attempt_and_reports_what_stays_unwritten() -> None:
    clock = FakeClock()
    good, bad = FakeSink("good"), FakeSink("bad")
    bad.failing = True
    writer = SinkWriter([good, bad], clock=clock)
    writer.write([b"1", b"2"])
    writer.write([b"3"])
    calls = bad.calls
    assert writer.close() == 3  # still failing: all three records stay unwritten there
    assert bad.calls == calls + 1  # close tried once more, ignoring the backoff
    assert good.closed and bad.closed
    assert good.lines == [b"1", b"2", b"3"]


def test_close_writes_a_recovered_sink_without_waiting_for_the_backoff() -> None:
    clock = FakeClock()
    bad = FakeSink()
    bad.failing = True
    writer = SinkWriter([bad], clock=clock)
    writer.write([b"1"])
    bad.failing = False
    assert writer.close() == 0
    assert bad.lines == [b"1"]


def test_a_sink_that_cannot_be_opened_yet_is_retried(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "later.sqlite3"
    jsonl = tmp_path / "decisions.jsonl"
    writer = SinkWriter([JsonlSpec(str(jsonl)), SqliteSpec(str(path))], clock=clock)
    try:
        lines = [record_line("derived-rcpt-2", 1), record_line("derived-rcpt-2", 2)]
        writer.write(lines)
        assert writer.errors == 1
        assert writer.pending == 2
        assert not path.exists()  # opening the sink must not create an empty store
        assert len(jsonl.read_bytes().splitlines()) == 2
        create_database(path)
        delay = writer.next_retry_in()
        assert delay is not None
        clock.advance(delay)
        writer.write([record_line("derived-rcpt-2", 3)])
        assert writer.pending == 0
    finally:
        assert writer.close() == 0
    assert sorted(mta_log(path, "id")) == [("derived-rcpt-2-1",), ("derived-rcpt-2-2",),
                                           ("derived-rcpt-2-3",)]
    assert len(jsonl.read_bytes().splitlines()) == 3


def test_close_reports_records_for_a_sink_that_never_opened(tmp_path: Path) -> None:
    writer = SinkWriter([SqliteSpec(str(tmp_path / "never.sqlite3"))], clock=FakeClock())
    writer.write([b'{"id":"a"}', b'{"id":"b"}'])
    assert writer.close() == 2


# ---------------------------------------------------------------------------------------
# DecisionLog: the writer process


@pytest.fixture
def log_paths(tmp_path: Path) -> tuple[Path, Path]:
    store = tmp_path / "komm.sqlite3"
    create_database(store, DEMO_ROWS)
    return tmp_path / "log" / "decisions.jsonl", store


@pytest.fixture
def decision_log(log_paths: tuple[Path, Path]) -> Iterator[DecisionLog]:
    jsonl, store = log_paths
    log = DecisionLog([JsonlSpec(str(jsonl)), SqliteSpec(str(store))])
    yield log
    log.close()


def jsonl_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["id"] for line in path.read_bytes().splitlines()]


def store_ids(path: Path) -> list[str]:
    conn = connect(path, readonly=True)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM mta_log")]
    finally:
        conn.close()


def submit_fixtures(log: DecisionLog, count: int) -> None:
    pairs = [decided(name) for name in ("derived-rcpt-2", "derived-connect-1",
                                        "derived-data-1", "derived-mail-1")]
    for n in range(count):
        request, decision = pairs[n % len(pairs)]
        log.submit_decision(request, decision, 0.3, time.time())


def test_submit_and_flush_write_both_sinks(log_paths: tuple[Path, Path],
                                           decision_log: DecisionLog) -> None:
    jsonl, store = log_paths
    submit_fixtures(decision_log, 4)
    assert decision_log.flush()
    assert decision_log.depth == 0
    ids = jsonl_ids(jsonl)
    assert len(ids) == 4 == len(set(ids))
    assert sorted(store_ids(store)) == sorted(ids)
    records = [msgspec.json.decode(line, type=DecisionRecord)
               for line in jsonl.read_bytes().splitlines()]
    assert [r.stage for r in records] == ["rcpt", "connect", "data", "mail"]
    assert all(ISO_UTC.match(r.time) for r in records)


def test_a_late_flush_answer_is_not_taken_for_the_next_one(
        log_paths: tuple[Path, Path], decision_log: DecisionLog) -> None:
    """A flush that gives up leaves its answer in the pipe; the next flush must wait for
    its own answer, not take that one."""
    jsonl, store = log_paths
    submit_fixtures(decision_log, 50)
    assert decision_log.flush(timeout=0) is False  # gives up at once
    submit_fixtures(decision_log, 50)
    assert decision_log.flush()
    assert len(jsonl_ids(jsonl)) == 100
    assert len(store_ids(store)) == 100


def test_close_flushes_everything(log_paths: tuple[Path, Path]) -> None:
    jsonl, store = log_paths
    log = DecisionLog([JsonlSpec(str(jsonl)), SqliteSpec(str(store))], flush_interval=0.02)
    submit_fixtures(log, 300)
    time.sleep(0.05)  # some batches on their way, some not
    submit_fixtures(log, 700)  # and these right before close
    log.close()
    ids = jsonl_ids(jsonl)
    assert len(ids) == 1000 == len(set(ids))
    assert len(store_ids(store)) == 1000
    assert not log._process.is_alive()


def test_killed_writer_is_restarted_and_the_next_batch_delivered(
        log_paths: tuple[Path, Path], decision_log: DecisionLog) -> None:
    jsonl, store = log_paths
    submit_fixtures(decision_log, 3)
    assert decision_log.flush()
    first_process = decision_log._process
    first_process.kill()
    first_process.join(5)
    assert not first_process.is_alive()
    submit_fixtures(decision_log, 5)
    assert decision_log.flush()
    assert decision_log._process is not first_process
    assert decision_log._process.is_alive()
    ids = jsonl_ids(jsonl)
    assert len(ids) == 8 == len(set(ids))
    assert sorted(store_ids(store)) == sorted(ids)
    submit_fixtures(decision_log, 2)
    decision_log.close()
    assert len(jsonl_ids(jsonl)) == 10
    assert len(store_ids(store)) == 10


def test_redaction_covers_logs_replies_and_the_ipv4_mapped_form() -> None:
    """The client address is gone from every part of the record, also where a policy
    interpolated it into a `log` line or a reply, and when Stalwart sent it IPv4-mapped."""
    from komm_policy.policyset import compile_text

    policy = compile_text(
        "stage connect {\n"
        '  rule note: when true log "client {client.ip}" continue\n'
        "  rule blocked: when ip_blocked(client.ip)\n"
        '    reject 550 5.7.1 "go away {client.ip}"\n'
        "  default accept\n}\n").policy_set
    assert policy is not None
    directory = InMemoryDirectory(DirectoryRows(blocked_ips=(BlockedIpRow("192.0.2.7"),)))
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
        assert record["lookups"][0]["args"] == ["[redacted]"]


def test_a_failed_rotation_does_not_kill_the_jsonl_sink(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rename that fails during rotation is retried; the sink is reopened from its spec
    and the backlog is written once, without duplicate lines."""
    from komm_policy.decisionlog import JsonlSpec, SinkWriter

    clock = [0.0]
    path = tmp_path / "log" / "decisions.jsonl"
    writer = SinkWriter([JsonlSpec(str(path), max_bytes=1024, backups=2)],
                        clock=lambda: clock[0])
    writer.write([b'{"n":%d,"pad":"%s"}' % (i, b"x" * 300) for i in range(3)])
    calls = []

    def failing_replace(src: object, dst: object) -> None:
        calls.append((src, dst))
        raise OSError("simulated rename failure")

    monkeypatch.setattr("komm_policy.decisionlog.os.replace", failing_replace)
    writer.write([b'{"n":3,"pad":"%s"}' % (b"y" * 300)])
    monkeypatch.undo()
    assert calls and writer.pending == 1
    clock[0] += 60
    writer.attempt()
    assert writer.pending == 0
    lines = [json.loads(x) for f in sorted(path.parent.iterdir())
             for x in f.read_text().splitlines()]
    assert sorted(x["n"] for x in lines) == [0, 1, 2, 3]
    assert writer.close() == 0
