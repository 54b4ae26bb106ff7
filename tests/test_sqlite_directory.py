"""The embedded SQLite store (directory/sqlite.py): schema, rows, and the replica.

`SqliteDirectory` is built with `start=False` and refreshed by hand, with an injected
clock, except in the one test of the background thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory import DirectoryError
from komm_policy.directory.sqlite import (
    SqliteDirectory,
    connect,
    create_database,
    write_tables,
)
from komm_policy.directory.sqlite_tables import read_schema, read_table

from .shipped import SCHEMA, Helpers, helper_needs
from .shipped import directory as demo_directory


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "komm.sqlite3"
    create_database(path, DEMO_TABLES)
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def replica(db: Path, clock: FakeClock) -> Iterator[SqliteDirectory]:
    directory = SqliteDirectory(db, refresh_interval=1.0, max_staleness=10.0, clock=clock,
                                start=False)
    directory.require(SCHEMA, helper_needs())
    yield directory
    directory.close()


def execute(path: Path, sql: str, *params: object) -> None:
    """One write through another connection, as an admin tool would make it."""
    conn = connect(path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def read_rows(conn: sqlite3.Connection) -> dict[str, list[dict[str, object]]]:
    """Every origin table's rows ({column: value}, without rowid), sorted, as stored."""
    schema = read_schema(conn, list(DEMO_TABLES))
    return {name: sorted(({k: v for k, v in row.items() if k != "rowid"}
                          for row in read_table(conn, schema.tables[name])), key=repr)
            for name in DEMO_TABLES}


def as_stored(tables) -> dict[str, list[dict[str, object]]]:
    """Rows as SQLite gives them back: booleans as 0/1."""
    return {name: sorted(({k: int(v) if isinstance(v, bool) else v for k, v in row.items()}
                          for row in rows), key=repr) for name, rows in tables.items()}


def move_store(src: Path, dst: Path) -> None:
    """Move a store with its WAL side files (same inodes)."""
    for suffix in ("", "-wal", "-shm"):
        old = src.with_name(src.name + suffix)
        if old.exists():
            os.rename(old, dst.with_name(dst.name + suffix))


# ---------------------------------------------------------------------------------------
# Schema and rows


def test_create_write_read_round_trip(db: Path) -> None:
    conn = connect(db, readonly=True)
    try:
        rows = read_rows(conn)
    finally:
        conn.close()
    assert rows == as_stored(DEMO_TABLES)


def test_write_tables_replaces_by_key(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    create_database(path)
    conn = connect(path)
    blocked = {"ip": "192.0.2.1", "reason": "a", "blocked_at": 1, "active": True}
    category = {"id": 1, "name": "A", "email_address": "a@x.example", "description": "",
                "active": True}
    account = {"id": 1, "identity": "id1", "name": "One", "email": "one@x.example",
               "is_active": True, "last_synced": None}
    try:
        write_tables(conn, {
            "blocked_ips": [blocked], "message_categories": [category], "account": [account],
            "admin_identities": [{"identity": "id1"}],
            "subscriptions": [{"id": 1, "subscriber_account_id": 1, "category_id": 1,
                               "subscriber_email": "one@x.example", "subscribed_at": None,
                               "active": True}]})
        write_tables(conn, {
            "blocked_ips": [{**blocked, "reason": "b", "active": False}],
            "message_categories": [{**category, "name": "A2", "email_address": "a2@x.example",
                                    "description": "d", "active": False}],
            "admin_identities": [{"identity": "id1"}]})
        rows = read_rows(conn)
    finally:
        conn.close()
    assert rows["blocked_ips"] == [{**blocked, "reason": "b", "active": 0}]
    assert rows["message_categories"] == [{**category, "name": "A2", "active": 0,
                                           "email_address": "a2@x.example",
                                           "description": "d"}]
    assert rows["account"] == as_stored({"a": [account]})["a"]
    assert rows["admin_identities"] == [{"identity": "id1"}]
    assert len(rows["subscriptions"]) == 1


def test_create_database_is_idempotent(db: Path) -> None:
    create_database(db)
    create_database(db, DEMO_TABLES)
    conn = connect(db, readonly=True)
    try:
        assert read_rows(conn) == as_stored(DEMO_TABLES)
    finally:
        conn.close()


def test_connect_without_create_refuses_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    with pytest.raises(sqlite3.OperationalError):
        connect(missing, create=False)
    assert not missing.exists()
    with pytest.raises(sqlite3.OperationalError):
        connect(missing, readonly=True)
    assert not missing.exists()
    conn = connect(missing)  # the default creates it
    conn.close()
    assert missing.exists()


def test_connect_without_create_opens_an_existing_file(db: Path) -> None:
    conn = connect(db, create=False)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute("INSERT INTO mta_log (record) VALUES ('{\"id\":\"x\"}')")
        conn.commit()
    finally:
        conn.close()


OLD_MTA_LOG = """
CREATE TABLE mta_log (
    id             TEXT PRIMARY KEY,
    time           TEXT NOT NULL,
    stage          TEXT NOT NULL,
    client_ip      TEXT,
    sender         TEXT,
    recipients     TEXT NOT NULL,
    queue_id       TEXT,
    action         TEXT NOT NULL,
    reply          TEXT,
    rule           TEXT,
    rule_location  TEXT,
    fallback       INTEGER NOT NULL DEFAULT 0,
    cause          TEXT,
    duration_ms    REAL NOT NULL,
    policy_version TEXT NOT NULL,
    record         TEXT NOT NULL
);
CREATE INDEX mta_log_time ON mta_log (time);
INSERT INTO mta_log VALUES ('old-1', '2026-01-01T00:00:00+00:00', 'rcpt', '192.0.2.1',
    'a@x.example', '[]', NULL, 'accept', NULL, NULL, NULL, 0, NULL, 0.1, 'v1', '{}');
"""


# ---------------------------------------------------------------------------------------
# Lookups


ADDRESSES = [
    "info@solawi.example", "INFO@SOLAWI.EXAMPLE", "Gemuese@Solawi.example",
    "gemuese@solawi.example", "buchhaltung@solawi.example", "vorstand@solawi.example",
    "nobody@solawi.example", "Anna.Mueller@gmail.com", "anna.mueller@GMAIL.com",
    "jane@solawi.example", "JANE@Solawi.Example", "john.doe@example.org",
    "peter.schmidt@web.example", "",
]
IPS = [
    "192.0.2.66", "192.0.2.67", "2001:db8:4860::1", "2001:db8:4860:ffff::1",
    "2001:db8:4861::1", "198.18.0.0", "198.19.255.255", "198.20.0.0", "198.17.255.255",
    "203.0.113.200", "::ffff:192.0.2.66", "127.0.0.1",
]


def test_lookups_match_the_in_memory_directory(replica: SqliteDirectory) -> None:
    """The helpers (policy functions over the tables) answer alike from the SQLite
    replica and from the same rows in memory."""
    sqlite, memory = Helpers(replica), Helpers(demo_directory())
    for ip in IPS:
        assert sqlite.ip_blocked(ip) == memory.ip_blocked(ip), ip
    for address in ADDRESSES:
        assert sqlite.category(address) == memory.category(address), address
        assert sqlite.account(address) == memory.account(address), address
        assert sqlite.is_admin(address) == memory.is_admin(address), address
        for list_address in ("info@solawi.example", "gemuese@solawi.example"):
            assert (sqlite.subscribed(address, list_address)
                    == memory.subscribed(address, list_address)), (address, list_address)


def test_demo_lookups(replica: SqliteDirectory) -> None:
    """The demo data's intent, spelled out: CIDR ranges, case, inactive rows ignored."""
    ask = Helpers(replica)
    assert ask.ip_blocked("192.0.2.66")
    assert ask.ip_blocked("2001:db8:4860:abcd::1")  # in the /48
    assert not ask.ip_blocked("2001:db8:4861::1")
    assert ask.ip_blocked("198.19.1.1")  # in 198.18.0.0/15
    assert not ask.ip_blocked("198.20.0.1")
    assert not ask.ip_blocked("203.0.113.200")  # inactive entry
    gemuese = ask.category("GEMUESE@solawi.EXAMPLE")
    assert gemuese is not None and gemuese.id == 2 and gemuese.name == "Gemuese"
    assert ask.category("vorstand@solawi.example") is None  # inactive category
    account = ask.account("ANNA.MUELLER@gmail.com")
    assert account is not None and account.id == 101
    assert ask.account("john.doe@example.org") is None  # inactive account
    assert ask.is_admin("Jane@Solawi.Example")
    assert not ask.is_admin("anna.mueller@gmail.com")
    assert ask.subscribed("Anna.Mueller@Gmail.com", "info@solawi.example")
    # inactive subscription
    assert not ask.subscribed("anna.mueller@gmail.com", "gemuese@solawi.example")
    assert not ask.subscribed("john.doe@example.org", "info@solawi.example")  # inactive
    assert ask.subscribed("peter.schmidt@web.example", "gemuese@solawi.example")
    assert replica.available
    assert replica.counts()["message_categories"] == 4  # rows replicated, active or not


# ---------------------------------------------------------------------------------------
# Refresh


def test_refresh_picks_up_a_change_from_another_connection(db: Path,
                                                           replica: SqliteDirectory) -> None:
    assert replica.reloads == 1
    replica.refresh()
    assert replica.reloads == 1  # nothing changed: no reload
    assert Helpers(replica).category("new@solawi.example") is None
    execute(db, "INSERT INTO message_categories (id, name, email_address) VALUES (9, 'New', "
                "'New@Solawi.example')")
    replica.refresh()
    assert replica.reloads == 2
    category = Helpers(replica).category("new@solawi.example")
    assert category is not None and category.name == "New"
    execute(db, "UPDATE account SET is_active = 0 WHERE id = 104")
    replica.refresh()
    assert replica.reloads == 3
    assert Helpers(replica).account("peter.schmidt@web.example") is None
    execute(db, "DELETE FROM blocked_ips WHERE ip = '192.0.2.66'")
    replica.refresh()
    assert not Helpers(replica).ip_blocked("192.0.2.66")


def test_a_write_to_mta_log_does_not_reload(db: Path, replica: SqliteDirectory) -> None:
    execute(db, "INSERT INTO mta_log (record) VALUES (?)", '{"id":"r1","stage":"rcpt"}')
    replica.refresh()
    execute(db, "INSERT INTO mta_log (record) VALUES (?)", '{"id":"r2","stage":"rcpt"}')
    replica.refresh()
    assert replica.reloads == 1
    assert replica.available


def test_removed_file_is_served_until_max_staleness(tmp_path: Path, db: Path, clock: FakeClock,
                                                    replica: SqliteDirectory) -> None:
    move_store(db, tmp_path / "elsewhere.sqlite3")
    replica.refresh()
    assert replica.last_error is not None
    assert replica.available
    clock.advance(9.0)
    replica.refresh()
    assert replica.available
    assert Helpers(replica).category("info@solawi.example") is not None  # still the last good data
    clock.advance(2.0)  # 11 s since the last good read > max_staleness 10 s
    replica.refresh()
    assert not replica.available
    with pytest.raises(DirectoryError, match="unavailable"):
        Helpers(replica).category("info@solawi.example")
    with pytest.raises(DirectoryError):
        Helpers(replica).ip_blocked("192.0.2.66")
    with pytest.raises(DirectoryError):
        replica.counts()


def test_lookups_work_again_when_the_file_comes_back(tmp_path: Path, db: Path,
                                                     clock: FakeClock,
                                                     replica: SqliteDirectory) -> None:
    away = tmp_path / "elsewhere.sqlite3"
    move_store(db, away)
    replica.refresh()
    clock.advance(30.0)
    replica.refresh()
    assert not replica.available
    move_store(away, db)
    replica.refresh()
    assert replica.available
    assert replica.last_error is None
    assert Helpers(replica).category("info@solawi.example") is not None


def test_changes_made_while_the_file_was_away_are_read(tmp_path: Path, db: Path,
                                                       clock: FakeClock,
                                                       replica: SqliteDirectory) -> None:
    """The file is moved away, edited there, and moved back (same inode).  The replica
    lost its connection in between, so it must not trust the old connection's
    data_version: the edit has to show up."""
    away = tmp_path / "elsewhere.sqlite3"
    move_store(db, away)
    replica.refresh()
    assert replica.last_error is not None
    execute(away, "UPDATE message_categories SET name = 'Changed' WHERE id = 1")
    move_store(away, db)
    replica.refresh()
    assert replica.last_error is None
    category = Helpers(replica).category("info@solawi.example")
    assert category is not None and category.name == "Changed"


def test_replaced_file_is_reread(tmp_path: Path, db: Path, replica: SqliteDirectory) -> None:
    other = tmp_path / "new.sqlite3"
    create_database(other, {"message_categories": [
        {"id": 7, "name": "Only", "email_address": "only@solawi.example"}]})
    old_inode = db.stat().st_ino
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    os.replace(other, db)
    assert db.stat().st_ino != old_inode
    replica.refresh()
    assert replica.reloads == 2
    assert Helpers(replica).category("info@solawi.example") is None
    only = Helpers(replica).category("only@solawi.example")
    assert only is not None and only.id == 7


def test_opening_a_missing_file_names_db_init(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    with pytest.raises(DirectoryError, match="komm-policy db init"):
        SqliteDirectory(missing, start=False)
    assert not missing.exists()


def test_opening_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DirectoryError, match="cannot read"):
        SqliteDirectory(junk, start=False)


def test_background_thread_picks_up_changes(db: Path) -> None:
    directory = SqliteDirectory(db, refresh_interval=0.02, max_staleness=5.0)
    directory.require(SCHEMA, helper_needs())
    try:
        assert Helpers(directory).category("late@solawi.example") is None
        execute(db, "INSERT INTO message_categories (id, name, email_address) VALUES (8, "
                    "'Late', 'late@solawi.example')")
        deadline = time.monotonic() + 1.0
        while Helpers(directory).category("late@solawi.example") is None:
            assert time.monotonic() < deadline, "change not picked up within a second"
            time.sleep(0.01)
        assert directory.reloads >= 2
    finally:
        directory.close()


def test_a_locked_store_becomes_unavailable_after_the_staleness_bound(
        db: Path, replica: SqliteDirectory, clock: FakeClock) -> None:
    """Another process holding an exclusive lock: the replica keeps answering from what
    it has, then fails lookups once the store has been unreadable for max_staleness."""
    info = Helpers(replica).category("info@solawi.example")
    assert info is not None
    replica._drop_connection()  # the locker must be the only connection to take the lock
    locker = sqlite3.connect(db, timeout=0)
    try:
        locker.execute("PRAGMA locking_mode=EXCLUSIVE")
        locker.execute("BEGIN EXCLUSIVE")
        locker.execute("UPDATE message_categories SET name = 'Locked' WHERE id = 1")
        replica.refresh()
        assert replica.last_error is not None and "locked" in replica.last_error
        assert Helpers(replica).category("info@solawi.example") == info  # within the bound
        clock.advance(replica.max_staleness + 1)
        replica.refresh()
        assert not replica.available
        with pytest.raises(DirectoryError, match="unavailable"):
            Helpers(replica).category("info@solawi.example")
    finally:
        locker.rollback()
        locker.close()
    replica.refresh()
    assert replica.available
    assert Helpers(replica).category("info@solawi.example") == info
