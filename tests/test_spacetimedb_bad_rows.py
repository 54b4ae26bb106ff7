"""Rows from SpacetimeDB that cannot be decoded (issue #9 §3, the tester's findings):
each is skipped with one warning naming table, key and reason, and counted once — keyed
by its primary key when that decodes, else by a digest of its JSON text, never by its
position in the message (which hid a second bad row at the same position and counted
the same row again after a reconnect).  Any failure of one row, nesting too deep for the
JSON decoder included, skips that row only: the connection stays, the snapshot serves."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import pytest

from komm_policy.directory.spacetimedb import SpacetimeDirectory
from komm_policy.spacetimedb import Endpoint
from komm_policy.spacetimedb.subscription import Backoff

from .shipped import SCHEMA, Helpers, helper_needs
from .spacetimedb_double import DoubleServer
from .spacetimedb_double.samples import BLOCKED_AT as T0
from .spacetimedb_double.samples import SPEC
from .spacetimedb_double.state import RawRow

DEEP = "[" * 1200 + "]" * 1200
"""Nested past msgspec's limit (about 1,000 levels): RecursionError when decoded."""


@pytest.fixture
def double() -> Iterator[DoubleServer]:
    with DoubleServer(SPEC) as server:
        yield server


def open_directory(double: DoubleServer) -> SpacetimeDirectory:
    return SpacetimeDirectory(Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/komm"),
                              double.owner_token, schema=SCHEMA, needs=helper_needs(),
                              backoff=Backoff(0.05, 0.2))


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def skipped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipping a row" in r.getMessage()]


def test_bad_rows_are_keyed_by_primary_key_or_digest_and_counted_once(
        double: DoubleServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    rows = double.state.databases["komm"].tables["blocked_ips"].rows
    rows.append([None, "null ip in the snapshot", T0, True])
    directory = open_directory(double)
    try:
        assert directory.available and directory.health.bad_rows == {"blocked_ips": 1}
        (first,) = skipped(caplog)
        assert "blocked_ips (row sha256:" in first and "expected a string" in first
        control = double.control()
        # each alone in its message, at position 0: both counted, both named
        control.tx("komm", "blocked_ips", inserts=[["192.0.2.5", "not a bool", T0, "yes"]])
        control.tx("komm", "blocked_ips", inserts=[[None, "another null ip", T0, True]])
        control.tx("komm", "blocked_ips", inserts=[["192.0.2.6", "good", T0, True]])
        eventually(lambda: Helpers(directory).ip_blocked("192.0.2.6"))
        assert directory.health.bad_rows == {"blocked_ips": 3}
        lines = skipped(caplog)
        assert len(lines) == 3
        assert "blocked_ips (ip='192.0.2.5')" in lines[1] and "boolean" in lines[1]
        assert "row sha256:" in lines[2] and lines[2] != lines[0]
        # a reconnect sends all three again: not counted, not logged again
        double.control().drop()
        eventually(lambda: directory.reconnects == 1 and directory.available)
        assert directory.health.bad_rows == {"blocked_ips": 3}
        assert len(skipped(caplog)) == 3
        assert directory.health.unexpected_errors == 0
    finally:
        directory.close()


def test_a_row_nested_too_deeply_is_a_bad_row_not_a_dropped_connection(
        double: DoubleServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    rows = double.state.databases["komm"].tables["blocked_ips"].rows
    rows.append(RawRow(DEEP))  # in the initial snapshot: used to fail every reconnect
    directory = open_directory(double)
    try:
        assert directory.available and Helpers(directory).ip_blocked("192.0.2.66")
        assert directory.health.bad_rows == {"blocked_ips": 1}
        double.control().tx("komm", "blocked_ips", raw_inserts=['{"not": "a row"', DEEP + " "],
                            inserts=[["192.0.2.7", "after", T0, True]])
        eventually(lambda: Helpers(directory).ip_blocked("192.0.2.7"))
        assert directory.health.bad_rows == {"blocked_ips": 3}
        lines = skipped(caplog)
        assert len(lines) == 3 and all("row sha256:" in line for line in lines)
        assert "nested too deeply" in lines[0] and "nested too deeply" in lines[2]
        assert directory.reconnects == 0 and directory.health.refresh_errors == 0
        assert directory.health.unexpected_errors == 0
        assert not any(r.exc_info for r in caplog.records)
    finally:
        directory.close()


def test_an_unexpected_failure_logs_no_empty_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """`failed(expected=False)` outside an `except` (the subscription reports the reason
    after it logged the traceback itself) must not print "NoneType: None"."""
    from komm_policy.directory.health import ReplicaHealth
    caplog.set_level(logging.WARNING)
    health = ReplicaHealth(logging.getLogger("komm_policy.test"), "x", time.monotonic)
    health.failed("unexpected error: boom", expected=False)
    try:
        raise ValueError("inside")
    except ValueError:
        health.failed("unexpected error: inside", expected=False)
    first, second = caplog.records
    assert first.exc_info is None and "NoneType" not in caplog.text.split("\n")[1]
    assert second.exc_info is not None and second.exc_info[0] is ValueError
    assert health.unexpected_errors == 2
