"""`db import`/`delete` findings: which schema file checks the rows (--schema, --policies,
the configured policy directory; a notice when none describes a table), 64-bit integers,
JSON booleans in integer columns, the language's address syntax, an empty file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from komm_policy.addresses import valid_address
from komm_policy.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "origin-2026"
SHIPPED = Path(__file__).resolve().parent.parent / "policies"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows_of(path: Path, table: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        conn.close()


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without policies/ and no configuration in the environment."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in ("KOMM_CONFIG", "KOMM_POLICIES"):
        monkeypatch.delenv(name, raising=False)
    return work


@pytest.fixture
def example_store(tmp_path: Path) -> Path:
    path = tmp_path / "origin-2026.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript((EXAMPLE / "schema.sql").read_text())
    conn.close()
    return path


HOST_BITS = {"blocked_ips": [{"ip": "10.0.0.1/8", "reason": "x", "active": 1}]}


def test_without_a_schema_file_the_import_says_only_storage_types_were_checked(
        capsys: pytest.CaptureFixture[str], elsewhere: Path) -> None:
    data = elsewhere / "rows.json"
    data.write_text(json.dumps(HOST_BITS))
    code, out, err = run(capsys, "db", "import", str(data), "--path", "s.sqlite3")
    assert code == 0 and "imported 1 blocked_ips" in out
    assert "notice: no schema file (policies/schema.toml does not exist) describes " \
           "blocked_ips: only the store's declared types were checked" in err
    code, _, err = run(capsys, "db", "import", str(data), "--path", "s.sqlite3",
                       "--storage-types-only")
    assert code == 0 and "notice" not in err


@pytest.mark.parametrize("how", ["--policies", "--config", "KOMM_POLICIES", "--schema"])
def test_the_schema_beside_the_policies_checks_the_rows(
        capsys: pytest.CaptureFixture[str], elsewhere: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    data = elsewhere / "rows.json"
    data.write_text(json.dumps(HOST_BITS))
    store = elsewhere / "s.sqlite3"
    assert run(capsys, "db", "init", "--path", str(store))[0] == 0
    argv = ["db", "import", str(data), "--path", str(store)]
    if how == "--policies":
        argv += ["--policies", str(SHIPPED)]
    elif how == "--schema":
        argv += ["--schema", str(SHIPPED / "schema.toml")]
    elif how == "--config":
        config = tmp_path / "komm.toml"
        config.write_text(f'[policies]\npath = "{SHIPPED}"\n')
        argv += ["--config", str(config)]
    else:
        monkeypatch.setenv("KOMM_POLICIES", str(SHIPPED))
    code, _, err = run(capsys, *argv)
    assert code == 1 and "10.0.0.1/8 has host bits set" in err
    assert rows_of(store, "blocked_ips") == []


@pytest.mark.parametrize(("row", "expected"), [
    ({"id": 1, "subscriber_account_id": 1, "topic_id": 1, "status": "Bogus"},
     "column status: 'Bogus' is not one of AutomaticallySubscribed"),
])
def test_the_example_schema_checks_the_example_store(
        capsys: pytest.CaptureFixture[str], elsewhere: Path, example_store: Path,
        row: dict, expected: str) -> None:
    data = elsewhere / "rows.json"
    data.write_text(json.dumps({"subscriptions": [row]}))
    # the shipped schema does not describe the 2026 tables: a notice, then the right one
    code, _, err = run(capsys, "db", "import", str(data), "--path", str(example_store),
                       "--policies", str(SHIPPED))
    assert code == 0 and "does not describe subscriptions" in err
    with sqlite3.connect(example_store) as conn:
        conn.execute("DELETE FROM subscriptions")
    code, _, err = run(capsys, "db", "import", str(data), "--path", str(example_store),
                       "--policies", str(EXAMPLE))
    assert code == 1 and expected in err
    assert rows_of(example_store, "subscriptions") == []


def test_an_address_column_takes_what_valid_address_takes(
        capsys: pytest.CaptureFixture[str], elsewhere: Path, example_store: Path) -> None:
    bad = ["not an address", "a@@b", "x\u0000.example", "a@b", "@x.example", "x@"]
    good = ["Someone@Bücher.example", "a@b@example.org", "example.org", ""]
    assert not any(valid_address(a) for a in bad[:2] + bad[3:])
    for number, email in enumerate(bad, start=1):
        data = elsewhere / "rows.json"
        data.write_text(json.dumps({"account_emails": [
            {"id": number, "account_id": 1, "email": email, "verified": True}]}))
        code, _, err = run(capsys, "db", "import", str(data), "--path", str(example_store),
                           "--policies", str(EXAMPLE))
        assert code == 1, email
        assert f"column email: {email!r} is not an address or domain" in err
    assert rows_of(example_store, "account_emails") == []
    data = elsewhere / "rows.json"
    data.write_text(json.dumps({"account_emails": [
        {"id": n, "account_id": 1, "email": e, "verified": 1}
        for n, e in enumerate(good, start=1)]}))
    code, _, err = run(capsys, "db", "import", str(data), "--path", str(example_store),
                       "--policies", str(EXAMPLE))
    assert code == 0, err
    assert len(rows_of(example_store, "account_emails")) == len(good)


@pytest.mark.parametrize("with_schema", [False, True])
def test_export_then_import_round_trips_booleans_with_or_without_a_schema(
        capsys: pytest.CaptureFixture[str], elsewhere: Path, example_store: Path,
        tmp_path: Path, with_schema: bool) -> None:
    with sqlite3.connect(example_store) as conn:
        conn.execute("INSERT INTO account_emails VALUES (1, 7, 'a@example.org', 1), "
                     "(2, 7, 'b@example.org', 0)")
    code, exported, _ = run(capsys, "db", "export", "account_emails", "--path",
                            str(example_store), "--policies", str(EXAMPLE))
    assert code == 0
    assert [r["verified"] for r in json.loads(exported)["account_emails"]] == [True, False]
    dump = tmp_path / "dump.json"
    dump.write_text(exported)
    second = tmp_path / "second.sqlite3"
    with sqlite3.connect(second) as conn:
        conn.executescript((EXAMPLE / "schema.sql").read_text())
    argv = ["db", "import", str(dump), "--path", str(second)]
    argv += ["--policies", str(EXAMPLE)] if with_schema else ["--storage-types-only"]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    assert "imported 2 account_emails" in out
    assert rows_of(second, "account_emails") == rows_of(example_store, "account_emails")


@pytest.mark.parametrize("field", ["id", "account_id"])
@pytest.mark.parametrize("value", [99999999999999999999999, 2**63, -(2**63) - 1])
def test_an_integer_beyond_64_bits_is_an_error_naming_the_row(
        capsys: pytest.CaptureFixture[str], elsewhere: Path, example_store: Path,
        field: str, value: int) -> None:
    row = {"id": 1, "account_id": 1, "email": "a@example.org", field: value}
    data = elsewhere / "rows.json"
    data.write_text(json.dumps({"account_emails": [row]}))
    code, _, err = run(capsys, "db", "import", str(data), "--path", str(example_store),
                       "--storage-types-only")
    assert code == 1
    assert f"account_emails row 1 (id={row['id']!r}, account_id={row['account_id']!r}): " \
           f"column {field}: {value} is outside SQLite's 64-bit integers" in err
    assert "Traceback" not in err
    assert rows_of(example_store, "account_emails") == []


def test_the_64_bit_edges_themselves_import(
        capsys: pytest.CaptureFixture[str], elsewhere: Path, example_store: Path) -> None:
    data = elsewhere / "rows.json"
    data.write_text(json.dumps({"account_emails": [
        {"id": 2**63 - 1, "account_id": -(2**63), "email": "a@example.org"}]}))
    code, _, err = run(capsys, "db", "import", str(data), "--path", str(example_store),
                       "--storage-types-only")
    assert code == 0, err
    assert rows_of(example_store, "account_emails") == [(2**63 - 1, -(2**63),
                                                         "a@example.org", 0)]


def test_a_rowid_beyond_64_bits_is_an_error(
        capsys: pytest.CaptureFixture[str], elsewhere: Path) -> None:
    store = elsewhere / "s.sqlite3"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE notes (txt TEXT)")
    data = elsewhere / "rows.json"
    data.write_text(json.dumps({"notes": [{"rowid": 2**64, "txt": "a"}]}))
    code, _, err = run(capsys, "db", "import", str(data), "--path", str(store),
                       "--storage-types-only")
    assert code == 1 and "notes row 1: `rowid` 18446744073709551616 is outside SQLite's" \
                         in err


@pytest.mark.parametrize(("table", "key"), [
    ("blocked_ips", "10.0.0.0/8"),      # text key: no such row
    ("subscriptions", "99999999999999999999999"),  # integer key beyond 64 bits
    ("notes", "-99999999999999999999999"),  # rowid beyond 64 bits
])
def test_delete_of_a_key_beyond_64_bits_is_a_clear_error(
        capsys: pytest.CaptureFixture[str], elsewhere: Path, table: str, key: str) -> None:
    store = elsewhere / "s.sqlite3"
    assert run(capsys, "db", "init", "--demo", "--path", str(store))[0] == 0
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE notes (txt TEXT)")
        conn.execute("INSERT INTO notes VALUES ('a')")
    before = rows_of(store, table)
    code, _, err = run(capsys, "db", "delete", table, key, "1", "--path", str(store),
                       "--policies", str(SHIPPED))
    assert code == 1 and "Traceback" not in err
    assert f"{table}: " in err and repr(key) in err and "nothing deleted" in err
    if key.lstrip("-").isdigit():
        assert "outside SQLite's 64-bit integers" in err
    assert rows_of(store, table) == before


def test_an_import_of_no_tables_says_so(capsys: pytest.CaptureFixture[str],
                                        elsewhere: Path) -> None:
    data = elsewhere / "rows.json"
    data.write_text("{}")
    code, out, _ = run(capsys, "db", "import", str(data), "--path", "s.sqlite3")
    assert code == 0
    assert out.strip() == "s.sqlite3: imported 0 rows (the file names no tables)"


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_float_that_is_not_finite_is_refused(capsys: pytest.CaptureFixture[str],
                                               elsewhere: Path, text: str) -> None:
    store = elsewhere / "s.sqlite3"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE scores (id INTEGER PRIMARY KEY, score REAL)")
    data = elsewhere / "rows.json"
    data.write_text('{"scores": [{"id": 1, "score": 1.5}, {"id": 2, "score": ' + text + '}]}')
    code, _, err = run(capsys, "db", "import", str(data), "--path", str(store),
                       "--storage-types-only")
    assert code == 1 and "scores row 2 (id=2, score=" in err
    assert "column score: " in err and "is not a finite number" in err
    assert rows_of(store, "scores") == []
    data.write_text('{"scores": [{"id": 1, "score": 1.5}, {"id": 2, "score": -2}]}')
    assert run(capsys, "db", "import", str(data), "--path", str(store),
               "--storage-types-only")[0] == 0
    assert rows_of(store, "scores") == [(1, 1.5), (2, -2.0)]


def test_export_leaves_out_and_names_the_rows_import_would_refuse(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows written behind the tools' back (a tester's sqlite3 session): `db export` used
    to exit 0 with them, and `db import` of that backup refused it all.  Now, as the
    SpacetimeDB export: the good rows are written, each bad row named (table, row, key,
    reason) on stderr, exit 1 — and what was written imports again."""
    store = tmp_path / "k.sqlite3"
    assert main(["db", "init", "--path", str(store)]) == 0
    conn = sqlite3.connect(store)
    with conn:
        conn.executemany(
            "INSERT INTO blocked_ips (ip, reason, blocked_at, active) VALUES (?, ?, ?, 1)",
            [("10.0.0.1/8", "host bits", 1), ("fe80::1%eth0", "scope", 1),
             ("192.0.2.0/24", "when", "yesterday"), ("192.0.2.7", "good", 5)])
    conn.close()
    capsys.readouterr()
    policies = ["--policies", str(SHIPPED)]
    code = main(["db", "export", "--path", str(store), *policies, "blocked_ips"])
    out, err = capsys.readouterr()
    assert code == 1
    assert json.loads(out) == {"blocked_ips": [
        {"ip": "192.0.2.7", "reason": "good", "blocked_at": 5, "active": True}]}
    skipped = [line for line in err.splitlines() if "skipped blocked_ips" in line]
    assert len(skipped) == 3, err
    assert "blocked_ips row 1 (ip='10.0.0.1/8'" in skipped[0] and "host bits set" in skipped[0]
    assert "blocked_ips row 2 (ip='fe80::1%eth0'" in skipped[1] and "scope id" in skipped[1]
    assert "blocked_ips row 3 (ip='192.0.2.0/24'" in skipped[2]
    assert "blocked_at wants a timestamp, got 'yesterday'" in skipped[2]
    assert "3 rows skipped" in err
    backup = tmp_path / "backup.json"
    backup.write_text(out)
    fresh = tmp_path / "fresh.sqlite3"
    assert main(["db", "init", "--path", str(fresh)]) == 0
    assert main(["db", "import", "--path", str(fresh), *policies, str(backup)]) == 0
    assert "imported 1 blocked_ips" in capsys.readouterr().out


def test_export_names_a_row_whose_text_is_not_utf8(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """breaker6: a text value that is not UTF-8 made `db export` end in a traceback
    (sqlite3 refuses to decode it); now that row is named and left out like the others."""
    store = tmp_path / "k.sqlite3"
    assert main(["db", "init", "--path", str(store)]) == 0
    conn = sqlite3.connect(store)
    with conn:
        conn.execute("INSERT INTO blocked_ips (ip, reason, blocked_at, active) VALUES "
                     "('192.0.2.1', CAST(X'61FF62' AS TEXT), 1, 1)")
        conn.execute("INSERT INTO blocked_ips (ip, reason, blocked_at, active) VALUES "
                     "('192.0.2.7', 'good', 5, 1)")
    conn.close()
    capsys.readouterr()
    code = main(["db", "export", "--path", str(store), "--policies", str(SHIPPED),
                 "blocked_ips"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert json.loads(out) == {"blocked_ips": [
        {"ip": "192.0.2.7", "reason": "good", "blocked_at": 5, "active": True}]}
    assert "blocked_ips row 1 (ip='192.0.2.1'" in err
    assert "text that is not UTF-8 (b'a\\xffb')" in err, err
