"""`db schema`, `db export` and `check --directory` against the SpacetimeDB double."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from komm_policy.cli import main
from komm_policy.directory.schema import parse_schema
from komm_policy.spacetimedb import Endpoint, SpacetimeHttp
from komm_policy.spacetimedb.tools import export_tables, schema_of

from .conftest import POLICIES
from .spacetimedb_double import DoubleServer
from .spacetimedb_double.samples import SPEC


@pytest.fixture(scope="module")
def double() -> Iterator[DoubleServer]:
    with DoubleServer(SPEC) as server:
        yield server


@pytest.fixture
def token_env(double: DoubleServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text(double.owner_token)
    monkeypatch.setenv("KOMM_SPACETIMEDB_TOKEN_FILE", str(token))


def url(double: DoubleServer, db: str = "komm") -> str:
    return f"spacetimedb://127.0.0.1:{double.port}/{db}"


def test_schema_of_the_module(double: DoubleServer) -> None:
    with SpacetimeHttp(Endpoint.parse(url(double, "types")), double.owner_token) as http:
        schema = schema_of(http.schema())
    everything = schema.tables["everything"]
    assert everything.primary_key == ("id",)
    by_name = everything.by_name
    assert (by_name["status"].type, by_name["status"].variants) == ("enum", ("Active",
                                                                             "Blocked"))
    assert (by_name["maybe"].type, by_name["maybe"].optional) == ("text", True)
    assert by_name["owner"].type == "identity" and by_name["at"].type == "timestamp"
    assert by_name["shape"].type == "unsupported"  # an enum with payloads: no meaning
    assert sorted(schema.tables) == ["everything", "secret"]


def test_export_rows_as_the_schema_reads_them(double: DoubleServer) -> None:
    schema = parse_schema({"tables": {
        "blocked_ips": {"primary_key": ["ip"], "columns": {"ip": "network", "reason": "text",
                                                           "active": "bool"}},
        "account": {"columns": {"id": "integer", "identity": "identity", "email": "address",
                                "last_synced": {"type": "timestamp", "optional": True}}}}})
    with SpacetimeHttp(Endpoint.parse(url(double)), double.owner_token) as http:
        rows = export_tables(http, schema, ["blocked_ips", "account"])
    assert rows["blocked_ips"][0] == {"ip": "192.0.2.66", "reason": "spam run 2026-08",
                                      "active": True}
    assert rows["blocked_ips"][1]["ip"] == "2001:db8:4860::/48"
    assert rows["account"][0] == {"id": 101, "identity": "c200" + "0" * 56 + "0101",
                                  "email": "anna.mueller@gmail.com", "last_synced": None}


def test_cli_db_schema_and_export(double: DoubleServer, token_env: None,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "schema", "--directory", url(double)]) == 0
    text = capsys.readouterr().out
    schema = parse_schema(__import__("tomllib").loads(text))
    assert schema.tables["account"].by_name["identity"].type == "identity"
    assert "mailing_rules" in schema.tables
    assert main(["db", "export", "--directory", url(double), "blocked_ips",
                 "admin_identities"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert [r["ip"] for r in exported["blocked_ips"]][:2] == ["192.0.2.66",
                                                               "2001:db8:4860::/48"]
    assert exported["admin_identities"] == [{"identity": "c200" + "0" * 56 + "0102"}]


def test_cli_check_directory(double: DoubleServer, token_env: None, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(POLICIES), "--directory", url(double)]) == 0
    out = capsys.readouterr().out
    assert "has what the policies read (account, admin_identities, blocked_ips" in out
    # the directory file's functions read the origin tables: a module without them fails
    assert main(["check", str(POLICIES), "--directory", url(double, "samples")]) == 1
    out = capsys.readouterr().out
    assert "no table 'account'" in out
    schema_dir = tmp_path / "policies"
    __import__("shutil").copytree(POLICIES, schema_dir)
    schema_file = schema_dir / "schema.toml"
    text = schema_file.read_text(encoding="utf-8")
    reason = 'columns.reason = { type = "text", storage = "TEXT" }'
    assert reason in text
    schema_file.write_text(text.replace(reason, 'columns.reason = { type = "integer" }', 1))
    assert main(["check", str(schema_dir), "--directory", url(double)]) == 1
    assert ("column blocked_ips.reason is String on the server, but the schema file says "
            "integer") in capsys.readouterr().out


def test_cli_refuses_a_token_on_the_command_line(double: DoubleServer) -> None:
    with pytest.raises(SystemExit):
        main(["db", "schema", "--directory", url(double), "--token", "x"])


def test_cli_reports_an_unreachable_server(token_env: None,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "schema", "--directory", "spacetimedb://127.0.0.1:1/komm"]) == 2
    assert "komm-policy db schema: GET http://127.0.0.1:1/v1/database/komm/schema" in (
        capsys.readouterr().err)
