"""SQLite as a table directory: any table replicated, changed rows applied incrementally
from the change log, bad rows skipped."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from komm_policy.demo import DEMO_TABLES
from komm_policy.directory import DirectoryError
from komm_policy.directory import sqlite as sqlite_module
from komm_policy.directory.schema import parse_schema
from komm_policy.directory.snapshot import IndexSpec, Needs, spec_name
from komm_policy.directory.sqlite import SqliteDirectory, connect, create_database
from komm_policy.directory.sqlite_tables import has_change_capture, read_schema
from komm_policy.ipset import IP

SCHEMA = parse_schema({"tables": {
    "blocked_domains": {"columns": {"domain": {"type": "address"},
                                    "reason": {"type": "text", "optional": True}}},
    "blocked_ips": {"primary_key": ["ip"], "columns": {
        "ip": {"type": "network"}, "reason": {"type": "text"},
        "active": {"type": "bool"}}},
    "admin_identities": {"primary_key": ["identity"], "columns": {
        "identity": {"type": "identity"}}},
}})
DOMAIN = IndexSpec("blocked_domains", ("domain",))
NET = IndexSpec("blocked_ips", ("ip",), "net")
NEEDS = Needs({DOMAIN, NET})
ADMIN = IndexSpec("admin_identities", ("identity",))


def execute(path: Path, *statements: str) -> None:
    conn = connect(path)
    try:
        with conn:
            for sql in statements:
                conn.execute(sql)
    finally:
        conn.close()


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "komm.sqlite3"
    create_database(path, DEMO_TABLES)
    execute(path, "CREATE TABLE blocked_domains (domain TEXT NOT NULL, reason TEXT)",
            "INSERT INTO blocked_domains VALUES ('Spam.Example', 'spam')",
            "INSERT INTO blocked_domains VALUES ('bücher.example', NULL)")
    return path


@pytest.fixture
def replica(db: Path) -> Iterator[SqliteDirectory]:
    directory = SqliteDirectory(db, start=False, clock=Clock(), max_staleness=10.0)
    directory.require(SCHEMA, NEEDS)
    yield directory
    directory.close()


def tables(replica: SqliteDirectory):
    return replica.snapshot().tables


def test_db_schema_reads_any_table(db: Path) -> None:
    conn = connect(db)
    schema = read_schema(conn)
    conn.close()
    table = schema.tables["blocked_domains"]
    assert [(c.name, c.type, c.optional) for c in table.columns] == [
        ("domain", "text", False), ("reason", "text", True)]
    assert schema.tables["blocked_ips"].primary_key == ("ip",)
    assert "mta_log" not in schema.tables and "komm_changes" not in schema.tables


def test_an_operator_table_is_replicated_and_changes_apply_row_by_row(
        db: Path, replica: SqliteDirectory, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = tables(replica)
    assert snap.first(DOMAIN, ("spam.EXAMPLE",)).reason == "spam"
    assert snap.exists(DOMAIN, ("xn--bcher-kva.example",))
    whole_reads: list[str] = []
    original = sqlite_module.read_table

    def counting(conn, table, rowids=None):
        if rowids is None:
            whole_reads.append(table.name)
        return original(conn, table, rowids)
    monkeypatch.setattr(sqlite_module, "read_table", counting)
    execute(db, "INSERT INTO blocked_domains VALUES ('new.example', 'n')",
            "UPDATE blocked_domains SET reason = 'changed' WHERE domain = 'Spam.Example'",
            "DELETE FROM blocked_ips WHERE ip = '192.0.2.66'")
    replica.refresh()
    after = tables(replica)
    assert whole_reads == []  # only the changed rows were read
    assert after.first(DOMAIN, ("new.example",)).reason == "n"
    assert after.first(DOMAIN, ("spam.example",)).reason == "changed"
    assert not after.exists(NET, (IP.parse("192.0.2.66"),))
    # the snapshot a decision held before is untouched
    assert snap.first(DOMAIN, ("spam.example",)).reason == "spam"
    assert snap.exists(NET, (IP.parse("192.0.2.66"),))
    assert not snap.exists(DOMAIN, ("new.example",))


def test_a_missing_table_or_column_refuses_the_policy_set(db: Path,
                                                          replica: SqliteDirectory) -> None:
    other = parse_schema({"tables": {"nope": {"columns": {"x": {"type": "text"}}}}})
    with pytest.raises(DirectoryError, match="no table 'nope'"):
        replica.require(other, Needs({IndexSpec("nope", ("x",))}))
    other = parse_schema({"tables": {"blocked_domains": {"columns": {
        "domain": {"type": "address"}, "owner": {"type": "text"}}}}})
    with pytest.raises(DirectoryError, match="no column 'owner'"):
        replica.require(other, Needs({DOMAIN}))
    assert tables(replica).exists(DOMAIN, ("spam.example",))  # still the old tables


def test_bad_rows_are_skipped_with_a_warning_and_counted(
        db: Path, caplog: pytest.LogCaptureFixture) -> None:
    execute(db, "INSERT INTO admin_identities VALUES (NULL)",
            "INSERT INTO blocked_ips (ip, reason) VALUES ('300.1.2.3', 'typo')",
            "INSERT INTO blocked_ips (ip, reason) VALUES ('10.0.0.1/8', 'host bits')")
    caplog.set_level(logging.WARNING)
    directory = SqliteDirectory(db, start=False, clock=Clock())  # starts despite them
    directory.require(SCHEMA, Needs({*NEEDS.indexes, ADMIN}))
    try:
        assert directory.available
        assert directory.health.bad_rows["admin_identities"] == 1
        assert directory.health.bad_rows["blocked_ips"] == 2
        snap = tables(directory)
        assert not snap.exists(NET, (IP.parse("10.9.9.9"),))  # not all of 10/8 blocked
        text = caplog.text
        assert "admin_identities" in text and "column identity is not optional" in text
        assert "'300.1.2.3'" in text and "host bits set" in text
        # the refresher keeps applying later changes
        execute(db, "INSERT INTO blocked_ips (ip, reason) VALUES (NULL, 'null')",
                "INSERT INTO blocked_ips (ip, reason) VALUES ('198.51.100.0/24', 'ok')")
        directory.refresh()
        assert tables(directory).exists(NET, (IP.parse("198.51.100.9"),))
        assert not tables(directory).exists(spec_name(ADMIN), ("c200" + "0" * 60,))
    finally:
        directory.close()


def test_any_table_name_is_captured_quotes_included(db: Path) -> None:
    """breaker3 #11: `check` took a table named `it's` (as `db schema` writes it) but the
    replica refused to install its change capture, so `serve` would not start."""
    execute(db, 'CREATE TABLE "it\'s ""odd""" ("select" TEXT NOT NULL)',
            'INSERT INTO "it\'s ""odd""" VALUES (\'a.example\')')
    name = 'it\'s "odd"'
    schema = parse_schema({"tables": {name: {"columns": {"select": {"type": "address"}}}}})
    spec = IndexSpec(name, ("select",))
    replica = SqliteDirectory(db, start=False, clock=Clock())
    replica.require(schema, Needs({spec}))
    try:
        assert tables(replica).exists(spec, ("a.example",))
        execute(db, 'INSERT INTO "it\'s ""odd""" VALUES (\'b.example\')')
        replica.refresh()
        assert tables(replica).exists(spec, ("b.example",))
        conn = connect(db)
        try:
            assert has_change_capture(conn, name)
        finally:
            conn.close()
    finally:
        replica.close()


def test_a_gap_in_the_change_log_reloads_whole_tables(db: Path, replica: SqliteDirectory
                                                      ) -> None:
    execute(db, "INSERT INTO blocked_domains VALUES ('late.example', 'l')")
    execute(db, "DELETE FROM komm_changes")  # as if pruned past this replica's position
    execute(db, "INSERT INTO blocked_domains VALUES ('later.example', 'l')")
    replica.refresh()
    snap = tables(replica)
    assert snap.exists(DOMAIN, ("late.example",)) and snap.exists(DOMAIN, ("later.example",))
