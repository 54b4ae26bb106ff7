"""The embedded SQLite store, and a `Directory` replicating any of its tables.

Lookups never touch SQLite on the hook path.  `SqliteDirectory` replicates the tables a
policy set reads (`require(schema, needs)`: named by the schema file, whatever they are)
into an in-memory `TablesSnapshot`, and a background thread keeps it current: the store's
change log (`sqlite_tables`: triggers record each changed rowid) says which rows to re-read,
so a 1-row change costs one indexed read and O(log n) per index, however large the table;
the new snapshot is swapped in atomically.  When the database cannot be read (file removed,
locked, corrupt) for longer than `max_staleness`, lookups raise `DirectoryError`, so
policies fall back instead of deciding on data that may be outdated.
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

from . import DirectoryError
from .health import ReplicaHealth, Unavailable
from .memory import Snapshot
from .schema import Schema
from .snapshot import Needs, TablesSnapshot
from .sqlite_store import SCHEMA, connect, create_database, init_schema, write_tables
from .sqlite_tables import (
    has_change_capture,
    install_change_capture,
    last_change,
    read_changes,
    read_table,
    store_problems,
)

__all__ = ["SCHEMA", "SqliteDirectory", "connect", "create_database", "init_schema",
           "poll_wait", "write_tables"]

log = logging.getLogger(__name__)

class SqliteDirectory:
    """A `Directory` served from an in-memory replica of a SQLite store.

    It replicates the tables the policy set reads (`require(schema, needs)`), updated row
    by row from the store's change log and published as one immutable `Snapshot`.  The
    refresher thread is supervised: an unexpected error is logged (rate-limited), counted
    in `health`, and the next poll tries again."""

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
        self._schema_version: int | None = None
        """`PRAGMA schema_version` at the last read: DDL since then is checked."""
        self._loaded = False
        self._captured = True
        """Whether every replicated table has change capture (else: whole reloads)."""
        self._recapture = False
        """A new store file: install change capture before its next whole read."""
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
        if not self._loaded:
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
        """The refresher thread: supervised, so nothing ends it but `close` (an error is
        logged, counted as unexpected in `health`, and the next poll tries again)."""
        while True:
            try:
                if self._stop.wait(poll_wait(self.refresh_interval)):
                    return
                self.refresh()
            except Exception as exc:  # refresh never raises; this is the loop's own guard
                with self._lock:
                    self._failed(f"refresher: {type(exc).__name__}: {exc}", expected=False)
                if self._stop.wait(1.0):
                    return

    def require(self, schema: Schema, needs: Needs) -> None:
        """Replicate and index what a policy set reads.  Raises `DirectoryError` when a
        table or column it needs is not in the store (the policy set must not go live)."""
        with self._lock:
            conn = self._connection()
            self._verify(conn, schema, needs)
            self._install_capture(sorted(needs.tables))
            self._schema, self._needs = schema, needs
            self._seq = last_change(conn)
            self._tables = self._read_tables(conn)
            self._publish()

    def _verify(self, conn: sqlite3.Connection, schema: Schema, needs: Needs) -> None:
        """Raise `DirectoryError` naming the first table or column the policy set reads
        that the store lacks, or a declared `primary_key` that is not a key of the store
        (`declared_keys`), at `require`, and whenever the store is read whole again (a
        store re-created by `db init` has only the origin's tables)."""
        problems = store_problems(conn, schema, needs.tables, str(self.path))
        if problems:
            raise DirectoryError(problems[0])

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
        conn = self._connection()
        self._captured = all(has_change_capture(conn, t) for t in tables)

    def _read_tables(self, conn: sqlite3.Connection) -> TablesSnapshot:
        rows = {}
        with conn:
            conn.execute("BEGIN")
            self._verify(conn, self._schema, self._needs)
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
        changed = message != self.last_error
        self.last_error = message
        self.health.failed(message, expected=expected)
        self._drop_connection()
        if self._available and self._clock() - self._last_ok > self.max_staleness:
            self._available = False
            self._publish()
        elif changed and not self._available:
            self._publish()  # lookups and /readyz give the current reason

    def _refresh(self) -> None:
        self._check_file()
        conn = self._connection()
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        if data_version != self._data_version or not self._loaded:
            self._apply_changes(conn)
            self._data_version = data_version
        self._last_ok = self._clock()
        if not self._available:
            self._available = True
            self._publish()
        self.last_error = None
        self.health.ok()

    def _apply_changes(self, conn: sqlite3.Connection) -> None:
        recreated = self._tables_recreated(conn)
        if recreated or not self._loaded or self._seq < 0 or last_change(conn) < self._seq:
            seq, changed, reset = last_change(conn), {}, True  # first read, or a new store
        else:
            seq, changed, reset = read_changes(conn, self._seq)
            reset = reset or not self._captured  # no change log: reload whole tables
        needed = self._needs.tables
        if not (reset or any(name in needed for name in changed)):
            self._seq = seq
            self._loaded = True
            return
        tables = self._tables
        if tables is not None and self._needs:
            if reset:
                if self._recapture:  # a new file: its tables first, then its triggers
                    self._verify(conn, self._schema, self._needs)
                    self._install_capture(sorted(self._needs.tables))
                    self._recapture = False
                    seq = last_change(conn)
                tables = self._read_tables(conn)
            else:
                updates = {}
                for name, rowids in changed.items():
                    if name in needed:
                        current = read_table(conn, self._schema.tables[name], rowids)
                        updates[name] = ([{"rowid": r} for r in rowids], current)
                tables = tables.apply(updates, self.health.bad_row)
        self._tables = tables
        self._seq = seq
        self._loaded = True
        self.reloads += 1
        self._available = True
        self._publish()

    def _tables_recreated(self, conn: sqlite3.Connection) -> bool:
        """After DDL in the store (`PRAGMA schema_version` moved): whether a replicated
        table lost its change-capture triggers — dropped and re-created (SQLite's own
        ALTER TABLE recipe, migration tools) — so it must be re-captured and read whole;
        else its later changes would never be seen.  Raises `DirectoryError` when a table
        or column the policies read is gone (the refresh fails: lookups fall back once
        the replica is older than `max_staleness`, and /readyz says which)."""
        version = conn.execute("PRAGMA schema_version").fetchone()[0]
        if version == self._schema_version:
            return False
        if self._schema_version is None or not self._loaded or not self._needs:
            self._schema_version = version
            return False
        self._verify(conn, self._schema, self._needs)  # before noting the version: retried
        self._schema_version = version
        lost = [t for t in sorted(self._needs.tables) if not has_change_capture(conn, t)]
        if not lost:
            return False
        if self._captured:
            log.warning("directory %s: table %s was re-created (its change capture is "
                        "gone); capture re-installed, reading it whole", self.path,
                        ", ".join(lost))
        self._recapture = True
        return True

    def _check_file(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            # removed: whatever appears here next is a new store, even on the same inode
            # (free again once our connection to the removed file is closed)
            self._inode = None
            raise
        inode = (stat.st_dev, stat.st_ino)
        if inode != self._inode and (self._inode is not None or self._loaded):
            self._drop_connection()  # replaced by a new file: read the new one
            self._data_version = None
            self._seq = -1  # below any sequence number: the next read reloads everything
            self._recapture = bool(self._needs)
        self._inode = inode

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self.path, readonly=True, timeout=1.0)
        return self._conn

    def _drop_connection(self) -> None:
        # data_version values of different connections are not comparable: a new
        # connection must re-read the change log.
        self._data_version = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    @property
    def available(self) -> bool:
        return self._available and self._loaded

    @property
    def age(self) -> float:
        """Seconds since the store was last read successfully."""
        return self._clock() - self._last_ok

    @property
    def unavailable_reason(self) -> str:
        """Why lookups fail (what `/readyz` reports): the current error, e.g. the table
        the policies read that a re-created store lacks."""
        if not self._loaded:
            return f"directory {self.path} not loaded yet: {self.last_error}"
        return (f"directory {self.path} unavailable for more than "
                f"{self.max_staleness:g}s: {self.last_error}")

    def _publish(self) -> None:
        """Serve the current snapshot, or an error raiser."""
        if self._available and self._loaded:
            self._serving: Snapshot | Unavailable = Snapshot(self._tables)
        else:
            self._serving = Unavailable(self.unavailable_reason)

    def snapshot(self) -> Snapshot | Unavailable:
        """What one decision reads: the snapshot current when it started (or the error)."""
        return self._serving

    def counts(self) -> dict[str, int]:
        """Rows per replicated table.  Raises `DirectoryError` while unavailable."""
        if not self._loaded or not self._available:
            raise DirectoryError(f"directory {self.path} unavailable: {self.last_error}")
        return self._tables.counts() if self._tables is not None else {}


def poll_wait(interval: float) -> float:
    """Seconds the refresher waits between polls: `interval`, within what a thread can wait
    (`threading.TIMEOUT_MAX`; a day at most), and 1 s for a value that is no number of
    seconds (NaN, negative).  The configuration refuses those; a directory built in code
    must not lose its refresher to them (`Event.wait(1e300)` raises OverflowError)."""
    if not interval > 0:
        return 1.0
    return min(interval, 86_400.0, threading.TIMEOUT_MAX)
