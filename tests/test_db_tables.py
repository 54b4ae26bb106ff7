"""`komm-policy db schema|export|import|delete` on any table, and every refusal."""

from __future__ import annotations

import json
import sqlite3
import tomllib
from pathlib import Path

import pytest

from komm_policy.cli import main

SCHEMA = """
[tables.blocked_domains]
columns.domain = { type = "address" }
columns.reason = { type = "text", optional = true }

[tables.blocked_ips]
primary_key = ["ip"]
columns.ip = { type = "network" }
columns.reason = { type = "text" }
columns.blocked_at = { type = "timestamp" }
columns.active = { type = "bool" }

[tables.subscriptions2]
primary_key = ["id"]
columns.id = { type = "integer" }
columns.status = { type = "enum", variants = ["ManuallySubscribed", "LinkUnsubscribed"] }
columns.tags = { type = "list", element = "text", optional = true }
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "komm.sqlite3"
    assert run(capsys, "db", "init", "--demo", "--path", str(path))[0] == 0
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE blocked_domains (domain TEXT NOT NULL, reason TEXT)")
        conn.execute("CREATE TABLE subscriptions2 (id INTEGER PRIMARY KEY, "
                     "status TEXT NOT NULL, tags TEXT)")
    conn.close()
    return path


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.toml"
    path.write_text(SCHEMA)
    return path


def count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def test_db_schema_reads_any_table_and_keeps_annotations(
        capsys: pytest.CaptureFixture[str], store: Path, schema_file: Path) -> None:
    code, out, _ = run(capsys, "db", "schema", "--path", str(store), "--schema",
                       str(schema_file), "blocked_domains", "blocked_ips", "account")
    assert code == 0
    tables = tomllib.loads(out)["tables"]
    assert tables["blocked_domains"]["columns"] == {
        "domain": {"type": "address", "storage": "TEXT"},
        "reason": {"type": "text", "optional": True, "storage": "TEXT"}}
    assert tables["blocked_ips"]["columns"]["ip"]["type"] == "network"  # kept
    assert tables["account"]["columns"]["email"] == {"type": "text", "storage": "TEXT"}
    assert tables["account"]["primary_key"] == ["id"]
    code, _, err = run(capsys, "db", "schema", "--path", str(store), "nope")
    assert code == 1 and "no table 'nope'" in err


def test_export_import_round_trip_of_an_operator_table(
        capsys: pytest.CaptureFixture[str], store: Path, schema_file: Path,
        tmp_path: Path) -> None:
    rows = {"blocked_domains": [{"domain": "Spam.Example", "reason": "spam"},
                                {"domain": "bücher.example", "reason": None}],
            "subscriptions2": [{"id": 1, "status": "LinkUnsubscribed", "tags": ["a", "b"]},
                               {"id": 2, "status": "ManuallySubscribed", "tags": None}]}
    source = tmp_path / "rows.json"
    source.write_text(json.dumps(rows))
    code, out, err = run(capsys, "db", "import", str(source), "--path", str(store),
                         "--schema", str(schema_file))
    assert code == 0, err
    assert "imported 2 blocked_domains, 2 subscriptions2" in out
    code, out, _ = run(capsys, "db", "export", "blocked_domains", "subscriptions2",
                       "--path", str(store), "--schema", str(schema_file))
    assert code == 0
    # blocked_domains declares no primary key: its rows are keyed by their rowid
    keyed = {**rows, "blocked_domains": [{"rowid": number, **row} for number, row in
                                         enumerate(rows["blocked_domains"], start=1)]}
    assert json.loads(out) == keyed
    code, _, err = run(capsys, "db", "export", "nope", "--path", str(store))
    assert code == 1 and "no table 'nope'" in err


@pytest.mark.parametrize(("rows", "expected"), [
    ({"blocked_ips": [{"ip": "192.0.2.1", "reason": "ok"},
                      {"ip": "300.1.2.3", "reason": "typo"}]},
     "blocked_ips row 2 (ip='300.1.2.3', reason='typo'): column ip: '300.1.2.3' is not an "
     "IP address or network"),
    ({"blocked_ips": [{"ip": "10.0.0.1/8", "reason": "host bits"}]},
     "blocked_ips row 1 (ip='10.0.0.1/8', reason='host bits'): column ip: '10.0.0.1/8' is "
     "not an IP address or network (10.0.0.1/8 has host bits set)"),
    # a scope (zone) id: the wire refuses it in client.ip, so the store does too
    ({"blocked_ips": [{"ip": "fe80::1%eth0", "reason": "zone"}]},
     "blocked_ips row 1 (ip='fe80::1%eth0', reason='zone'): column ip: 'fe80::1%eth0' is "
     "not an IP address or network (a scope id (%eth0) names an interface"),
    ({"blocked_ips": [{"ip": "fe80::%1/64", "reason": "zone"}]},
     "column ip: 'fe80::%1/64' is not an IP address or network (a scope id (%1)"),
    ({"blocked_domains": [{"domain": "postmaster@[IPv6:fe80::1%eth0]"}]},
     "column domain: 'postmaster@[IPv6:fe80::1%eth0]' is not an address or domain"),
    ({"no_such_table": [{"a": 1}]}, "no_such_table: no such table in the store"),
    ({"blocked_domains": [{"domain": "x.example", "colour": "red"}]},
     "blocked_domains row 1 (domain='x.example', colour='red'): no column 'colour'"),
    ({"blocked_domains": [{"reason": "no domain"}]},
     "blocked_domains row 1 (reason='no domain'): column domain is missing and has no "
     "default"),
    ({"subscriptions2": [{"id": 3, "status": "Active"}]},
     "subscriptions2 row 1 (id=3, status='Active'): column status: 'Active' is not one of "
     "ManuallySubscribed, LinkUnsubscribed"),
    ({"blocked_ips": [{"ip": "192.0.2.1", "reason": "x", "active": "yes"}]},
     "column active wants a bool"),
    ({"blocked_ips": {"ip": "192.0.2.1"}}, "blocked_ips: rows must be a JSON list"),
    ({"blocked_ips": [{"ip": "192.0.2.9", "reason": "a"}, {"ip": "192.0.2.9", "reason": "b"}]},
     "blocked_ips row 2 (ip='192.0.2.9'): the same primary key (ip) as row 1 "
     "(ip='192.0.2.9')"),
    ([1, 2], "one JSON object"),
])
def test_import_refuses_and_writes_nothing(capsys: pytest.CaptureFixture[str], store: Path,
                                           schema_file: Path, tmp_path: Path,
                                           rows: object, expected: str) -> None:
    before = {t: count(store, t) for t in ("blocked_ips", "blocked_domains",
                                           "subscriptions2")}
    source = tmp_path / "rows.json"
    # one valid row of another table in the same file: it must not be written either
    if isinstance(rows, dict):
        rows = {"blocked_domains": [{"domain": "valid.example"}], **rows}
    source.write_text(json.dumps(rows))
    code, out, err = run(capsys, "db", "import", str(source), "--path", str(store),
                         "--schema", str(schema_file))
    assert code == 1, out
    assert "nothing imported" in err and expected in err, err
    assert {t: count(store, t) for t in before} == before


def test_import_into_a_missing_store_creates_it_only_when_valid(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"blocked_ips": [{"ip": "10.0.0.1/8"}]}))
    code, _, err = run(capsys, "db", "import", str(bad), "--path", str(path))
    assert code == 1 and "host bits set" in err
    assert not path.exists()
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"blocked_ips": [{"ip": "10.0.0.0/8"}],
                                "admin_identities": ["c2" + "0" * 62]}))
    code, out, _ = run(capsys, "db", "import", str(good), "--path", str(path))
    assert code == 0 and "1 blocked_ips, 1 admin_identities" in out
    assert count(path, "blocked_ips") == 1


def test_db_delete(capsys: pytest.CaptureFixture[str], store: Path, schema_file: Path
                   ) -> None:
    conn = sqlite3.connect(store)
    with conn:
        conn.execute("INSERT INTO blocked_domains VALUES ('Spam.Example', 'x')")
    conn.close()
    code, out, _ = run(capsys, "db", "delete", "blocked_ips", "192.0.2.66", "--path",
                       str(store))
    assert code == 0 and "deleted 1 row of blocked_ips" in out
    code, _, err = run(capsys, "db", "delete", "blocked_ips", "192.0.2.66", "--path",
                       str(store))
    assert code == 1 and "no row with key '192.0.2.66'" in err
    code, _, err = run(capsys, "db", "delete", "nope", "1", "--path", str(store))
    assert code == 1 and "no table 'nope'" in err
    before = count(store, "message_categories")
    code, _, err = run(capsys, "db", "delete", "message_categories", "1", "999", "--path",
                       str(store))
    assert code == 1 and "'999'" in err
    assert count(store, "message_categories") == before  # nothing deleted
    # a table without a primary key: by rowid
    code, out, _ = run(capsys, "db", "delete", "blocked_domains", "1", "--path", str(store),
                       "--schema", str(schema_file))
    assert code == 0 and count(store, "blocked_domains") == 0
