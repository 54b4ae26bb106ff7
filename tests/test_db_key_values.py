"""`db import`, `db delete`, `db export` compare primary keys by value, as the replica does
(`directory/key_values.py`): two spellings of one network, identity or address are one
key.  Each example runs the real command line in a process against a real SQLite file,
and the replica (`eval --directory sqlite:…`) decides as expected afterwards."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from komm_policy.cli import main

from .conftest import POLICIES, ROOT


@dataclass
class Cli:
    """The command line against real files: in this process (`main`, as the console
    script calls it), or with `process=True` as `python -m komm_policy` in a child."""

    tmp_path: Path
    capsys: pytest.CaptureFixture[str]
    caplog: pytest.LogCaptureFixture
    process: bool = False

    def __call__(self, *argv: str, stdin: str | None = None) -> Result:
        if self.process:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("KOMM_CONFIG", "KOMM_POLICIES")}
            done = subprocess.run([sys.executable, "-m", "komm_policy", *argv], input=stdin,
                                  capture_output=True, text=True, timeout=120, cwd=ROOT,
                                  env=env)
            return Result(done.returncode, done.stdout, done.stderr)
        if stdin is not None:
            source = self.tmp_path / f"input-{len(list(self.tmp_path.iterdir()))}.json"
            source.write_text(stdin)
            argv = tuple(str(source) if a == "-" else a for a in argv)
        self.capsys.readouterr()
        self.caplog.clear()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return Result(code, out, err + self.caplog.text)  # the log, as a process prints it

    def db(self, store: Path, *argv: str, stdin: str | None = None) -> Result:
        return self("db", *argv, "--path", str(store), "--policies", str(POLICIES),
                    stdin=stdin)

    def imported(self, store: Path, rows: dict[str, Any]) -> Result:
        return self.db(store, "import", "-", stdin=json.dumps(rows))

    def decide(self, store: Path, request: dict[str, Any]) -> dict[str, Any]:
        """The replica's decision for `request` over the store (its warnings: stderr)."""
        result = self("eval", "-", "--directory", f"sqlite:{store}", "--policies",
                      str(POLICIES), "--format", "json", stdin=json.dumps(request))
        assert result.returncode == 0, result.stderr
        decision = json.loads(result.stdout)["decision"]
        decision["stderr"] = result.stderr
        return decision


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def stored(store: Path, table: str, column: str) -> list[Any]:
    conn = sqlite3.connect(store)
    try:
        return [r[0] for r in conn.execute(f"SELECT {column} FROM {table} ORDER BY rowid")]
    finally:
        conn.close()


def connect_from(ip: str) -> dict[str, Any]:
    return {"context": {"stage": "connect", "client": {"ip": ip, "port": 50214},
                        "server": {"name": "mx", "port": 25, "ip": "203.0.113.25"},
                        "protocol": {"version": 1}}}


def posting(sender: str) -> dict[str, Any]:
    """RCPT to the demo's `info@` list: only subscribers and admins may post."""
    request = connect_from("198.51.100.23")
    request["context"]["stage"] = "rcpt"
    request["envelope"] = {"from": {"address": sender},
                           "to": [{"address": "info@solawi.example"}]}
    return request


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.delenv("KOMM_CONFIG", raising=False)
    monkeypatch.delenv("KOMM_POLICIES", raising=False)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    caplog.set_level(logging.WARNING)
    return Cli(inputs, capsys, caplog)


@pytest.fixture
def store(tmp_path: Path, cli: Cli) -> Path:
    path = tmp_path / "d.sqlite3"
    result = cli("db", "init", "--demo", "--path", str(path))
    assert result.returncode == 0, result.stderr
    return path


def test_a_block_spelled_as_a_32_replaces_the_inactive_row(store: Path, cli: Cli) -> None:
    cli.process = True  # this one as the operator ran it: `komm-policy` processes
    assert cli.decide(store, connect_from("203.0.113.200"))["action"] == "accept"
    result = cli.imported(store, {"blocked_ips": [{
        "ip": "203.0.113.200/32", "reason": "again", "blocked_at": 1788000000,
        "active": True}]})
    assert result.returncode == 0 and "imported 1 blocked_ips" in result.stdout
    # one row, in the spelling `db export` writes; the old inactive one is gone
    assert stored(store, "blocked_ips", "ip").count("203.0.113.200") == 1
    assert "203.0.113.200/32" not in stored(store, "blocked_ips", "ip")
    decision = cli.decide(store, connect_from("203.0.113.200"))
    assert decision["action"] == "reject" and decision["rule"]["name"] == "blocked_ip"
    assert "same primary_key" not in decision["stderr"]


def test_an_inactive_32_unblocks_the_active_host(store: Path, cli: Cli) -> None:
    assert cli.imported(store, {"blocked_ips": [{"ip": "203.0.113.7", "active": True}]}
                    ).returncode == 0
    assert cli.decide(store, connect_from("203.0.113.7"))["action"] == "reject"
    assert cli.imported(store, {"blocked_ips": [{"ip": "203.0.113.7/32", "active": False}]}
                    ).returncode == 0
    assert stored(store, "blocked_ips", "ip").count("203.0.113.7") == 1
    decision = cli.decide(store, connect_from("203.0.113.7"))
    assert decision["action"] == "accept", decision
    assert "same primary_key" not in decision["stderr"]


def test_two_spellings_of_one_network_in_one_file_are_refused(store: Path, cli: Cli
                                                               ) -> None:
    before = stored(store, "blocked_ips", "ip")
    result = cli.imported(store, {"blocked_ips": [{"ip": "192.0.2.77/32", "active": False},
                                              {"ip": "192.0.2.77", "active": True}]})
    assert result.returncode == 1, result.stdout
    assert ("blocked_ips row 2 (ip='192.0.2.77'): the same primary key (ip) as row 1 "
            "(ip='192.0.2.77/32')") in result.stderr
    assert "nothing imported" in result.stderr
    assert stored(store, "blocked_ips", "ip") == before
    assert cli.decide(store, connect_from("192.0.2.77"))["action"] == "accept"


def test_identity_spellings_replace_and_delete_one_admin(store: Path, cli: Cli) -> None:
    account = {"id": 200, "identity": "ad", "name": "Ad Min", "email": "ad@solawi.example",
               "is_active": True}
    assert cli.imported(store, {"account": [account], "admin_identities": ["ad"]}
                    ).returncode == 0
    assert cli.decide(store, posting("ad@solawi.example"))["action"] == "accept"
    # `AD` and `0xad` in one file: one key twice
    both = cli.imported(store, {"admin_identities": ["AD", "0xad"]})
    assert both.returncode == 1
    assert "admin_identities row 2 ('0xad'" not in both.stderr  # the key is named …
    assert "(identity='0xad'): the same primary key (identity) as row 1 " \
           "(identity='AD')" in both.stderr
    # … and one after the other: each replaces the row, in one spelling
    for spelling in ("AD", "0xad"):
        assert cli.imported(store, {"admin_identities": [spelling]}).returncode == 0
    assert stored(store, "admin_identities", "identity").count("0" * 62 + "ad") == 1
    assert len(stored(store, "admin_identities", "identity")) == 2  # Jane's and this one
    # a JSON number is the identity's integer (0xad = 173), not text to read as hex
    assert cli.imported(store, {"admin_identities": [173]}).returncode == 0
    assert stored(store, "admin_identities", "identity").count("0" * 62 + "ad") == 1
    assert len(stored(store, "admin_identities", "identity")) == 2
    deleted = cli.db(store, "delete", "admin_identities", "ad")
    assert deleted.returncode == 0 and "deleted 1 row of admin_identities" in deleted.stdout
    assert "0" * 62 + "ad" not in stored(store, "admin_identities", "identity")
    decision = cli.decide(store, posting("ad@solawi.example"))
    assert decision["action"] == "reject" and decision["rule"]["name"] == "not_allowed_to_post"


def test_delete_finds_a_network_by_value(store: Path, cli: Cli) -> None:
    assert cli.imported(store, {"blocked_ips": [{"ip": "2001:db8:bad::/48"}]}).returncode == 0
    assert cli.decide(store, connect_from("2001:db8:bad::25"))["action"] == "reject"
    result = cli.db(store, "delete", "blocked_ips", "2001:DB8:BAD:0::/48")
    assert result.returncode == 0, result.stderr
    assert "deleted 1 row of blocked_ips" in result.stdout
    assert "2001:db8:bad::/48" not in stored(store, "blocked_ips", "ip")
    assert cli.decide(store, connect_from("2001:db8:bad::25"))["action"] == "accept"
    # a key no row has, by any spelling, is still refused
    missing = cli.db(store, "delete", "blocked_ips", "2001:DB8:BAD:0::/48")
    assert missing.returncode == 1 and "no row with key" in missing.stderr


def _written_behind_the_tools_back(store: Path, sql: str) -> None:
    conn = sqlite3.connect(store)
    with conn:
        conn.execute(sql)
    conn.close()


def test_rows_written_in_two_spellings_are_healed_by_import_and_named_by_export(
        store: Path, cli: Cli) -> None:
    _written_behind_the_tools_back(
        store, "INSERT INTO blocked_ips (ip, reason, active) VALUES ('203.0.113.200/32', "
               "'typed by hand', 1)")
    decision = cli.decide(store, connect_from("203.0.113.200"))
    assert "same primary_key" in decision["stderr"]  # the replica skips the second
    exported = cli.db(store, "export", "blocked_ips")
    assert exported.returncode == 1
    rows = json.loads(exported.stdout)["blocked_ips"]
    assert [r["ip"] for r in rows].count("203.0.113.200") == 1
    assert "203.0.113.200/32" not in [r["ip"] for r in rows]
    assert ("blocked_ips row 5 (ip='203.0.113.200/32'): the same primary key (ip) as row 4 "
            "(ip='203.0.113.200')") in exported.stderr
    # the export imports again, and its row replaces both spellings
    assert cli.db(store, "import", "-", stdin=exported.stdout).returncode == 0
    assert stored(store, "blocked_ips", "ip").count("203.0.113.200") == 1
    assert "203.0.113.200/32" not in stored(store, "blocked_ips", "ip")
    decision = cli.decide(store, connect_from("203.0.113.200"))
    assert decision["action"] == "accept" and "same primary_key" not in decision["stderr"]
    assert cli.db(store, "export", "blocked_ips").returncode == 0


def test_delete_still_finds_a_bad_row_by_its_stored_text(store: Path, cli: Cli) -> None:
    _written_behind_the_tools_back(
        store, "INSERT INTO blocked_ips (ip, reason) VALUES ('10.0.0.1/8', 'host bits')")
    result = cli.db(store, "delete", "blocked_ips", "10.0.0.1/8")
    assert result.returncode == 0 and "deleted 1 row" in result.stdout
    assert "10.0.0.1/8" not in stored(store, "blocked_ips", "ip")


def test_address_keys_compare_by_value(tmp_path: Path, cli: Cli) -> None:
    """An address primary key (no shipped table has one): written in lower case, found
    in any case."""
    path = tmp_path / "a.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE senders (address TEXT PRIMARY KEY, note TEXT NOT NULL)")
    conn.close()
    schema = tmp_path / "schema.toml"
    schema.write_text('[tables.senders]\nprimary_key = ["address"]\n'
                      'columns.address = { type = "address" }\n'
                      'columns.note = { type = "text" }\n')

    def run(*argv: str, stdin: str | None = None) -> Result:
        return cli("db", *argv, "--path", str(path), "--schema", str(schema), stdin=stdin)

    assert run("import", "-", stdin=json.dumps(
        {"senders": [{"address": "Anna@Example.ORG", "note": "first"}]})).returncode == 0
    assert run("import", "-", stdin=json.dumps(
        {"senders": [{"address": "anna@example.org", "note": "second"}]})).returncode == 0
    assert stored(path, "senders", "address") == ["anna@example.org"]
    assert stored(path, "senders", "note") == ["second"]
    result = run("delete", "senders", "ANNA@example.org")
    assert result.returncode == 0, result.stderr
    assert stored(path, "senders", "address") == []
