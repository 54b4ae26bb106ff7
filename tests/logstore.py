"""What the decision log stored, and a store held locked by another process: shared by
the in-process (`test_decisionlog_process`) and end-to-end (`test_log_faults`) tests."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
"""


def jsonl_ids(path: Path) -> list[str]:
    """The record ids in a JSONL sink's file, in order (none while it does not exist).

    Only whole lines count: a running writer may be in the middle of appending one (read
    while it was, the tail is not yet JSON).  Every whole line must be a record."""
    if not path.exists():
        return []
    whole, _, _tail = path.read_bytes().rpartition(b"\n")
    return [json.loads(line)["id"] for line in whole.splitlines()]


def store_ids(path: Path) -> list[str]:
    """The record ids in a store's `mta_log` table."""
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM mta_log")]
    finally:
        conn.close()


@contextmanager
def store_locked(path: Path) -> Iterator[None]:
    """Another process holds an exclusive transaction on the SQLite store at `path`
    while the block runs (writers get SQLITE_BUSY), and commits it afterwards."""
    locker = subprocess.Popen([sys.executable, "-c", _LOCKER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        yield
    finally:
        assert locker.stdin is not None
        locker.stdin.write("\n")
        locker.stdin.close()
        locker.wait(10)
        if locker.stdout is not None:
            locker.stdout.close()
