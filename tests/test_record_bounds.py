"""A decision record lists at most `bounds.MAX_LISTED_LOOKUPS` lookups (and counts the
others) and cuts each policy-made text after `bounds.MAX_RECORD_TEXT` characters.

The tester's finding: the shipped `mail_loop` rule looks up every address of
`X-BeenThere`, which any SMTP sender writes; 100,000 addresses (a 2.28 MB body) made an
11.7 MB JSONL record and the same `mta_log` row."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from komm_policy.decision import Decision, LookupRecord
from komm_policy.decisionlog.bounds import (
    MAX_LISTED_LOOKUPS,
    MAX_RECORD_TEXT,
    OMITTED,
    bounded,
    cut,
)
from komm_policy.decisionlog.entries import line_from_raw, raw_entry
from komm_policy.decisionlog.records import Timestamps, decode_record, encode_record, make_record
from komm_policy.hook.inline import INLINE_ADDRESSES, INLINE_BODY_BYTES
from komm_policy.hook.inline import inline as _inline
from komm_policy.wire import decode_request

from .serverproc import Deployment, ServerProcess

FIXTURES = Path(__file__).parent / "fixtures" / "stalwart"


def loop_body(addresses: int) -> bytes:
    """The data fixture with one `X-BeenThere` of `addresses` distinct addresses (none
    a list: every one is looked up)."""
    request = json.loads((FIXTURES / "derived-data-1.json").read_text())
    value = " " + ", ".join(f"u{i}@x{i}.example" for i in range(addresses)) + "\r\n"
    request["message"]["headers"].append(["X-BeenThere", value])
    return json.dumps(request).encode()


def test_cut_keeps_short_texts_and_marks_long_ones() -> None:
    assert cut("a" * MAX_RECORD_TEXT) == "a" * MAX_RECORD_TEXT
    long = "b" * (MAX_RECORD_TEXT + 5)
    marker = f"…[cut: {MAX_RECORD_TEXT + 5} characters]"
    assert cut(long) == "b" * (MAX_RECORD_TEXT - len(marker)) + marker
    assert cut(cut(long)) == cut(long)


def test_bounded_lists_the_first_lookups_counts_the_rest_and_is_idempotent() -> None:
    lookups = tuple(LookupRecord("lookup(t: k)", (f"k{i}" + "x" * (2000 if i == 3 else 0),),
                                 None) for i in range(MAX_LISTED_LOOKUPS + 57))
    decision = Decision("data", "accept", lookups=lookups, logs=("l" * 5000,),
                        errors=("e" * 5000,), cause="c" * 5000)
    once = bounded(decision)
    assert bounded(once) == once
    assert [lookup.args for lookup in once.lookups[:3]] == [("k0",), ("k1",), ("k2",)]
    assert once.lookups[3].args[0].endswith("…[cut: 2002 characters]")
    assert once.lookups[-1] == LookupRecord(OMITTED, (), 57)
    assert len(once.lookups) == MAX_LISTED_LOOKUPS + 1
    assert all(len(text) == MAX_RECORD_TEXT
               for text in (*once.logs, *once.errors, once.cause, once.lookups[3].args[0]))
    request = decode_request(loop_body(1))
    record = make_record(request, once, 1.0, record_id="r", at="t")
    assert record.lookups_omitted == 57
    assert len(record.lookups) == MAX_LISTED_LOOKUPS
    assert all(lookup.function != OMITTED for lookup in record.lookups)
    # the writer's record of the spool entry is the same
    entry = raw_entry(request, once, 1.0, 0.0, "r")
    from_entry = decode_record(line_from_raw(entry, Timestamps()))
    assert from_entry.lookups == record.lookups
    assert from_entry.lookups_omitted == 57
    unbounded = make_record(request, decision, 1.0, record_id="r", at="t")
    assert unbounded.lookups_omitted == 0 and len(unbounded.lookups) == len(lookups)
    assert len(encode_record(record)) < len(encode_record(unbounded))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    deployment = Deployment(tmp_path_factory.mktemp("bounds"))
    with ServerProcess(deployment, "--no-watch") as running:
        yield running


def _counts(server: ServerProcess) -> tuple[int, int]:
    """JSONL lines and `mta_log` rows written so far."""
    deployment = server.deployment
    lines = (deployment.log_file.read_bytes().count(b"\n")
             if deployment.log_file.exists() else 0)
    with sqlite3.connect(deployment.database) as db:
        (rows,) = db.execute("SELECT count(*) FROM mta_log").fetchone()
    return lines, rows


def _next_record(server: ServerProcess, before: tuple[int, int]) -> tuple[bytes, bytes]:
    """The JSONL line and `mta_log` record written after `before` (`_counts`)."""
    deadline = time.monotonic() + 20
    while _counts(server)[0] <= before[0] or _counts(server)[1] <= before[1]:
        assert time.monotonic() < deadline, "record not written"
        time.sleep(0.1)
    line = server.deployment.log_file.read_bytes().splitlines()[before[0]]
    with sqlite3.connect(server.deployment.database) as db:
        (row,) = db.execute("SELECT record FROM mta_log ORDER BY rowid LIMIT 1 OFFSET ?",
                            (before[1],)).fetchone()
    return line, row.encode() if isinstance(row, str) else row


@pytest.mark.parametrize("addresses", [100_000, 6_913, 3_000])
def test_the_testers_lookups_make_a_bounded_record_in_jsonl_and_mta_log(
        server: ServerProcess, addresses: int) -> None:
    before = _counts(server)
    response = httpx.post(f"{server.url}/mta-hook", content=loop_body(addresses),
                          timeout=60)
    assert response.status_code == 200
    assert response.json()["action"] == "accept"
    line, row = _next_record(server, before)
    assert line == row  # the same JSON in both sinks
    record = json.loads(line)
    assert len(record["lookups"]) == MAX_LISTED_LOOKUPS
    # every address was looked up (plus the few other lookups of the data stage)
    assert addresses - MAX_LISTED_LOOKUPS <= record["lookups_omitted"] <= (
        addresses - MAX_LISTED_LOOKUPS + 10)
    looked_up = [x["args"][-1] for x in record["lookups"]
                 if x["function"].startswith("lookup(message_categories")]
    assert looked_up[:3] == ["u0@x0.example", "u1@x1.example", "u2@x2.example"]
    # 100 short lookups and the rest of this request: far under the 11.7 MB it was
    assert len(line) < 20_000


def test_bodies_full_of_addresses_are_decided_off_the_event_loop() -> None:
    """A body under INLINE_BODY_BYTES with 3,000 addresses took 24 ms to decide: it goes
    to a worker thread like a large body; a usual one is decided inline."""
    small = loop_body(3_000)
    assert len(small) <= INLINE_BODY_BYTES
    assert not _inline(small)
    assert not _inline(small.replace(b"@", b"\\u0040"))
    assert _inline(loop_body(INLINE_ADDRESSES - 10))
    for name in ("derived-rcpt-2", "derived-data-1"):
        assert _inline((FIXTURES / f"{name}.json").read_bytes())


@pytest.mark.parametrize("addresses", [100_000, 3_000])
def test_answers_keep_moving_beside_large_loop_headers(server: ServerProcess,
                                                      addresses: int) -> None:
    """Three bodies of 100,000 addresses at once (2.28 MB each), or of 3,000 (under
    64 KiB), while connect hooks go on: each connect hook is answered, none waits for all
    three."""
    seed = (b'{"context":{"stage":"connect","client":{"ip":"127.0.0.1",'
            b'"helo":"test.example.com"}}}')
    body = loop_body(addresses)
    big: list[int] = []

    def send_big() -> None:
        big.append(httpx.post(f"{server.url}/mta-hook", content=body,
                              timeout=120).status_code)

    threads = [threading.Thread(target=send_big) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    worst = 0.0
    small = 0
    with httpx.Client(timeout=30) as client:
        while any(thread.is_alive() for thread in threads):
            began = time.monotonic()
            assert client.post(f"{server.url}/mta-hook", content=seed).status_code == 200
            worst = max(worst, time.monotonic() - began)
            small += 1
            time.sleep(0.02)
    for thread in threads:
        thread.join()
    total = time.monotonic() - started
    assert big == [200, 200, 200]
    assert small >= 1  # (3,000 addresses are decided in tens of ms: maybe only one)
    assert worst < max(1.0, total / 2), (worst, total)
