"""Records the spool must still carry or refuse loudly (found by an operator's tests):
a decision record over the reader's 1 MiB window, and a request whose record cannot be
encoded.  Real `komm-policy serve`, real spool, writer process and JSONL file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from komm_policy.decisionlog.spool import MAX_ENTRY, SpoolAppender
from komm_policy.decisionlog.spool_reader import SpoolReader
from komm_policy.hook.response import INTERNAL_ERROR_BODY

from .logstore import jsonl_ids
from .serverproc import Deployment, ServerProcess


def _connect(helo: str = "mx.example.org", port: int | str = 25) -> bytes:
    return (b'{"context":{"stage":"connect","client":{"ip":"192.0.2.1","port":%s,'
            b'"helo":%s}}}' % (str(port).encode(), json.dumps(helo).encode()))


def test_a_frame_longer_than_the_read_window_is_read_whole(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    payloads = [b"small", b"x" * 5000, b"after"]
    for payload in payloads:
        spool.append(payload)
    reader = SpoolReader(tmp_path, read_bytes=64)  # far smaller than the middle entry
    got, position = reader.read(None, 10)
    assert [p for _, p in got] == payloads
    assert reader.read(position, 10) == ([], position)
    spool.close()


def test_an_entry_over_the_limit_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    spool = SpoolAppender(tmp_path, fsync_interval=0)
    try:
        spool.append(b"x" * (MAX_ENTRY + 1))
    except ValueError as exc:
        assert "limit" in str(exc)
    else:
        raise AssertionError("an entry over MAX_ENTRY was accepted")
    assert spool.append(b"next") == 0
    got, _ = SpoolReader(tmp_path).read(None, 10)
    assert [p for _, p in got] == [b"next"]
    spool.close()


def _wait_for_ids(path: Path, count: int, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    ids = jsonl_ids(path)
    while len(ids) < count and time.monotonic() < deadline:
        time.sleep(0.1)
        ids = jsonl_ids(path)
    return ids


def _rcpt_with_large_envelope() -> bytes:
    """The largest envelope the wire bounds allow, in two-octet characters: a record of
    about 2 MB (1,000 recipients of 1,000 characters, wire.MAX_RECIPIENTS/MAX_TEXT)."""
    to = [{"address": f"{i:04d}" + "é" * 990 + "@example.org"} for i in range(1000)]
    return json.dumps({
        "context": {"stage": "rcpt", "client": {"ip": "192.0.2.1", "port": 25}},
        "envelope": {"from": {"address": "a@example.org"}, "to": to}}).encode()


def test_a_two_megabyte_record_is_logged_and_the_log_goes_on(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch", "--log-level", "warning") as server:
        assert server.post(_connect()).status_code == 200
        big = server.post(_rcpt_with_large_envelope())
        assert big.status_code == 200 and big.content != INTERNAL_ERROR_BODY
        for _ in range(10):
            assert server.post(_connect()).status_code == 200
        ids = _wait_for_ids(deployment.log_file, 12)
        assert len(ids) == len(set(ids)) == 12
        assert max(len(line) for line in deployment.log_file.read_bytes().splitlines()) \
            > 1_100_000  # past the reader's 1 MiB window


def test_fields_past_the_wire_bounds_are_refused_before_any_decision(tmp_path: Path) -> None:
    """Found by the tester: a 2 MB HELO or a 500,000-character sender made a 1-2 MB record
    of one request; a port of 2**64 was decided and then could not be recorded (451)."""
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch", "--log-level", "warning") as server:
        refused = {
            "$.context.client.helo": _connect(helo="h" * 2_000_000),
            "$.context.client.port": _connect(port=2**64),
        }
        for path, body in refused.items():
            answer = server.post(body)
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["path"] == path
        assert server.post(_connect()).status_code == 200
        assert len(_wait_for_ids(deployment.log_file, 1)) == 1


def test_a_record_that_cannot_be_encoded_is_never_answered_unlogged(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    with ServerProcess(deployment, "--no-watch", "--log-level", "warning") as server:
        answers = [server.post(_connect(port=p)) for p in
                   (1, "99999999999999999999999", "18446744073709551616", 2)]
        # Out-of-range numbers are now refused at the wire (400, never decided); the
        # record encoder's own refusal (451, counted) stays behind it as a backstop.
        assert [a.status_code for a in answers] == [200, 400, 400, 200]
        assert all(a.content != INTERNAL_ERROR_BODY for a in answers)
        ids = _wait_for_ids(deployment.log_file, 2)
        time.sleep(0.5)
        assert len(jsonl_ids(deployment.log_file)) == 2 == len(ids)
        metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
        unrecordable = [line for line in metrics.splitlines()
                        if line.startswith("komm_decision_log_unrecordable_total ")]
        assert unrecordable and float(unrecordable[0].split()[1]) == 0
