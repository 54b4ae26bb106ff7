"""A schema file's `primary_key` must be a key of the store (`directory.declared_keys`):
the decision record names a row a lookup found by it, so two rows with the same declared
key would be named alike.  A declared key that is not the store's primary key, a UNIQUE
index or unique constraint (or wider than one) refuses the policy set where the replica
meets the store, naming the `primary_key` entry (file:line:col), the table and the
store's keys; rows that still collide on it in the replica (SQLite's UNIQUE lets NULLs
repeat, an address is compared in lower case) are bad rows: skipped, one warning naming
table, key and reason, counted.  SQLite, and the SpacetimeDB directory through the test
double that speaks its wire format."""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from komm_policy.decisionlog.records import encode_record, make_record
from komm_policy.directory import DirectoryError
from komm_policy.directory.schema import load_schema
from komm_policy.directory.snapshot import IndexSpec, Needs
from komm_policy.directory.spacetimedb import SpacetimeDirectory
from komm_policy.directory.spacetimedb_apply import OFFLOAD_MIN_ROWS
from komm_policy.directory.sqlite import SqliteDirectory, create_database
from komm_policy.runtime import decide
from komm_policy.spacetimedb import Endpoint
from komm_policy.spacetimedb.check import check_module
from komm_policy.spacetimedb.schema import parse_module
from komm_policy.spacetimedb.subscription import Backoff

from .conftest import POLICIES
from .shipped import compile_with_directory, helper_needs
from .spacetimedb_double import DoubleServer
from .spacetimedb_double.samples import SPEC
from .spacetimedb_double.state import Database
from .test_runtime import request
from .test_sqlite_tables import execute

DOMAINS = IndexSpec("blocked_domains", ("domain",))


def schema_file(tmp_path: Path, primary_key: str, table: str = "blocked_domains") -> Path:
    path = tmp_path / "schema.toml"
    path.write_text(f"# the operator's schema\n\n[tables.{table}]\n{primary_key}\n"
                    'columns.domain = { type = "address" }\n'
                    'columns.reason = { type = "text", optional = true }\n')
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "komm.sqlite3"
    create_database(path, {})
    execute(path, "CREATE TABLE blocked_domains (id INTEGER PRIMARY KEY, "
                  "domain TEXT NOT NULL, reason TEXT)",
            "INSERT INTO blocked_domains (domain, reason) VALUES ('spam.example', 'spam')")
    return path


def replica(store: Path, schema_path: Path) -> SqliteDirectory:
    directory = SqliteDirectory(store, start=False)
    try:
        directory.require(load_schema(schema_path), Needs({DOMAINS}))
    except BaseException:
        directory.close()
        raise
    return directory


def test_a_declared_key_that_is_no_key_of_the_store_refuses_the_policy_set(
        tmp_path: Path, store: Path) -> None:
    path = schema_file(tmp_path, 'primary_key = ["domain"]')
    with pytest.raises(DirectoryError) as info:
        replica(store, path)
    message = str(info.value)
    assert message.startswith(f"{path}:4:1: table 'blocked_domains': primary_key [domain] "
                              "is not a key of the store"), message
    assert "its keys: [id]" in message and "leave primary_key out" in message
    # a table without any key: refused as well, naming that
    execute(store, "CREATE TABLE plain (domain TEXT NOT NULL, reason TEXT)")
    plain = schema_file(tmp_path, 'primary_key = ["domain"]', table="plain")
    directory = SqliteDirectory(store, start=False)
    try:
        with pytest.raises(DirectoryError, match=re.escape(
                f"{plain}:4:1: table 'plain': primary_key [domain] is not a key of the "
                "store") + ".*it has no primary key or unique column"):
            directory.require(load_schema(plain), Needs({IndexSpec("plain", ("domain",))}))
    finally:
        directory.close()


@pytest.mark.parametrize("declared", ['primary_key = ["id"]', "",
                                      'primary_key = ["domain"]',
                                      'primary_key = ["domain", "reason"]'])
def test_the_store_key_a_unique_index_or_a_wider_key_is_accepted(
        tmp_path: Path, store: Path, declared: str) -> None:
    execute(store, "CREATE UNIQUE INDEX one_domain ON blocked_domains (domain)")
    text = schema_file(tmp_path, declared).read_text()
    if "id" in declared:
        text = text.replace("columns.domain", 'columns.id = { type = "integer" }\n'
                                              "columns.domain")
    (tmp_path / "schema.toml").write_text(text)
    directory = replica(store, tmp_path / "schema.toml")
    try:
        assert directory.snapshot().tables.exists(DOMAINS, ("spam.example",))
    finally:
        directory.close()


def skipped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "skipping a row" in r.getMessage()]


def test_rows_that_collide_on_the_declared_key_are_bad_rows(
        tmp_path: Path, store: Path, caplog: pytest.LogCaptureFixture) -> None:
    """UNIQUE(domain) in SQLite is case-sensitive, the `address` column is not; UNIQUE
    (reason) lets NULL repeat.  The first row read keeps the key, each other is skipped,
    reported once and counted; the store's later changes collide the same way."""
    caplog.set_level(logging.WARNING)
    execute(store, "CREATE UNIQUE INDEX one_domain ON blocked_domains (domain)",
            "INSERT INTO blocked_domains (domain, reason) VALUES ('Spam.Example', 'shout')")
    directory = replica(store, schema_file(tmp_path, 'primary_key = ["domain"]'))
    try:
        snap = directory.snapshot().tables
        assert [r.reason for r in snap.all(DOMAINS, ("spam.example",))] == ["spam"]
        assert directory.health.bad_rows == {"blocked_domains": 1}
        (line,) = skipped(caplog)
        assert "blocked_domains (domain='Spam.Example', rowid 2)" in line
        assert "rowid 1 has the same primary_key (domain" in line
        # changes: a new colliding row is skipped; the others apply
        execute(store, "INSERT INTO blocked_domains (domain, reason) VALUES "
                       "('NEW.example', 'a'), ('new.example', 'b'), ('other.example', 'c')")
        directory.refresh()
        snap = directory.snapshot().tables
        assert [r.reason for r in snap.all(DOMAINS, ("new.example",))] == ["a"]
        assert snap.exists(DOMAINS, ("other.example",))
        assert directory.health.bad_rows == {"blocked_domains": 2}
        assert "domain='new.example', rowid 4" in skipped(caplog)[1]
        # the row that had the key changes it: the identity is free, nothing collides
        execute(store, "UPDATE blocked_domains SET domain = 'moved.example' "
                       "WHERE reason = 'a'",
                "UPDATE blocked_domains SET reason = 'b2' WHERE reason = 'b'")
        directory.refresh()
        snap = directory.snapshot().tables
        assert [r.reason for r in snap.all(DOMAINS, ("new.example",))] == ["b2"]
        assert snap.exists(DOMAINS, ("moved.example",))
        assert directory.health.bad_rows == {"blocked_domains": 2}
    finally:
        directory.close()


def test_null_keys_that_unique_lets_repeat_are_bad_rows(
        tmp_path: Path, store: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    execute(store, "CREATE UNIQUE INDEX one_reason ON blocked_domains (reason)",
            "INSERT INTO blocked_domains (domain, reason) VALUES ('a.example', NULL), "
            "('b.example', NULL), ('c.example', NULL)")
    directory = replica(store, schema_file(tmp_path, 'primary_key = ["reason"]'))
    try:
        snap = directory.snapshot().tables
        assert snap.exists(DOMAINS, ("a.example",))
        assert not snap.exists(DOMAINS, ("b.example",))
        assert not snap.exists(DOMAINS, ("c.example",))
        assert directory.health.bad_rows == {"blocked_domains": 2}
        assert all("reason=None" in line for line in skipped(caplog))
        # the holder's key changes: the next row waiting for NULL (lowest rowid) comes in
        execute(store, "UPDATE blocked_domains SET reason = 'held' WHERE domain = 'a.example'")
        directory.refresh()
        snap = directory.snapshot().tables
        assert snap.exists(DOMAINS, ("b.example",))
        assert not snap.exists(DOMAINS, ("c.example",))
        # the holder is deleted: the last one comes in
        execute(store, "DELETE FROM blocked_domains WHERE domain = 'b.example'")
        directory.refresh()
        assert directory.snapshot().tables.exists(DOMAINS, ("c.example",))
        assert directory.health.bad_rows == {"blocked_domains": 2}
    finally:
        directory.close()


# -- SpacetimeDB --------------------------------------------------------------------------


def shipped_schema(tmp_path: Path, account_key: str) -> Path:
    """The shipped schema file with the account table's `primary_key` replaced."""
    text = (POLICIES / "schema.toml").read_text()
    changed = re.sub(r'(\[tables\.account\]\n)primary_key = \["id"\]',
                     lambda m: m.group(1) + account_key, text)
    assert changed != text
    path = tmp_path / "schema.toml"
    path.write_text(changed)
    return path


def account_line(path: Path) -> int:
    lines = path.read_text().splitlines()
    return lines.index("[tables.account]") + 2


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def spacetime(double: DoubleServer, schema_path: Path) -> SpacetimeDirectory:
    return SpacetimeDirectory(
        Endpoint.parse(f"spacetimedb://127.0.0.1:{double.port}/komm"), double.owner_token,
        schema=load_schema(schema_path), needs=helper_needs(), backoff=Backoff(0.05, 0.2),
        startup_wait=5.0)


def spec_with(unique: list[list[str]]) -> dict:
    spec = copy.deepcopy(SPEC)
    spec["databases"]["komm"]["tables"]["account"]["unique"] = unique
    return spec


def test_spacetimedb_a_declared_key_that_is_no_key_keeps_the_replica_not_ready(
        tmp_path: Path) -> None:
    path = shipped_schema(tmp_path, 'primary_key = ["email"]')
    with DoubleServer(spec_with([])) as double:
        directory = spacetime(double, path)
        try:
            assert not directory.available
            reason = directory.unavailable_reason
            assert (f"{path}:{account_line(path)}:1: table 'account': primary_key [email] "
                    "is not a key of SpacetimeDB") in reason, reason
            assert "its keys: [id]" in reason
        finally:
            directory.close()
        # `check --directory` reads the same schema the same way
        module = parse_module(Database.from_spec("komm", spec_with([])["databases"]["komm"]
                                                 ).schema_v9())
        check = check_module(module, ["account"], load_schema(path), "SpacetimeDB x")
        assert not check.ok and "primary_key [email] is not a key" in check.problems[0]


@pytest.mark.parametrize("declared", ['primary_key = ["email"]',
                                      'primary_key = ["id", "email"]'])
def test_spacetimedb_a_unique_constraint_or_a_wider_key_serves(
        tmp_path: Path, declared: str) -> None:
    path = shipped_schema(tmp_path, declared)
    with DoubleServer(spec_with([["email"]])) as double:
        module = parse_module(double.state.databases["komm"].schema_v9())
        assert module.tables["account"].keys() == [("id",), ("email",)]
        directory = spacetime(double, path)
        try:
            eventually(lambda: directory.available)
            result = compile_with_directory(
                "stage mail {\n rule r: when account(sender) != none accept\n"
                " default reject\n}\n", schema=load_schema(path))
            assert result.policy_set is not None, result.diagnostics
            req = request("mail", sender="peter.schmidt@web.example")
            decision = decide(result.policy_set, req, directory)
            assert decision.action == "accept"
            line = encode_record(make_record(req, decision, 0.0)).decode()
            identity = {"email": "peter.schmidt@web.example"}
            if "id" in declared:
                identity = {"id": 104, **identity}
            assert decision.lookups[0].result is not None
            assert json.loads(line)["lookups"][0]["result"] == identity
        finally:
            directory.close()


def test_spacetimedb_rows_whose_address_keys_differ_in_case_only_are_bad_rows(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The server's unique constraint on `email` is case-sensitive; the replica compares
    an `address` in lower case: the second row of the snapshot is skipped and reported."""
    caplog.set_level(logging.WARNING)
    path = shipped_schema(tmp_path, 'primary_key = ["email"]')
    spec = spec_with([["email"]])
    rows = spec["databases"]["komm"]["tables"]["account"]["rows"]
    twin = list(next(r for r in rows if r[3] == "peter.schmidt@web.example"))
    twin[0], twin[3] = 999, "Peter.Schmidt@Web.Example"
    rows.append(twin)
    with DoubleServer(spec) as double:
        directory = spacetime(double, path)
        try:
            eventually(lambda: directory.available)
            assert directory.health.bad_rows == {"account": 1}
            (line,) = skipped(caplog)
            assert "account (email='Peter.Schmidt@Web.Example')" in line
            assert "same primary_key (email" in line
        finally:
            directory.close()


def accounts(directory: SpacetimeDirectory, email: str) -> list[tuple[int, str]]:
    return [(r.id, r.name) for r in directory.snapshot().tables.rows("account")
            if r.email == email]


def test_spacetimedb_transaction_inserts_collide_too_and_wait_for_the_key(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A transaction that inserts a row whose address key differs from a held one in case
    only: the row is a bad row (before, it replaced the held row, and its delete then took
    that row away); it waits, and comes in when the holder is deleted."""
    caplog.set_level(logging.WARNING)
    path = shipped_schema(tmp_path, 'primary_key = ["email"]')
    spec = spec_with([["email"]])
    rows = spec["databases"]["komm"]["tables"]["account"]["rows"]
    holder = next(r for r in rows if r[3] == "peter.schmidt@web.example")
    twin = [999, holder[1], "Twin", "Peter.Schmidt@Web.Example", True, None]
    with DoubleServer(spec) as double:
        directory = spacetime(double, path)
        control = double.control()
        try:
            eventually(lambda: directory.available)
            assert directory.health.bad_rows == {}
            before = directory.snapshot()
            control.tx("komm", "account", inserts=[twin])
            eventually(lambda: directory.snapshot() is not before)
            assert accounts(directory, "peter.schmidt@web.example") == [(holder[0], holder[2])]
            assert directory.health.bad_rows == {"account": 1}
            (line,) = skipped(caplog)
            assert "account (email='Peter.Schmidt@Web.Example')" in line
            assert "another row has the same primary_key (email" in line
            # the waiting row is deleted: the holder stays
            before = directory.snapshot()
            control.tx("komm", "account", deletes=[twin])
            eventually(lambda: directory.snapshot() is not before)
            assert accounts(directory, "peter.schmidt@web.example") == [(holder[0], holder[2])]
            # it comes back and waits; the holder goes: it comes in with that transaction
            control.tx("komm", "account", inserts=[twin])
            control.tx("komm", "account", deletes=[holder])
            eventually(lambda: accounts(directory, "peter.schmidt@web.example") == [
                (999, "Twin")])
            assert directory.health.bad_rows == {"account": 1}  # reported once by name
        finally:
            control.close()
            directory.close()


def filler(start: int, count: int, identity: str) -> list[list]:
    return [[start + i, identity, f"Filler {i}", f"filler{start + i}@bulk.example", True,
             None] for i in range(count)]


def test_spacetimedb_big_transactions_check_keys_in_the_worker_thread(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Messages of `OFFLOAD_MIN_ROWS` rows and more are applied in a worker thread: in one
    pass (a large part of the table) and row by row (a small part of a large table); a
    colliding insert is a bad row in both, and waits for its key."""
    caplog.set_level(logging.WARNING)
    path = shipped_schema(tmp_path, 'primary_key = ["email"]')
    spec = spec_with([["email"]])
    rows = spec["databases"]["komm"]["tables"]["account"]["rows"]
    holder = next(r for r in rows if r[3] == "peter.schmidt@web.example")
    identity = holder[1]
    shout = [9_001, identity, "Shout", "PETER.SCHMIDT@WEB.EXAMPLE", True, None]
    quiet = [9_002, identity, "Quiet", "Filler10000@Bulk.Example", True, None]
    assert OFFLOAD_MIN_ROWS <= 1_000
    with DoubleServer(spec) as double:
        directory = spacetime(double, path)
        control = double.control()
        try:
            eventually(lambda: directory.available)
            # one pass: 4,000 new rows in a table of a few, one of them colliding
            control.tx("komm", "account", inserts=[*filler(10_000, 4_000, identity), shout])
            eventually(lambda: directory.snapshot().tables.counts()["account"] > 4_000)
            assert accounts(directory, "peter.schmidt@web.example") == [(holder[0], holder[2])]
            assert directory.health.bad_rows == {"account": 1}
            # row by row: 1,000 rows in a table of 4,000 and more; the holder goes too
            count = directory.snapshot().tables.counts()["account"]
            control.tx("komm", "account", inserts=[*filler(20_000, 999, identity), quiet],
                       deletes=[holder])
            eventually(lambda: directory.snapshot().tables.counts()["account"] == count + 999)
            assert accounts(directory, "peter.schmidt@web.example") == [(9_001, "Shout")]
            assert accounts(directory, "filler10000@bulk.example") == [(10_000, "Filler 0")]
            assert directory.health.bad_rows == {"account": 2}
            assert "account (email='Filler10000@Bulk.Example')" in skipped(caplog)[1]
        finally:
            control.close()
            directory.close()
