"""The directory replica never dies silently: the contract every backend keeps (issue #9 §3).

Each test runs against every backend through a small adapter (a store to write rows into,
take down and bring back, and a way to open the backend's directory on it): SQLite (a real
file, the replica's own refresher thread) and SpacetimeDB (the loopback double, a real
WebSocket subscription).  The contract:

- a row that does not fit the schema is skipped with one warning naming table, key and
  reason, and counted (`health.bad_rows`); the directory starts on a store with such rows
  and keeps applying later changes;
- a row whose declared key another row holds is such a bad row, and comes in with the
  change that frees the key (`directory.claims`);
- an unexpected error while applying changes is logged, counted and retried: the
  refresher never ends;
- a replica older than `max_staleness` is unavailable (`/readyz` 503) and its lookups fail
  (the policy's fallback); while the store is down the log lines are rate-limited, and a
  "recovered" line follows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory import DirectoryError
from komm_policy.directory.schema import parse_schema
from komm_policy.directory.snapshot import IndexSpec, Needs, TablesSnapshot
from komm_policy.directory.sqlite import SqliteDirectory, create_database
from komm_policy.hook.service import HookService
from komm_policy.ipset import IP
from komm_policy.policyset import compile_text

SCHEMA = parse_schema({"tables": {"blocked_ips": {"primary_key": ["ip"], "columns": {
    "ip": {"type": "network"}, "reason": {"type": "text"}, "active": {"type": "bool"}}},
    "admin_identities": {"primary_key": ["identity"], "columns": {
        "identity": {"type": "identity"}}}}})
NET = IndexSpec("blocked_ips", ("ip",), "net")
ADMIN = IndexSpec("admin_identities", ("identity",))
NEEDS = Needs({NET, ADMIN})
MAX_STALENESS = 1.0


class Backend(Protocol):
    name: str

    def add_blocked(self, ip: str | None, reason: str) -> None: ...
    def delete_blocked(self, ip: str, reason: str) -> None: ...
    def open(self) -> Any: ...
    def down(self) -> None: ...
    def up(self) -> None: ...


class SqliteBackend:
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "komm.sqlite3"
        self.aside = tmp_path / "aside.sqlite3"
        create_database(self.path, DEMO_TABLES)

    def add_blocked(self, ip: str | None, reason: str) -> None:
        conn = sqlite3.connect(self.path)
        with conn:
            conn.execute("INSERT INTO blocked_ips (ip, reason) VALUES (?, ?)", (ip, reason))
        conn.close()

    def delete_blocked(self, ip: str, reason: str) -> None:
        conn = sqlite3.connect(self.path)
        with conn:
            conn.execute("DELETE FROM blocked_ips WHERE ip = ? AND reason = ?", (ip, reason))
        conn.close()

    def open(self) -> Any:
        return SqliteDirectory(self.path, refresh_interval=0.05,
                               max_staleness=MAX_STALENESS)

    def _move(self, src: Path, dst: Path) -> None:
        for suffix in ("", "-wal", "-shm"):
            old = src.with_name(src.name + suffix)
            if old.exists():
                os.rename(old, dst.with_name(dst.name + suffix))

    def down(self) -> None:
        self._move(self.path, self.aside)

    def up(self) -> None:
        self._move(self.aside, self.path)


class SpacetimeBackend:
    name = "spacetimedb"

    def __init__(self, tmp_path: Path) -> None:
        from .spacetimedb_double import DoubleServer
        from .spacetimedb_double.samples import SPEC
        self.double = DoubleServer(SPEC)
        self.double.__enter__()
        self.rows = self.double.state.databases["komm"].tables["blocked_ips"].rows

    def add_blocked(self, ip: str | None, reason: str) -> None:
        self.double.control().tx("komm", "blocked_ips", inserts=[[ip, reason, 0, True]])

    def delete_blocked(self, ip: str, reason: str) -> None:
        self.double.control().tx("komm", "blocked_ips", deletes=[[ip, reason, 0, True]])

    def open(self) -> Any:
        from komm_policy.directory.spacetimedb import SpacetimeDirectory
        from komm_policy.spacetimedb import Endpoint
        from komm_policy.spacetimedb.subscription import Backoff
        return SpacetimeDirectory(
            Endpoint.parse(f"spacetimedb://127.0.0.1:{self.double.port}/komm"),
            token=self.double.owner_token, backoff=Backoff(0.05, 0.2),
            max_staleness=MAX_STALENESS, ping_interval=0.2)

    def down(self) -> None:
        self.double.stop()

    def up(self) -> None:
        self.double.start()

    def close(self) -> None:
        self.double.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", "spacetimedb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made: Any = SqliteBackend(tmp_path) if request.param == "sqlite" else SpacetimeBackend(
        tmp_path)
    yield made
    close = getattr(made, "close", None)
    if close is not None:
        close()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        time.sleep(0.01)


def blocked(directory: Any, ip: str) -> bool:
    address = IP.parse(ip)
    return directory.snapshot().tables.exists(NET, (address,))


def opened(backend: Backend) -> Any:
    directory = backend.open()
    directory.require(SCHEMA, NEEDS)
    return directory


def test_bad_rows_are_skipped_counted_and_later_changes_still_apply(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    if isinstance(backend, SqliteBackend):
        backend.add_blocked(None, "null ip")  # also: NULL in a primary key
        conn = sqlite3.connect(backend.path)
        with conn:
            conn.execute("INSERT INTO admin_identities VALUES (NULL)")
        conn.close()
    backend.add_blocked("300.1.2.3", "typo")
    backend.add_blocked("10.0.0.1/8", "host bits")
    directory = opened(backend)  # the service starts on a store with bad rows
    try:
        assert directory.available
        assert blocked(directory, "192.0.2.66")  # the good rows are there
        assert not blocked(directory, "10.9.9.9")  # not all of 10.0.0.0/8
        expected = 3 if isinstance(backend, SqliteBackend) else 2
        eventually(lambda: directory.health.bad_rows.get("blocked_ips", 0) == expected)
        text = caplog.text
        assert "blocked_ips" in text and "'300.1.2.3'" in text and "host bits set" in text
        if isinstance(backend, SqliteBackend):
            assert directory.health.bad_rows["admin_identities"] == 1
            assert "column identity is not optional but has no value (NULL)" in text
        # later: another bad row, then a good one; the good one arrives
        backend.add_blocked("not an ip", "junk")
        backend.add_blocked("198.51.100.0/24", "good")
        eventually(lambda: blocked(directory, "198.51.100.7"))
        assert directory.health.bad_rows["blocked_ips"] == expected + 1
        warnings = [r.getMessage() for r in caplog.records if "300.1.2.3" in r.getMessage()]
        assert len(warnings) == 1, warnings  # one warning per bad row
    finally:
        directory.close()


def reasons(directory: Any, ip: str) -> list[str]:
    return [r.reason for r in directory.snapshot().tables.all(NET, (IP.parse(ip),))]


def test_a_row_skipped_for_its_key_comes_in_when_the_key_frees(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """`203.0.113.7`, `203.0.113.7/32` and `203.0.113.7/32 ` are three keys to the store
    and one network to the replica: a row after the first is a bad row, in the first read
    and in a later change alike, and waits; when the row that holds the key goes, the
    next one comes in."""
    caplog.set_level(logging.WARNING)
    backend.add_blocked("203.0.113.7", "first")
    backend.add_blocked("203.0.113.7/32", "second")
    directory = opened(backend)
    try:
        assert reasons(directory, "203.0.113.7") == ["first"]
        assert directory.health.bad_rows == {"blocked_ips": 1}
        assert "same primary_key (ip" in caplog.text
        backend.add_blocked("203.0.113.7/32 ", "third")  # a later change collides too
        eventually(lambda: directory.health.bad_rows.get("blocked_ips") == 2)
        assert reasons(directory, "203.0.113.7") == ["first"]
        caplog.set_level(logging.INFO, logger="komm_policy.directory.claims")
        backend.delete_blocked("203.0.113.7", "first")
        eventually(lambda: reasons(directory, "203.0.113.7") == ["second"])
        assert "skipped for its primary_key (ip), has it now" in caplog.text  # it came in: said
        backend.delete_blocked("203.0.113.7/32", "second")
        eventually(lambda: reasons(directory, "203.0.113.7") == ["third"])
        assert directory.health.bad_rows == {"blocked_ips": 2}
    finally:
        directory.close()


def test_an_unexpected_error_is_counted_and_the_refresher_keeps_going(
        backend: Backend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    directory = opened(backend)
    original = TablesSnapshot.apply
    failures = []

    def apply_failing_once(self: TablesSnapshot, changes: Any, on_bad_row: Any = None,
                           **options: Any) -> TablesSnapshot:
        if not failures:
            failures.append(1)
            raise RuntimeError("injected bug")
        return original(self, changes, on_bad_row, **options)
    try:
        monkeypatch.setattr(TablesSnapshot, "apply", apply_failing_once)
        backend.add_blocked("198.51.100.0/24", "first")
        eventually(lambda: directory.health.unexpected_errors >= 1 or bool(failures))
        backend.add_blocked("203.0.113.0/24", "second")
        eventually(lambda: blocked(directory, "203.0.113.9"), timeout=8)
        assert failures == [1]
        assert directory.health.refresh_errors >= 1
        assert directory.health.unexpected_errors >= 1
        assert "injected bug" in caplog.text
        eventually(lambda: blocked(directory, "198.51.100.9"), timeout=8)  # not lost
    finally:
        directory.close()


def test_stale_replica_fails_lookups_and_readiness_then_recovers(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    directory = opened(backend)
    policy = compile_text('stage connect { rule b: when exists("blocked_ips", ip = '
                          'client.ip) reject\n default accept }', "p.policy",
                          schema=SCHEMA).policy_set
    assert policy is not None
    service = HookService(policy_set=policy, directory=directory)
    try:
        assert service.ready[0]
        backend.down()
        down_at = time.monotonic()
        eventually(lambda: not directory.available, timeout=MAX_STALENESS + 4)
        assert time.monotonic() - down_at >= MAX_STALENESS * 0.8
        assert service.ready[0] is False  # /readyz 503
        with pytest.raises(DirectoryError):
            directory.snapshot().tables.exists(NET, (IP.parse("192.0.2.66"),))
        time.sleep(0.5)  # many refresh attempts while down …
        lines = [r for r in caplog.records if "unavailable" in r.getMessage()
                 or "disconnected" in r.getMessage() or "reconnect" in r.getMessage()]
        assert directory.health.refresh_errors > len(lines)  # … few log lines
        assert len(lines) <= 3
        backend.up()
        eventually(lambda: directory.available, timeout=20)  # backoff + snapshot, under load
        assert service.ready[0]
        assert blocked(directory, "192.0.2.66")
        assert "recovered" in caplog.text
    finally:
        directory.close()
