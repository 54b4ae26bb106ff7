"""`db export --directory spacetimedb://…` with rows that do not decode (the tester's
finding: one bad row made the whole export exit 2 with `$[0].rows[4][3]: expected a
boolean` and nothing written): the good rows are exported, each bad row is named on
stderr with its table, row number and reason, and the exit status is 1.  And the README's
command line is the one the CLI takes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from komm_policy.cli import main

from .spacetimedb_double import DoubleServer
from .spacetimedb_double.samples import BLOCKED_AT as T0
from .spacetimedb_double.samples import SPEC

README = Path(__file__).parent.parent / "README.md"


@pytest.fixture
def double() -> Iterator[DoubleServer]:
    with DoubleServer(SPEC) as server:
        yield server


@pytest.fixture
def url(double: DoubleServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    token = tmp_path / "token"
    token.write_text(double.owner_token)
    monkeypatch.setenv("KOMM_SPACETIMEDB_TOKEN_FILE", str(token))
    return f"spacetimedb://127.0.0.1:{double.port}/komm"


def test_export_writes_the_good_rows_and_names_the_bad_ones(
        double: DoubleServer, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rows = double.state.databases["komm"].tables["blocked_ips"].rows
    good = len(rows)
    rows.append(["192.0.2.200", "not a bool", T0, "yes"])  # row `good`: a bad bool
    rows.append(["192.0.2.201", "fine", T0, True])
    rows.append([None, "null ip", T0, True])  # row `good + 2`
    assert main(["db", "export", "blocked_ips", "account", "--directory", url]) == 1
    captured = capsys.readouterr()
    exported = json.loads(captured.out)
    ips = [r["ip"] for r in exported["blocked_ips"]]
    assert len(ips) == good + 1 and ips[-1] == "192.0.2.201"
    assert len(exported["account"]) == 4  # the other table whole
    assert f"skipped blocked_ips row {good}: $[0].rows[{good}][3]: expected a boolean" in (
        captured.err)
    assert f"skipped blocked_ips row {good + 2}: $[0].rows[{good + 2}][0]: expected a " \
           "string" in captured.err
    assert "2 rows skipped" in captured.err


def test_the_readme_export_command_line_is_the_cli_s(
        url: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = README.read_text()
    (documented,) = re.findall(r"`komm-policy (db export [^`]*--directory spacetimedb://…[^`]*)`",
                               text)
    assert "--tables" not in documented
    assert documented.startswith("db export [TABLE …] --directory")
    assert main(["db", "export", "blocked_ips", "admin_identities", "--directory", url]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"blocked_ips", "admin_identities"}
