"""The embedded SQLite store: the origin's tables, and a `Directory` replicating them.

Lookups never touch SQLite on the hook path.  `SqliteDirectory` loads the tables into an
in-memory `DirectoryIndex` and a background thread keeps it current: it polls a change
counter that triggers on the directory tables bump (a write to `mta_log` does not count),
reloads when it moves, and swaps the new index in atomically.  Lookups are dictionary
reads.  When the database cannot be read (file removed, locked, corrupt) for longer than
`max_staleness`, lookups raise `DirectoryError`, so policies fall back instead of deciding
on data that may be outdated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import (
    AccountRow,
    BlockedIpRow,
    CategoryRow,
    DirectoryError,
    DirectoryRows,
    SubscriptionRow,
)
from .health import ReplicaHealth, Unavailable
from .memory import DirectoryIndex, Snapshot, serve_lookups
from .schema import Schema
from .snapshot import BadRow, Needs, TablesSnapshot
from .sqlite_tables import (
    install_change_capture,
    last_change,
    read_changes,
    read_schema,
    read_table,
)

log = logging.getLogger(__name__)

EMPTY_INDEX = DirectoryIndex(DirectoryRows())

DIRECTORY_TABLES = ("blocked_ips", "message_categories", "account", "admin_identities",
                    "subscriptions")

SCHEMA = """
CREATE TABLE IF NOT EXISTS komm_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO komm_meta (key, value) VALUES ('directory_version', 0);
INSERT OR IGNORE INTO komm_meta (key, value) VALUES ('schema_version', 1);

CREATE TABLE IF NOT EXISTS blocked_ips (
    ip         TEXT PRIMARY KEY,             -- an address or a CIDR range
    reason     TEXT NOT NULL DEFAULT '',
    blocked_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s','now') AS INTEGER)),
    active     INTEGER NOT NULL DEFAULT 1
);

CREATE TABLE IF NOT EXISTS message_categories (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL,
    email_address TEXT NOT NULL,
    description   TEXT NOT NULL DEFAULT '',
    active        INTEGER NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX IF NOT EXISTS message_categories_email
    ON message_categories (email_address COLLATE NOCASE);

CREATE TABLE IF NOT EXISTS account (
    id          INTEGER PRIMARY KEY,         -- the member number
    identity    TEXT NOT NULL DEFAULT '',
    name        TEXT NOT NULL DEFAULT '',
    email       TEXT NOT NULL,
    is_active   INTEGER NOT NULL DEFAULT 1,
    last_synced INTEGER
);
CREATE INDEX IF NOT EXISTS account_email ON account (email COLLATE NOCASE);
CREATE INDEX IF NOT EXISTS account_identity ON account (identity);

CREATE TABLE IF NOT EXISTS admin_identities (
    identity TEXT PRIMARY KEY
);

CREATE TABLE IF NOT EXISTS subscriptions (
    id                    INTEGER PRIMARY KEY,
    subscriber_account_id INTEGER NOT NULL,
    subscriber_email      TEXT NOT NULL DEFAULT '',
    category_id           INTEGER NOT NULL,
    subscribed_at         INTEGER,
    active                INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS subscriptions_account ON subscriptions (subscriber_account_id);
CREATE INDEX IF NOT EXISTS subscriptions_category ON subscriptions (category_id);
CREATE INDEX IF NOT EXISTS subscriptions_email
    ON subscriptions (subscriber_email COLLATE NOCASE);

"""

_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS komm_{table}_{event} AFTER {event_sql} ON {table}
BEGIN
    UPDATE komm_meta SET value = value + 1 WHERE key = 'directory_version';
END;
"""


def connect(path: str | Path, *, readonly: bool = False, create: bool = True,
            timeout: float = 5.0) -> sqlite3.Connection:
    """A connection with the settings every user of the store needs.  With
    `create=False` a missing file is an error instead of a new empty store."""
    if readonly or not create:
        mode = "ro" if readonly else "rw"
        uri = f"file:{Path(path).resolve()}?mode={mode}"
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False)
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    return conn


def init_schema(conn: sqlite3.Connection) -> None:
    """Create the tables, indexes and change triggers (idempotent)."""
    with conn:
        conn.executescript(SCHEMA)
        for table in DIRECTORY_TABLES:
            for event, event_sql in (("ins", "INSERT"), ("upd", "UPDATE"), ("del", "DELETE")):
                conn.execute(_TRIGGER.format(table=table, event=event, event_sql=event_sql))
    install_change_capture(conn, DIRECTORY_TABLES)
    from ..decisionlog.mta_log import ensure_mta_log  # the decision log's table and view
    ensure_mta_log(conn)


def write_rows(conn: sqlite3.Connection, rows: DirectoryRows) -> None:
    """Insert (or replace) directory rows, e.g. the demo data set."""
    with conn:
        conn.executemany(
            "INSERT OR REPLACE INTO blocked_ips (ip, reason, active) VALUES (?, ?, ?)",
            [(r.ip, r.reason, int(r.active)) for r in rows.blocked_ips])
        conn.executemany(
            "INSERT OR REPLACE INTO message_categories (id, name, email_address, description,"
            " active) VALUES (?, ?, ?, ?, ?)",
            [(r.id, r.name, r.email_address, r.description, int(r.active))
             for r in rows.message_categories])
        conn.executemany(
            "INSERT OR REPLACE INTO account (id, identity, name, email, is_active)"
            " VALUES (?, ?, ?, ?, ?)",
            [(r.id, r.identity, r.name, r.email, int(r.is_active)) for r in rows.account])
        conn.executemany("INSERT OR REPLACE INTO admin_identities (identity) VALUES (?)",
                         [(i,) for i in rows.admin_identities])
        conn.executemany(
            "INSERT OR REPLACE INTO subscriptions (id, subscriber_account_id, subscriber_email,"
            " category_id, active) VALUES (?, ?, ?, ?, ?)",
            [(r.id, r.subscriber_account_id, r.subscriber_email, r.category_id, int(r.active))
             for r in rows.subscriptions])


def read_rows(conn: sqlite3.Connection, on_bad_row: BadRow | None = None) -> DirectoryRows:
    """All directory rows, in one read transaction (a consistent snapshot).  A row with
    NULL where a value is needed (`INSERT INTO admin_identities VALUES (NULL)`) is skipped
    and reported to `on_bad_row(table, key, reason)`."""

    def keep(table: str, key: object, row: tuple[object, ...], needed: tuple[int, ...],
             names: tuple[str, ...]) -> bool:
        for position in needed:
            if row[position] is None:
                if on_bad_row is not None:
                    on_bad_row(table, f"{names[0]}={key!r}",
                               f"column {names[position]} is NULL")
                return False
        return True

    with conn:
        conn.execute("BEGIN")
        names = ("ip", "reason", "active")
        blocked = tuple(
            BlockedIpRow(r[0], r[1] or "", bool(r[2]))
            for r in conn.execute("SELECT ip, reason, active FROM blocked_ips")
            if keep("blocked_ips", r[0], r, (0,), names))
        names = ("id", "name", "email_address", "description", "active")
        categories = tuple(
            CategoryRow(r[0], r[1] or "", r[2], r[3] or "", bool(r[4]))
            for r in conn.execute(
                "SELECT id, name, email_address, description, active FROM message_categories")
            if keep("message_categories", r[0], r, (2,), names))
        names = ("id", "name", "email", "identity", "is_active")
        accounts = tuple(
            AccountRow(r[0], r[1] or "", r[2], r[3] or "", bool(r[4]))
            for r in conn.execute("SELECT id, name, email, identity, is_active FROM account")
            if keep("account", r[0], r, (2,), names))
        admins = tuple(
            r[0] for r in conn.execute("SELECT identity FROM admin_identities")
            if keep("admin_identities", r[0], r, (0,), ("identity",)))
        names = ("id", "subscriber_account_id", "category_id", "subscriber_email", "active")
        subscriptions = tuple(
            SubscriptionRow(r[0], r[1], r[2], r[3] or "", bool(r[4]))
            for r in conn.execute(
                "SELECT id, subscriber_account_id, category_id, subscriber_email, active"
                " FROM subscriptions")
            if keep("subscriptions", r[0], r, (1, 2), names))
    return DirectoryRows(blocked, categories, accounts, admins, subscriptions)


class SqliteDirectory:
    """A `Directory` served from an in-memory replica of a SQLite store.

    Two parts, published together as one immutable `Snapshot`: the tables the policy set
    reads (`require(schema, needs)`), updated row by row from the change log, and the
    index of the five first-version helpers (`ip_blocked`, `category`, …), rebuilt when one
    of their tables changes.  The refresher thread is supervised: an unexpected error is
    logged (rate-limited), counted in `health`, and the next poll tries again."""

    blocking = False
    """Lookups are dictionary reads of the replica."""

    def __init__(
        self,
        path: str | Path,
        *,
        refresh_interval: float = 1.0,
        max_staleness: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
        schema: Schema | None = None,
        needs: Needs | None = None,
    ) -> None:
        self.path = Path(path)
        self.refresh_interval = refresh_interval
        self.max_staleness = max_staleness
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._data_version: int | None = None
        self._directory_version: int | None = None
        self._index: DirectoryIndex | None = None
        self._schema = schema or Schema({})
        self._needs = needs or Needs()
        self._tables: TablesSnapshot | None = None
        self._seq = 0
        self._last_ok = clock()
        self._available = False
        self._lock = threading.Lock()  # one refresher at a time (thread, require, tests)
        self.health = ReplicaHealth(log, str(self.path), clock)
        self.last_error: str | None = None
        self.reloads = 0
        if not self.path.exists():
            raise DirectoryError(f"{self.path}: no such database (create it with "
                                 "`komm-policy db init`)")
        self.refresh()
        if self._index is None:
            raise DirectoryError(f"{self.path}: cannot read the directory: {self.last_error}")
        if start:
            self.start()

    # -- replica maintenance --------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="komm-sqlite-replica",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _poll(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            self.refresh()

    def require(self, schema: Schema, needs: Needs) -> None:
        """Replicate and index what a policy set reads.  Raises `DirectoryError` when a
        table or column it needs is not in the store (the policy set must not go live)."""
        with self._lock:
            conn = self._connection()
            stored = read_schema(conn, sorted(needs.tables))
            for name in sorted(needs.tables):
                table = stored.tables.get(name)
                if table is None:
                    raise DirectoryError(f"{self.path}: no table {name!r} (the schema file "
                                         "names it; create it or correct the schema)")
                wanted = schema.tables[name]
                missing = [c for c in wanted.column_names if c not in table.by_name]
                if missing:
                    raise DirectoryError(f"{self.path}: table {name!r} has no column "
                                         f"{missing[0]!r}")
            self._install_capture(sorted(needs.tables))
            self._schema, self._needs = schema, needs
            if needs.legacy and self._index is EMPTY_INDEX:
                self._index = DirectoryIndex(read_rows(conn, self.health.bad_row),
                                             self.health.bad_row)
            self._seq = last_change(conn)
            self._tables = self._read_tables(conn)
            self._publish()

    def _install_capture(self, tables: list[str]) -> None:
        try:
            writer = connect(self.path, create=False, timeout=1.0)
            try:
                install_change_capture(writer, tables)
            finally:
                writer.close()
        except sqlite3.Error as exc:  # e.g. a read-only store: whole-table reloads instead
            log.warning("directory %s: cannot install change capture (%s); changed tables "
                        "are reloaded whole", self.path, exc)

    def _read_tables(self, conn: sqlite3.Connection) -> TablesSnapshot:
        rows = {}
        with conn:
            conn.execute("BEGIN")
            for name in sorted(self._needs.tables):
                rows[name] = read_table(conn, self._schema.tables[name])
        return TablesSnapshot.build(self._schema, self._needs, rows, self.health.bad_row)

    def refresh(self) -> None:
        """Apply what changed in the store; track availability.  Never raises."""
        with self._lock:
            try:
                self._refresh()
            except (sqlite3.Error, OSError, DirectoryError) as exc:
                self._failed(f"{type(exc).__name__}: {exc}", expected=True)
            except Exception as exc:  # a bug or a surprise: count it, keep the refresher
                self._failed(f"{type(exc).__name__}: {exc}", expected=False)

    def _failed(self, message: str, *, expected: bool) -> None:
        self.last_error = message
        self.health.failed(message, expected=expected)
        self._drop_connection()
        if self._available and self._clock() - self._last_ok > self.max_staleness:
            self._available = False
            self._publish()

    def _refresh(self) -> None:
        self._check_file()
        conn = self._connection()
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        if data_version != self._data_version or self._index is None:
            self._apply_changes(conn)
            self._data_version = data_version
        self._last_ok = self._clock()
        if not self._available:
            self._available = True
            self._publish()
        self.last_error = None
        self.health.ok()

    def _apply_changes(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("SELECT value FROM komm_meta WHERE key = "
                               "'directory_version'").fetchone()
        directory_version = version[0] if version else None
        if self._index is None or self._seq < 0 or last_change(conn) < self._seq:
            seq, changed, reset = last_change(conn), {}, True  # first read, or a new store
        else:
            seq, changed, reset = read_changes(conn, self._seq)
        legacy_changed = reset or (directory_version != self._directory_version and (
            not changed or any(t in DIRECTORY_TABLES for t in changed)))
        if not (legacy_changed or changed):
            return
        index = self._index
        if index is None or (legacy_changed and self._needs.legacy):
            index = DirectoryIndex(read_rows(conn, self.health.bad_row), self.health.bad_row)
        elif legacy_changed:  # no policy calls the helpers: their index is not kept
            index = EMPTY_INDEX
        tables = self._tables
        if tables is not None and self._needs:
            if reset:
                tables = self._read_tables(conn)
            else:
                updates = {}
                for name, rowids in changed.items():
                    if name in self._needs.tables:
                        current = read_table(conn, self._schema.tables[name], rowids)
                        updates[name] = ([{"rowid": r} for r in rowids], current)
                tables = tables.apply(updates, self.health.bad_row)
        self._index, self._tables = index, tables
        self._directory_version = directory_version
        self._seq = seq
        self.reloads += 1
        self._available = True
        self._publish()

    def _check_file(self) -> None:
        stat = os.stat(self.path)  # raises FileNotFoundError when the file was removed
        inode = (stat.st_dev, stat.st_ino)
        if self._inode is not None and inode != self._inode:
            self._drop_connection()  # replaced by a new file: read the new one
            self._data_version = None
            self._directory_version = None
            self._seq = -1  # below any sequence number: the next read reloads everything
            if self._needs:
                self._install_capture(sorted(self._needs.tables))
        self._inode = inode

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, readonly=True, timeout=1.0)
        return self._conn

    def _drop_connection(self) -> None:
        # data_version values of different connections are not comparable: a new
        # connection must re-read the directory version.
        self._data_version = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    @property
    def available(self) -> bool:
        return self._available and self._index is not None

    @property
    def age(self) -> float:
        """Seconds since the store was last read successfully."""
        return self._clock() - self._last_ok

    def _publish(self) -> None:
        """Point the lookup methods at the current snapshot, or at an error raiser."""
        if self._available and self._index is not None:
            self._serving: Snapshot | Unavailable = Snapshot(self._index, self._tables)
        else:
            self._serving = Unavailable(
                f"directory {self.path} unavailable for more than {self.max_staleness:g}s: "
                f"{self.last_error}")
        serve_lookups(self, self._serving)

    def snapshot(self) -> Snapshot | Unavailable:
        """What one decision reads: the snapshot current when it started (or the error)."""
        return self._serving

    def counts(self) -> dict[str, int]:
        if self._index is None or not self._available:
            raise DirectoryError(f"directory {self.path} unavailable: {self.last_error}")
        return self._index.counts()


def create_database(path: str | Path, rows: DirectoryRows | None = None) -> None:
    """Create (or upgrade) a store at `path`, optionally filling it with rows."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        init_schema(conn)
        if rows is not None:
            write_rows(conn, rows)
    finally:
        conn.close()
