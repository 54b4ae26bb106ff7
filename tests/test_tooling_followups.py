"""Follow-ups of the operator-tool rough edges (issue #14's family), each found by the
tester: stalwart-config URLs and timeouts, a fresh store's log lines, and more below."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path

import pytest

from komm_policy.decisionlog.mta_log import ensure_mta_log
from komm_policy.directory.schema import SchemaError, load_schema
from komm_policy.directory.sqlite import connect
from komm_policy.policyset import load_path
from komm_policy.tomlpos import KeyPositions

from .test_cli import run

# -- stalwart-config ----------------------------------------------------------------------


@pytest.mark.parametrize(("url", "reason"), [
    ("http://host:99999/mta-hook", "invalid port"),
    ("https://host:abc/mta-hook", "invalid port"),
    ("http://127.0.0.1:0/mta-hook", "invalid port"),
    ("http://exa mple/mta-hook", "spaces, control or non-ASCII"),
    ("http://host/mta hook", "spaces, control or non-ASCII"),
    ("http://host/\nmta-hook", "spaces, control or non-ASCII"),
    ("http://bücher.example/mta-hook", "non-ASCII"),
    ("http://[::1/mta-hook", "invalid IPv6"),
    ("http://[fe80::zz]/mta-hook", "invalid IPv6"),
    ("http://300.1.2.3/mta-hook", "invalid IPv4"),
    ("http://host_name/mta-hook", "invalid host name"),
    ("http://-host/mta-hook", "invalid host name"),
    ("http://user:pw@host/mta-hook", "credentials"),
    ("http://host/mta-hook#x", "fragment"),
])
def test_stalwart_config_refuses_a_malformed_url(capsys: pytest.CaptureFixture[str],
                                                 url: str, reason: str) -> None:
    code, out, err = run(capsys, "stalwart-config", "--url", url)
    assert (code, out) == (2, "")
    assert reason in err
    assert "Traceback" not in err


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:3002/mta-hook", "http://[::1]:3002/mta-hook",
    "https://hooks.internal.example:8443/mta-hook", "https://xn--bcher-kva.example/hook?x=1",
    "http://localhost/mta-hook",
])
def test_stalwart_config_accepts_a_wellformed_url(capsys: pytest.CaptureFixture[str],
                                                  url: str) -> None:
    code, out, _ = run(capsys, "stalwart-config", "--url", url)
    assert code == 0
    assert tomllib.loads(out)["session"]["hook"]["komm"]["url"] == url


def test_stalwart_config_timeout_is_in_the_form_each_version_parses(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Reference §8.1: 0.15 TOML `timeout` is a duration string (`timeout = "10s"`);
    §8.2: 0.16 `MtaHook.timeout` is a positive number of milliseconds, never "10s" (the
    public docs' example is wrong there)."""
    code, out, _ = run(capsys, "stalwart-config", "--timeout", "10s")
    assert code == 0
    assert tomllib.loads(out)["session"]["hook"]["komm"]["timeout"] == "10s"
    code, out, _ = run(capsys, "stalwart-config", "--timeout", "10s", "--format", "json")
    assert code == 0
    timeout = json.loads(out)["timeout"]
    assert type(timeout) is int and timeout == 10000


# -- db init ------------------------------------------------------------------------------


def test_a_fresh_store_logs_no_upgrade(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "fresh.sqlite3"
    code, out, err = run(capsys, "db", "init", "--path", str(path))
    assert code == 0
    conn = connect(path)
    ensure_mta_log(conn)  # what the log's writer does when it opens the store
    conn.close()
    code, out, err = run(capsys, "db", "init", "--demo", "--path", str(path))
    assert code == 0
    said = " ".join(r.getMessage() for r in caplog.records) + out + err
    assert "upgrad" not in said


# -- schema file positions (E144) ---------------------------------------------------------

SCHEMA_OK = """\
# the operator's tables
[tables.blocked_domains]
primary_key = ["domain"]
columns.domain = { type = "address" }
columns.note   = { type = "text", optional = true }

[tables."odd name"]
columns.id = "integer"
"""


@pytest.mark.parametrize(("old", "new", "where", "words"), [
    ('columns.domain = { type = "address" }', 'columns.domain = { type = "adress" }',
     (4, 20), "unknown type 'adress'"),
    ('optional = true', 'optional = "yes"', (5, 35), "`optional` must be true or false"),
    ('columns.id = "integer"', 'columns.id = "integer"\ncolumns.x = { type = "enum" }',
     (9, 1), "an enum needs `variants`"),
    ('primary_key = ["domain"]', 'primary_key = ["dom"]', (3, 1), "primary key column 'dom'"),
    ('columns.id = "integer"', 'columns.id = "integer"\nkind = "x"', (9, 1),
     "unknown key 'kind'"),
    ('columns.note   = { type = "text", optional = true }',
     'columns.note   = { type = "text", optional = true, size = 3 }', (5, 52),
     "unknown key 'size'"),
    ('[tables."odd name"]\ncolumns.id = "integer"', '[tables."odd name"]\nid = "integer"',
     (7, 2), "needs `columns`"),
    ('# the operator', '[extra]\n# the operator', (1, 2), "unknown top-level key 'extra'"),
    ('columns.id = "integer"', 'columns.id = "integer"\ncolumns.y = { type = "enum", '
     'variants = ["A", "A"] }', (9, 30), "names a variant twice"),
    ('columns.id = "integer"', 'columns.id = "integer"\ncolumns.y = {', (9, 14), "Invalid"),
])
def test_schema_file_errors_point_at_the_offending_key(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, old: str, new: str,
        where: tuple[int, int], words: str) -> None:
    assert old in SCHEMA_OK
    (tmp_path / "schema.toml").write_text(SCHEMA_OK.replace(old, new), encoding="utf-8")
    (tmp_path / "a.policy").write_text("stage connect {\n    default accept\n}\n")
    code, out, _ = run(capsys, "check", str(tmp_path))
    assert code == 1
    line, column = where
    assert f"schema.toml:{line}:{column}: error E144:" in out, out
    assert words in out
    with pytest.raises(SchemaError) as caught:
        load_schema(tmp_path / "schema.toml")
    assert f"schema.toml:{line}:{column}: " in str(caught.value)


def test_a_schema_file_with_a_bom_is_read(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    (tmp_path / "schema.toml").write_bytes(b"\xef\xbb\xbf" + SCHEMA_OK.encode())
    (tmp_path / "a.policy").write_text(
        'stage rcpt {\n    rule r:\n        when exists("blocked_domains", domain = sender)\n'
        '        reject\n    default accept\n}\n')
    code, out, _ = run(capsys, "check", "--strict", str(tmp_path))
    assert code == 0, out


def test_key_positions_follow_arrays_of_tables_and_inline_tables() -> None:
    text = ('a = 1\ns = """\n[[case]]\nx = 1\n"""\n[[case]]\nname = "a"\n[case.expect]\n'
            'rule = "r"\n\n[[case]]\nexpect = { action = "accept", rule = "q" }\n')
    positions = KeyPositions(text)
    assert positions.find(("case", 0, "expect", "rule")) == (9, 1)
    assert positions.find(("case", 1, "expect", "rule")) == (12, 31)
    assert positions.find(("case", 1, "expect", "missing")) == (12, 1)
    assert positions.find(("case", 0, "name")) == (7, 1)
    assert positions.find(("nothing",)) == (1, 1)


# -- komm-policy test files ---------------------------------------------------------------

POLICY = """\
stage connect {
    rule local:
        when client.ip in [127.0.0.0/8]
        accept

    rule watch dry_run:
        when client.port == 2525
        reject

    default accept
}
"""
CASE = ('[[case]]\nname = "local"\nrequest = { stage = "connect", client.ip = "127.0.0.1" }\n'
        'expect = { action = "accept", rule = "local" }\n')


def _test_set(tmp_path: Path, tests: bytes | str) -> Path:
    (tmp_path / "10-a.policy").write_text(POLICY, encoding="utf-8")
    path = tmp_path / "10-a.test.toml"
    if isinstance(tests, str):
        tests = tests.encode()
    path.write_bytes(tests)
    return path


def test_a_test_file_with_a_bom_runs(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    _test_set(tmp_path, b"\xef\xbb\xbf" + CASE.encode())
    code, out, _ = run(capsys, "test", str(tmp_path))
    assert code == 0, out
    assert "1 passed, 0 failed, 0 errors" in out


@pytest.mark.parametrize(("text", "where", "kind"), [
    ("case = 5\n", "1:1", "an integer (5)"),
    ('# x\n\ncase = "local"\n', "3:1", "a string ('local')"),
    ("case = [1, 2]\n", "1:1", "an integer (1)"),
    ("[case]\nname = 'a'\n", "1:2", "a table"),
])
def test_a_case_of_the_wrong_shape_says_what_was_expected(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, where: str,
        kind: str) -> None:
    path = _test_set(tmp_path, text)
    code, out, _ = run(capsys, "test", str(tmp_path))
    assert code == 1
    assert f"{path}:{where}: `case` must be an array of tables" in out, out
    assert f"not {kind}" in out
    assert "no cases" not in out


@pytest.mark.parametrize(("expect", "key", "name", "close", "column"), [
    ('{ action = "accept", rule = "locl" }', "rule", "locl", "local", 31),
    ('{ action = "accept", rule = "nothing_like_it" }', "rule", "nothing_like_it", None, 31),
    ('{ action = "accept", dry_run = ["wach"] }', "dry_run", "wach", "watch", 31),
])
def test_expect_naming_an_unknown_rule_is_an_error_with_its_position(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, expect: str, key: str,
        name: str, close: str | None, column: int) -> None:
    text = CASE + '\n[[case]]\nname = "typo"\nrequest = { stage = "connect" }\n' \
        f'expect = {expect}\n'
    path = _test_set(tmp_path, text)
    code, out, _ = run(capsys, "test", str(tmp_path))
    assert code == 1
    assert "1 passed, 0 failed, 1 error" in out, out
    assert f"{path}:9:{column}: `expect.{key}` names no rule of the policy set: `{name}`" \
        in out
    assert (f"did you mean `{close}`?" in out) == (close is not None)


def test_expect_rule_default_is_known(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    _test_set(tmp_path, '[[case]]\nrequest = { stage = "connect", client.ip = "192.0.2.1" }\n'
                        'expect = { action = "accept", rule = "default" }\n')
    code, out, _ = run(capsys, "test", str(tmp_path))
    assert code == 0, out


# -- db export / import of a rowid table --------------------------------------------------


def test_export_then_import_of_a_rowid_table_is_idempotent(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite3"
    assert run(capsys, "db", "init", "--path", str(store))[0] == 0
    conn = connect(store)
    with conn:
        conn.execute("CREATE TABLE notes (txt TEXT, n INTEGER)")
        conn.executemany("INSERT INTO notes VALUES (?, ?)", [("a", 1), ("b", 2), ("a", 1)])
    conn.close()
    code, exported, _ = run(capsys, "db", "export", "notes", "--path", str(store))
    assert code == 0
    dump = tmp_path / "notes.json"
    dump.write_text(exported)
    for _ in range(2):
        code, out, err = run(capsys, "db", "import", str(dump), "--path", str(store))
        assert code == 0, err
    code, again, _ = run(capsys, "db", "export", "notes", "--path", str(store))
    assert json.loads(again) == json.loads(exported)
    assert [row["rowid"] for row in json.loads(again)["notes"]] == [1, 2, 3]
    # a row without a rowid is appended; a changed row with its rowid replaces that row
    dump.write_text(json.dumps({"notes": [{"rowid": 2, "txt": "B", "n": 20},
                                          {"txt": "c", "n": 3}]}))
    assert run(capsys, "db", "import", str(dump), "--path", str(store))[0] == 0
    code, out, _ = run(capsys, "db", "export", "notes", "--path", str(store))
    assert json.loads(out)["notes"] == [
        {"rowid": 1, "txt": "a", "n": 1}, {"rowid": 2, "txt": "B", "n": 20},
        {"rowid": 3, "txt": "a", "n": 1}, {"rowid": 4, "txt": "c", "n": 3}]


@pytest.mark.parametrize(("rows", "reason"), [
    ([{"rowid": "x", "txt": "a", "n": 1}], "`rowid` must be an integer"),
    ([{"rowid": True, "txt": "a", "n": 1}], "`rowid` must be an integer"),
    ([{"rowid": 5, "txt": "a", "n": 1}, {"rowid": 5, "txt": "b", "n": 2}],
     "the same rowid (5) as row 1"),
])
def test_a_bad_rowid_is_refused_and_nothing_written(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, rows: list, reason: str) -> None:
    store = tmp_path / "store.sqlite3"
    assert run(capsys, "db", "init", "--path", str(store))[0] == 0
    conn = connect(store)
    with conn:
        conn.execute("CREATE TABLE notes (txt TEXT, n INTEGER)")
    conn.close()
    dump = tmp_path / "notes.json"
    dump.write_text(json.dumps({"notes": rows}))
    code, _, err = run(capsys, "db", "import", str(dump), "--path", str(store))
    assert code == 1 and reason in err
    code, out, _ = run(capsys, "db", "export", "notes", "--path", str(store))
    assert json.loads(out)["notes"] == []


# -- one vocabulary for types -------------------------------------------------------------


def _types_table() -> set[str]:
    """The type names of the language reference's §8.1 table."""
    doc = (Path(__file__).parent.parent / "docs" / "language.md").read_text(encoding="utf-8")
    section = doc.split("### 8.1 Types", 1)[1].split("\n### ", 1)[0]
    return {cell.split("`")[1] for cell in
            (line.split("|")[1].strip() for line in section.splitlines()
             if line.startswith("| `"))}


def test_checker_messages_docs_and_schema_file_name_types_alike() -> None:
    from komm_policy import types as t
    from komm_policy.directory.columns import MEANINGS
    documented = _types_table()
    for kind in (t.STRING, t.ADDRESS, t.INT, t.BOOL, t.IP, t.CIDR, t.REGEX, t.DURATION,
                 t.SIZE):
        assert str(kind) in documented, (str(kind), documented)
    # a schema column meaning that is also a language type has the same name there
    assert {"text", "network", "integer", "address", "bool"} <= set(MEANINGS) & documented
    assert str(t.list_of(t.CIDR)) == "list[network]" and str(t.STRING.opt()) == "text?"


@pytest.mark.parametrize(("condition", "message"), [
    ('client.port == "25"', "`==` cannot combine integer and text"),
    ("client.ip in 25", "`in` cannot combine ip and integer"),
    ("10.0.0.0/8 == 1", "`==` cannot combine network and integer"),
])
def test_checker_messages_use_the_schema_vocabulary(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, condition: str,
        message: str) -> None:
    path = tmp_path / "a.policy"
    path.write_text(f"stage rcpt {{\n    rule r:\n        when {condition}\n        accept\n"
                    "    default accept\n}\n", encoding="utf-8")
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1
    assert message in out, out
    assert "string" not in out and "cidr" not in out


# -- fmt --check cost ---------------------------------------------------------------------


def test_fmt_of_a_canonical_file_parses_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`fmt --check` of a kept set was four Lark parses a file (the input and the output,
    each with the AST and the concrete parser), then two: an unchanged output is the
    input, so it is not parsed again, and one parse gives both trees (`both_trees`)."""
    from komm_policy import formatter
    text = (Path(__file__).parent.parent / "policies" / "20-envelope.policy").read_text()
    assert formatter.format_text(text) == text  # the shipped set is canonical
    calls: list[str] = []
    real_both, real_parse = formatter.parse_both, formatter.parse
    monkeypatch.setattr(formatter, "parse_both",
                        lambda *a, **k: calls.append("both") or real_both(*a, **k))
    monkeypatch.setattr(formatter, "parse",
                        lambda *a, **k: calls.append("ast") or real_parse(*a, **k))
    assert formatter.format_text(text) == text
    assert calls == ["both"]
    # a file that changes is still checked by parsing the result
    calls.clear()
    messy = text.replace("\n    rule ", "\n  rule ", 1)
    assert messy != text
    assert formatter.format_text(messy) == text
    assert calls == ["both", "both"]


def test_fmt_comment_lines_are_right_with_many_comments() -> None:
    from komm_policy.formatter import format_text
    rules = "".join(f"    # before {i}\n    rule r{i}:  # after {i}\n        when sender == "
                    f'"a{i}@example.org"\n        accept\n\n' for i in range(300))
    text = "stage mail {\n" + rules + "    default accept\n}\n"
    result = format_text(text)
    for i in (0, 150, 299):
        assert f"    # before {i}\n    rule r{i}:  # after {i}\n" in result


# -- E155: the expansion budget is per written call ---------------------------------------


def _chain(n: int) -> str:
    """n functions, each calling the previous once beside 10 comparisons of its own: the
    rule's call expands into about 40 n nodes, linear in the source."""
    body = " or ".join(f'x == "c{j}"' for j in range(10))
    defs = 'def f0(x) = lower(x) == "a"\n' + "".join(
        f"def f{i}(x) = f{i - 1}(x) or {body}\n" for i in range(1, n))
    return (defs + f"stage mail {{\n    rule r:\n        when f{n - 1}(sender)\n"
            "        accept\n    default accept\n}\n")


def test_a_long_linear_chain_of_functions_is_accepted(tmp_path: Path) -> None:
    # 70 functions (about 140 levels deep expanded, inside E156's 150): checking each
    # definition expands the chain below it, ~100k nodes in all; the set-wide budget
    # refused such chains (E155)
    path = tmp_path / "chain.policy"
    path.write_text(_chain(70), encoding="utf-8")
    result = load_path(path)
    assert [d.code for d in result.diagnostics if d.is_error] == []
    assert result.policy_set is not None


def test_an_exponential_expansion_is_still_refused_at_the_call(tmp_path: Path) -> None:
    lines = ["def f0(x) = x == 1"]
    lines += [f"def f{i}(x) = f{i - 1}(x) and f{i - 1}(x)" for i in range(1, 15)]
    text = ("\n".join(lines) + "\nstage mail {\n    rule r:\n        when f14(1)\n"
            "        accept\n    default accept\n}\n")
    path = tmp_path / "blowup.policy"
    path.write_text(text, encoding="utf-8")
    result = load_path(path)
    assert result.policy_set is None
    found = [d for d in result.diagnostics if d.code == "E155"]
    assert found, result.diagnostics
    assert all(d.span.line >= 1 and d.span.column > 1 for d in found)
    assert "expands into more than 100000 expression nodes" in found[0].message
