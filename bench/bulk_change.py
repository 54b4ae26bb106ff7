"""A large change to a serving store: how long until decisions see it, and where it goes.

    .venv/bin/python -m bench.bulk_change [--rows 100000]

`db import` of `rows` new rows into a table (an address index on it) that a running
`SqliteDirectory` replicates, then one refresh, as the refresher thread runs it.  Reported
in seconds: the import (validation, the insert, the change triggers: `import_s`, and the
insert alone without change triggers for comparison), the refresh split into the change
log read, the rows' re-read and the snapshot update, and the snapshot update of the same
rows applied row by row (`apply_row_by_row_s`, the way every change was applied before a
large change rebuilt the table's index in one pass) and in one pass (`apply_bulk_s`).
A decision sees the rows at most `refresh_interval` after the import committed, plus the
refresh.  Not part of `make bench` (it writes 100k rows twice); run it on its own.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from komm_policy.directory.schema import parse_schema
from komm_policy.directory.snapshot import IndexSpec, Needs
from komm_policy.directory.sqlite import SqliteDirectory, create_database
from komm_policy.directory.sqlite_tables import read_changes, read_table
from komm_policy.directory.transfer import import_tables

SCHEMA = parse_schema({"tables": {"blocked_domains": {"columns": {
    "domain": {"type": "address"}, "reason": {"type": "text", "optional": True}}}}})
DOMAIN = IndexSpec("blocked_domains", ("domain",))
CREATE = "CREATE TABLE blocked_domains (domain TEXT NOT NULL, reason TEXT)"


def _store(folder: Path, name: str) -> Path:
    path = folder / name
    create_database(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(CREATE)
        conn.executemany("INSERT INTO blocked_domains VALUES (?, 'seed')",
                         [(f"seed{i}.example",) for i in range(1000)])
    conn.close()
    return path


def measure(rows: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp())
    data = {"blocked_domains": [{"domain": f"d{i}.Example", "reason": "spam run"}
                                for i in range(rows)]}
    # the insert alone, without change capture
    plain = sqlite3.connect(folder / "plain.sqlite3")
    plain.execute(CREATE)
    started = time.perf_counter()
    with plain:
        plain.executemany("INSERT INTO blocked_domains VALUES (?, ?)",
                          [(r["domain"], r["reason"]) for r in data["blocked_domains"]])
    insert_plain = time.perf_counter() - started
    plain.close()

    path = _store(folder, "komm.sqlite3")
    directory = SqliteDirectory(path, start=False)
    directory.require(SCHEMA, Needs({DOMAIN}))
    before = directory.snapshot().tables
    conn = sqlite3.connect(path)
    started = time.perf_counter()
    import_tables(conn, data, SCHEMA)
    imported = time.perf_counter() - started
    conn.close()

    # the refresh's parts, on the refresher's own connection
    reader = directory._connection()
    started = time.perf_counter()
    _seq, changed, _gap = read_changes(reader, directory._seq)
    log_read = time.perf_counter() - started
    rowids = changed["blocked_domains"]
    started = time.perf_counter()
    current = read_table(reader, SCHEMA.tables["blocked_domains"], rowids)
    row_read = time.perf_counter() - started
    deleted = [{"rowid": r} for r in rowids]
    timings = {}
    for label, bulk in (("apply_row_by_row_s", False), ("apply_bulk_s", True)):
        started = time.perf_counter()
        after = before.apply({"blocked_domains": (deleted, current)}, bulk=bulk)
        timings[label] = round(time.perf_counter() - started, 3)
        assert after.counts() == {"blocked_domains": rows + 1000}
    started = time.perf_counter()
    directory.refresh()
    refresh = time.perf_counter() - started
    tables = directory.snapshot().tables
    assert tables.exists(DOMAIN, (f"d{rows - 1}.example",)), directory.last_error
    directory.close()
    return {"rows": rows, "import_s": round(imported, 3),
            "insert_without_triggers_s": round(insert_plain, 3),
            "refresh_s": round(refresh, 3), "change_log_read_s": round(log_read, 3),
            "rows_reread_s": round(row_read, 3), **timings,
            "note": "refresh = change log + re-read + snapshot update (bulk path chosen "
                    "by size) + publish; visible after import + up to refresh_interval "
                    "+ refresh"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.rows), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
