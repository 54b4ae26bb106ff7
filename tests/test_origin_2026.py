"""`examples/origin-2026/`: the origin's restructured schema (renamed `message_topics`,
`account_emails` with `verified`, subscriptions with a `status` enum and a `permission`)
followed by policy edits alone: its DDL, schema file and policy set are checked and tested
like the shipped set (`check --strict`, `komm-policy test`).
"""

from __future__ import annotations

import sqlite3

from komm_policy.cli import main
from komm_policy.directory.schema import load_schema
from komm_policy.directory.sqlite_tables import read_schema
from komm_policy.policyset import load_path

from .conftest import ROOT

EXAMPLE = ROOT / "examples" / "origin-2026"


def test_the_example_checks_clean_against_its_schema_file():
    result = load_path(EXAMPLE)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    assert result.diagnostics == ()
    assert result.policy_set.schema is not None
    # the set reads the restructured tables, none of the shipped schema's
    assert set(result.policy_set.needs.tables) == {
        "message_topics", "account_emails", "account", "admin_identities", "subscriptions"}


def test_the_example_cases_pass(capsys):
    assert main(["test", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "15 passed, 0 failed, 0 errors" in out


def test_a_changed_expectation_fails(tmp_path, capsys):
    # the cases can fail: flip one expectation and the run reports it
    for source in EXAMPLE.iterdir():
        text = source.read_text(encoding="utf-8")
        if source.name == "10-posting.test.toml":
            text = text.replace('status = "ManuallySubscribed"\npermission = "Write"',
                                'status = "ManuallySubscribed"\npermission = "Read"', 1)
        (tmp_path / source.name).write_text(text, encoding="utf-8")
    assert main(["test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "a verified address with an active Write subscription" in out


def test_the_schema_file_describes_the_ddl():
    conn = sqlite3.connect(":memory:")
    conn.executescript((EXAMPLE / "schema.sql").read_text(encoding="utf-8"))
    stored = read_schema(conn)
    described = load_schema(EXAMPLE / "schema.toml")
    assert set(stored.tables) == set(described.tables)
    for name, table in described.tables.items():
        columns = stored.tables[name].columns
        assert [c.name for c in table.columns] == [c.name for c in columns], name
        assert [c.storage for c in table.columns] == [c.storage for c in columns], name
        assert [c.optional for c in table.columns] == [c.optional for c in columns], name
        assert table.primary_key == stored.tables[name].primary_key, name
