"""The embedded SQLite store itself: connecting, creating, initialising, writing rows.

`SqliteDirectory` (directory/sqlite.py) replicates its tables; `db` commands and tests
create and fill it through these functions.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .origin import ORIGIN_DDL, ORIGIN_TABLES
from .sqlite_tables import install_change_capture, quote

SCHEMA = """
CREATE TABLE IF NOT EXISTS komm_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO komm_meta (key, value) VALUES ('schema_version', 1);

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
    """Create the store's own tables and the origin's tables (`origin.ORIGIN_DDL`), with
    change capture on the latter (idempotent)."""
    with conn:
        conn.executescript(SCHEMA)
        conn.executescript(ORIGIN_DDL)
    install_change_capture(conn, ORIGIN_TABLES)
    from ..decisionlog.mta_log import ensure_mta_log  # the decision log's table and view
    ensure_mta_log(conn)


def write_tables(conn: sqlite3.Connection,
                 tables: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
    """Insert (or replace) rows of any tables ({table: [{column: value}]}), e.g. the demo
    data set, in one transaction.  Booleans are stored as 0/1, as SQLite has them."""
    with conn:
        for name, rows in tables.items():
            for row in rows:
                columns = list(row)
                conn.execute(
                    f"INSERT OR REPLACE INTO {quote(name)} "
                    f"({', '.join(map(quote, columns))}) "
                    f"VALUES ({', '.join('?' * len(columns))})",
                    [int(v) if isinstance(v, bool) else v for v in row.values()])


def create_database(path: str | Path,
                    tables: Mapping[str, Iterable[Mapping[str, Any]]] | None = None) -> None:
    """Create (or upgrade) a store at `path` with the origin's tables, optionally filling
    tables with rows ({table: [{column: value}]})."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = connect(path)
    try:
        init_schema(conn)
        if tables is not None:
            write_tables(conn, tables)
    finally:
        conn.close()
