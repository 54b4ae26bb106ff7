"""SQLite as a table directory: any table replicated, changed rows applied incrementally
from the change log, bad rows skipped."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def required_directory(db: Path, caplog: pytest.LogCaptureFixture,
                       needs: Needs = NEEDS) -> Iterator[SqliteDirectory]:
    """A directory over `db` (bad rows and all: it starts despite them) that replicates
    `needs`, with warnings captured; closed after the block."""
    caplog.set_level(logging.WARNING)
    directory = SqliteDirectory(db, start=False, clock=Clock())
    directory.require(SCHEMA, needs)
    try:
        yield directory
    finally:
        directory.close()


def test_bad_rows_are_skipped_with_a_warning_and_counted(
        db: Path, caplog: pytest.LogCaptureFixture) -> None:
    execute(db, "INSERT INTO admin_identities VALUES (NULL)",
            "INSERT INTO blocked_ips (ip, reason) VALUES ('300.1.2.3', 'typo')",
            "INSERT INTO blocked_ips (ip, reason) VALUES ('10.0.0.1/8', 'host bits')")
    with required_directory(db, caplog, Needs({*NEEDS.indexes, ADMIN})) as directory:
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


def test_a_scope_id_is_a_bad_row_not_every_interface(
        db: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`fe80::1%eth0` was held as fe80::1 (all interfaces) although the wire refuses it
    in client.ip; now it is a bad row, as `db import` refuses it."""
    execute(db, "INSERT INTO blocked_ips (ip, reason) VALUES ('fe80::1%eth0', 'zone')",
            "INSERT INTO blocked_ips (ip, reason) VALUES ('fe80::%2/64', 'zone net')",
            "INSERT INTO blocked_domains VALUES ('a@[IPv6:fe80::1%eth0]', NULL)")
    with required_directory(db, caplog) as directory:
        assert directory.health.bad_rows["blocked_ips"] == 2
        assert directory.health.bad_rows["blocked_domains"] == 1
        snap = tables(directory)
        assert not snap.exists(NET, (IP.parse("fe80::1"),))
        assert not snap.exists(NET, (IP.parse("fe80::9"),))
        assert "'fe80::1%eth0' is not an IP address or network (a scope id" in caplog.text
        assert "'fe80::%2/64'" in caplog.text
        assert "'a@[IPv6:fe80::1%eth0]' is not an address or domain" in caplog.text


def test_address_rows_db_import_refuses_are_skipped_by_the_replica_too(
        db: Path, caplog: pytest.LogCaptureFixture) -> None:
    """breaker3 #2: `bad@@x`, `xn--.example` and a megabyte string were loaded silently
    (only white space was refused) although `db import` refuses them."""
    huge = "a" * (1 << 20)
    execute(db, "INSERT INTO blocked_domains VALUES ('bad@@x', NULL)",
            "INSERT INTO blocked_domains VALUES ('xn--.example', NULL)",
            f"INSERT INTO blocked_domains VALUES ('{huge}.example', NULL)",
            "INSERT INTO blocked_domains VALUES ('', 'no address, as the null sender')",
            "INSERT INTO blocked_domains VALUES ('Post@Ok.Example', NULL)")
    with required_directory(db, caplog) as directory:
        assert directory.health.bad_rows["blocked_domains"] == 3
        snap = tables(directory)
        for good in ("spam.example", "post@ok.example", ""):
            assert snap.exists(DOMAIN, (good,)), good
        assert not snap.exists(DOMAIN, ("bad@@x",))
        assert "'bad@@x' is not an address or domain" in caplog.text
        assert "'xn--.example'" in caplog.text
        # the megabyte value is named, not copied into the log
        assert max(len(r.getMessage()) for r in caplog.records) < 1000
        assert "(1,048,584 characters)" in caplog.text
        execute(db, "INSERT INTO blocked_domains VALUES ('a b@x.example', NULL)",
                "INSERT INTO blocked_domains VALUES ('later.example', NULL)")
        directory.refresh()  # later changes: the same check, the good row arrives
        assert tables(directory).exists(DOMAIN, ("later.example",))
        assert directory.health.bad_rows["blocked_domains"] == 4


RECREATE = ("CREATE TABLE blocked_domains_new (domain TEXT NOT NULL, reason TEXT)",
            "INSERT INTO blocked_domains_new VALUES ('new.example', 'n')",
            "DROP TABLE blocked_domains",
            "ALTER TABLE blocked_domains_new RENAME TO blocked_domains")


@pytest.mark.parametrize("statements", [
    RECREATE,  # SQLite's own recipe for changing a table (sqlite.org/lang_altertable.html)
    ("DROP TABLE blocked_domains",
     "CREATE TABLE blocked_domains (domain TEXT NOT NULL, reason TEXT)",
     "INSERT INTO blocked_domains VALUES ('new.example', 'n')"),
], ids=["rename-recipe", "drop-create"])
def test_a_re_created_table_is_re_captured_and_read_whole(
        db: Path, replica: SqliteDirectory, statements: tuple[str, ...],
        caplog: pytest.LogCaptureFixture) -> None:
    """breaker3 #7: the capture triggers died with the table; deleted rows kept matching,
    new rows were never seen, and nothing said so."""
    caplog.set_level(logging.WARNING)
    assert tables(replica).exists(DOMAIN, ("spam.example",))
    execute(db, *statements)
    replica.refresh()
    snap = tables(replica)
    assert not snap.exists(DOMAIN, ("spam.example",))  # deleted with the old table
    assert snap.exists(DOMAIN, ("new.example",))
    assert "blocked_domains was re-created" in caplog.text
    conn = connect(db)
    try:
        assert has_change_capture(conn, "blocked_domains")
    finally:
        conn.close()
    reloads = replica.reloads
    execute(db, "INSERT INTO blocked_domains VALUES ('later.example', 'l')")
    replica.refresh()  # captured again: a later row arrives, row by row
    assert tables(replica).exists(DOMAIN, ("later.example",))
    assert replica.reloads == reloads + 1
    assert replica.available


@pytest.mark.parametrize(("statements", "reason"), [
    (("DROP TABLE blocked_domains",), "no table 'blocked_domains'"),
    (("DROP TABLE blocked_domains",
      "CREATE TABLE blocked_domains (name TEXT NOT NULL, reason TEXT)"),
     "table 'blocked_domains' has no column 'domain'"),
])
def test_a_dropped_or_changed_table_fails_the_replica_naming_it(
        db: Path, statements: tuple[str, ...], reason: str) -> None:
    clock = Clock()
    replica = SqliteDirectory(db, start=False, clock=clock, max_staleness=10.0)
    replica.require(SCHEMA, NEEDS)
    try:
        execute(db, *statements)
        replica.refresh()
        assert reason in (replica.last_error or "")
        clock.now += 11  # past max_staleness: lookups fall back, /readyz 503 says why
        replica.refresh()
        assert not replica.available
        assert reason in replica.unavailable_reason
        with pytest.raises(DirectoryError, match=reason):
            tables(replica)
        execute(db, "DROP TABLE IF EXISTS blocked_domains",
                "CREATE TABLE blocked_domains (domain TEXT NOT NULL, reason TEXT)",
                "INSERT INTO blocked_domains VALUES ('back.example', 'b')")
        replica.refresh()  # put right: it recovers, read whole
        assert replica.available
        assert tables(replica).exists(DOMAIN, ("back.example",))
    finally:
        replica.close()


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


def test_a_text_value_that_is_not_utf8_is_a_bad_row_not_a_dead_replica(
        db: Path, caplog: pytest.LogCaptureFixture) -> None:
    """breaker6 #1: one row whose text is not UTF-8 (SQLite stores what it is given), in
    any column the replica reads, failed every read ("Could not decode to UTF-8"): the
    replica stopped applying changes and went stale, then every decision needing it got
    the fallback.  Now that row is a bad row, at the start and in a later change."""
    execute(db, "INSERT INTO blocked_ips (ip, reason) VALUES ('192.0.2.0/24', "
                "CAST(X'61FF62' AS TEXT))")
    with required_directory(db, caplog) as directory:
        assert directory.available
        assert directory.health.bad_rows["blocked_ips"] == 1
        assert "text that is not UTF-8 (b'a\\xffb')" in caplog.text
        assert not tables(directory).exists(NET, (IP.parse("192.0.2.9"),))
        execute(db, "INSERT INTO blocked_domains VALUES ('x.example', CAST(X'C328' AS TEXT))",
                "INSERT INTO blocked_ips (ip, reason) VALUES ('198.51.100.0/24', 'ok')")
        directory.refresh()
        assert directory.health.bad_rows["blocked_domains"] == 1
        snap = tables(directory)
        assert snap.exists(NET, (IP.parse("198.51.100.9"),))  # later changes still apply
        assert not snap.exists(DOMAIN, ("x.example",))
