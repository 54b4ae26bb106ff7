"""`komm-policy check --directory sqlite:PATH`: the store against what the policies read,
by the code the replica runs when it meets the store (`sqlite_tables.store_problems`):
tables, columns, and a declared `primary_key` that is not a key of the store, positioned
at the schema file's entry.  A real store file, the shipped policies."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from komm_policy.cli import main
from komm_policy.demo import DEMO_TABLES
from komm_policy.directory import DirectoryError
from komm_policy.directory.schema import load_schema
from komm_policy.directory.sqlite import SqliteDirectory, create_database
from komm_policy.policyset import load_policy_set

from .conftest import POLICIES
from .test_declared_keys import account_line, shipped_schema


def check(capsys: pytest.CaptureFixture[str], policies: Path, store: Path) -> tuple[int, str]:
    code = main(["check", str(policies), "--directory", f"sqlite:{store}"])
    return code, capsys.readouterr().out


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """The shipped policies, their account table declared by `email`."""
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    schema = shipped_schema(tmp_path, 'primary_key = ["email"]')
    shutil.move(schema, copy / "schema.toml")
    return copy


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "komm.sqlite3"
    create_database(path, DEMO_TABLES)
    return path


def test_the_shipped_policies_against_the_origin_store_pass(
        capsys: pytest.CaptureFixture[str], store: Path) -> None:
    code, out = check(capsys, POLICIES, store)
    assert code == 0, out
    assert f"{POLICIES}: the store {store} has what the policies read (account, " in out


def test_a_declared_key_that_is_no_key_of_the_store_is_an_error_at_its_entry(
        capsys: pytest.CaptureFixture[str], policies: Path, store: Path) -> None:
    schema = policies / "schema.toml"
    code, out = check(capsys, policies, store)
    assert code == 1, out
    line = account_line(schema)
    assert (f"{policies}: error: {schema}:{line}:1: table 'account': primary_key [email] "
            f"is not a key of the store {store} (its keys: [id])") in out, out
    # the same message the replica refuses the policy set with (one owner)
    directory = SqliteDirectory(store, start=False)
    try:
        policy_set = load_policy_set(policies)
        with pytest.raises(DirectoryError) as info:
            directory.require(load_schema(schema), policy_set.needs)
        assert f"error: {info.value}" in out
    finally:
        directory.close()
    # a UNIQUE index on the column makes it a key: the check passes, nothing was written
    conn = sqlite3.connect(store)
    with conn:
        conn.execute("CREATE UNIQUE INDEX account_one_email ON account (email)")
    conn.close()
    assert check(capsys, policies, store)[0] == 0


def test_every_problem_is_listed_and_an_unreadable_store_is_exit_2(
        capsys: pytest.CaptureFixture[str], policies: Path, store: Path,
        tmp_path: Path) -> None:
    conn = sqlite3.connect(store)
    with conn:
        conn.execute("DROP TABLE blocked_ips")
        conn.execute("ALTER TABLE subscriptions DROP COLUMN active")
    conn.close()
    code, out = check(capsys, policies, store)
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert code == 1 and len(errors) == 3, out
    assert f"{store}: no table 'blocked_ips'" in out
    assert f"{store}: table 'subscriptions' has no column 'active'" in out
    assert "primary_key [email] is not a key" in out
    missing = tmp_path / "missing.sqlite3"
    code, out = check(capsys, policies, missing)
    assert code == 2 and f"cannot read the store {missing}" in out, out
    assert not missing.exists()  # read-only: no store is created
