"""The SQLite sink: records as rows of the store's `mta_log`.

`mta_log` is a view over the table `mta_log_records`, which holds each record's JSON
line (`record`) with its `id` and `time`; every other column of the view is derived from
the JSON by SQLite when read, so JSONL and `mta_log` store the same record.  (Derived
columns of the table itself would cost every insert: SQLite computes generated columns,
virtual ones too, on INSERT — measured: 14 of 25 µs a row for the 17 columns.)  A unique
index on `id` makes a batch given again after a crash a no-op (`INSERT OR IGNORE`).  The
view takes `INSERT INTO mta_log (record)` too (a trigger fills `id` and `time` from the
JSON).

The sink never creates a store (a missing file is an error, retried), but it creates or
completes `mta_log` in one: the view is made anew when a newer record version derives
more columns, and an `mta_log` table of an older shape has its rows moved into
`mta_log_records` once (rowids kept).  A store that was deleted and created anew (`db
init`) while the writer runs is noticed by its file identity (device, inode), checked
before and after each batch: the sink reopens and writes the batch into the new file, so
nothing goes into a deleted file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import msgspec

from .sinks import Sink, SpooledRecord

log = logging.getLogger(__name__)

def _text(path: str) -> str:
    """The text at `path` of the record, safe to compare: SQLite's json_extract ends a
    text at a NUL (`"a@b\\u0000@evil"` read as `a@b`, and `= 'a@b'` matched it), so a
    value whose JSON holds `\\u0000` is shown as its JSON text without the quotes (NUL as
    `\\u0000`, a backslash as `\\\\`): never equal to another value's column.  Only the
    value's own JSON text is searched (SQLite keeps the record parsed between the calls
    of one row; searching the whole record took longer than the extraction)."""
    json_text = f"record -> '{path}'"
    return (f"CASE WHEN coalesce(instr({json_text}, '\\u0000'), 0) = 0 "
            f"THEN json_extract(record, '{path}') "
            f"ELSE substr({json_text}, 2, length({json_text}) - 2) END")


# Derived columns: name, type, expression over `record` (docs/decision-record.md).
# `id` and `time` are stored columns, filled by the sink: indexing them through
# json_extract would parse every record twice on insert (measured: 21 µs a row instead
# of 9).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("record_version", "INTEGER", "coalesce(json_extract(record, '$.record_version'), 0)"),
    ("stage", "TEXT", _text("$.stage")),
    ("client_ip", "TEXT", _text("$.client_ip")),
    ("helo", "TEXT", _text("$.helo")),
    ("sender", "TEXT", _text("$.sender")),
    ("recipients", "TEXT", "json_extract(record, '$.recipients')"),  # JSON text
    ("sasl_login", "TEXT", _text("$.sasl_login")),
    ("queue_id", "TEXT", _text("$.queue_id")),
    ("action", "TEXT", _text("$.action")),
    ("reply", "TEXT",
     "json_extract(record, '$.reply.status') || ' ' || "
     f"coalesce({_text('$.reply.enhanced')} || ' ', '') || {_text('$.reply.message')}"),
    ("quarantine_reason", "TEXT", _text("$.quarantine_reason")),
    ("rule", "TEXT", _text("$.rule.name")),
    ("rule_location", "TEXT",
     f"{_text('$.rule.file')} || ':' || json_extract(record, '$.rule.line')"),
    ("fallback", "INTEGER", "coalesce(json_extract(record, '$.fallback'), 0)"),
    ("cause", "TEXT", _text("$.cause")),
    ("duration_ms", "REAL", "json_extract(record, '$.duration_ms')"),
    ("policy_version", "TEXT", _text("$.policy_version")),
)


TABLE = "mta_log_records"
"""The table behind the `mta_log` view."""

_CREATE_TABLE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (\n    id TEXT NOT NULL,\n"
                 "    time TEXT NOT NULL,\n    record TEXT NOT NULL\n)")
_INSERT_TRIGGER = f"""CREATE TRIGGER mta_log_insert INSTEAD OF INSERT ON mta_log
BEGIN
    INSERT INTO {TABLE} (id, time, record) VALUES (
        coalesce(NEW.id, json_extract(NEW.record, '$.id'),
                 'unknown-' || lower(hex(randomblob(8)))),
        coalesce(NEW.time, json_extract(NEW.record, '$.time'), ''), NEW.record);
END"""


def create_view_sql() -> str:
    """`mta_log`: the stored columns (and rowid) plus every derived column."""
    columns = ",\n".join(f"    {expr} AS {column}" for column, _kind, expr in COLUMNS)
    return (f"CREATE VIEW mta_log AS SELECT\n    rowid AS rowid, id, time, record,\n"
            f"{columns}\nFROM {TABLE}")


def ensure_mta_log(conn: sqlite3.Connection) -> None:
    """Create `mta_log_records` with its indexes and the `mta_log` view (anew when it
    lacks derived columns); move the rows of an `mta_log` table of an older shape into
    it once.  Idempotent; one transaction."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        found = conn.execute(
            "SELECT type, sql FROM sqlite_schema WHERE name = 'mta_log'").fetchone()
        view = create_view_sql()
        if found is not None and found[0] == "table":
            _move_rows(conn)
            found = None
        conn.execute(_CREATE_TABLE)
        conn.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS mta_log_id ON {TABLE} (id)")
        conn.execute(f"CREATE INDEX IF NOT EXISTS mta_log_time ON {TABLE} (time)")
        if found is None or found[1] != view:
            conn.execute("DROP VIEW IF EXISTS mta_log")  # drops its trigger too
            conn.execute(view)
            conn.execute(_INSERT_TRIGGER)


def _move_rows(conn: sqlite3.Connection) -> None:
    """An `mta_log` table (older versions: derived columns in the table, or `id` and
    `time` derived from the JSON) becomes rows of `mta_log_records`, rowids kept."""
    log.warning("decision log: upgrading the mta_log table (a view over %s)", TABLE)
    info = {row[1]: row[6] for row in conn.execute("PRAGMA table_xinfo(mta_log)")}
    record = "record" if "record" in info else "'{}'"

    def stored(column: str) -> str:  # hidden 0: an ordinary column, else derived
        return (column if info.get(column) == 0
                else f"json_extract({record}, '$.{column}')")

    conn.execute(_CREATE_TABLE)
    conn.execute(
        f"INSERT OR IGNORE INTO {TABLE} (rowid, id, time, record) SELECT rowid, "
        f"coalesce({stored('id')}, 'legacy-' || rowid), coalesce({stored('time')}, ''), "
        f"{record} FROM mta_log ORDER BY rowid")
    conn.execute("DROP TABLE mta_log")  # and its indexes


def _identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)  # FileNotFoundError while the store is gone
    return stat.st_dev, stat.st_ino


class SqliteSink:
    """Rows in the store's `mta_log` table; re-inserting a record id is a no-op.
    Retention: rows older than `max_age` seconds and beyond the newest `max_rows` are
    deleted (0: no limit); rows are only ever there once the sink took them."""

    name = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout: float = 1.0,
                 max_age: float = 0.0, max_rows: int = 0) -> None:
        self.path = Path(path).resolve()
        self.busy_timeout = busy_timeout
        self.max_age = max_age
        self.max_rows = max_rows
        self.reopened = 0
        self._conn: sqlite3.Connection | None = None
        self._open()

    def _open(self) -> None:
        identity = _identity(self.path)
        # mode=rw: never a new empty store where the real one was expected
        conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True,
                               timeout=self.busy_timeout, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: no fsync per batch; a crash cannot corrupt the store, a power
            # loss can lose the last batches (the spool has them, see the README).
            conn.execute("PRAGMA synchronous=NORMAL")
            ensure_mta_log(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._identity = identity

    def _reopen(self) -> None:
        self._close_connection()
        self.reopened += 1
        log.warning("decision log: %s was replaced; writing to the new file", self.path)
        self._open()

    def _close_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def write(self, records: Sequence[SpooledRecord]) -> None:
        if self._conn is None or _identity(self.path) != self._identity:
            self._reopen()
        self._insert(records)
        if _identity(self.path) != self._identity:
            # Replaced while we wrote: the batch may sit in the deleted file.  Write it
            # again into the new one (ids make this a no-op for rows already there).
            self._reopen()
            self._insert(records)
            if _identity(self.path) != self._identity:
                raise OSError(f"{self.path} keeps being replaced; retrying")

    def _insert(self, records: Sequence[SpooledRecord]) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.executemany(
                f"INSERT OR IGNORE INTO {TABLE} (id, time, record) VALUES (?, ?, ?)",
                [(r.id, r.time, r.line.decode()) for r in records])

    def retain(self, now: float) -> None:
        if self._conn is None:
            return
        if self.max_age > 0:
            cutoff = datetime.fromtimestamp(now - self.max_age, UTC).isoformat(
                timespec="microseconds")
            self._delete_chunks(f"SELECT rowid FROM {TABLE} WHERE time < ? LIMIT 5000",
                                (cutoff,))
        if self.max_rows > 0:
            count = self._conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
            excess = count - self.max_rows
            while excess > 0:
                chunk = min(excess, 5000)
                with self._conn:
                    self._conn.execute(f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid "
                                       f"FROM {TABLE} ORDER BY rowid LIMIT ?)", (chunk,))
                excess -= chunk

    def _delete_chunks(self, select: str, args: tuple) -> None:
        assert self._conn is not None
        while True:  # small transactions: the store is shared with the directory tools
            with self._conn:
                deleted = self._conn.execute(
                    f"DELETE FROM {TABLE} WHERE rowid IN ({select})", args).rowcount
            if deleted < 5000:
                return

    def close(self) -> None:
        self._close_connection()


class SqliteSpec(msgspec.Struct, frozen=True):
    name: ClassVar[str] = "sqlite"
    path: str
    max_age: float = 0.0
    max_rows: int = 0

    def open(self) -> Sink:
        return SqliteSink(self.path, max_age=self.max_age, max_rows=self.max_rows)
