"""The `komm-policy` command line, run in-process through `cli.main` (and once as
`python -m komm_policy`): check, db, eval, stalwart-config, and serve's configuration
errors (no server is started here)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from komm_policy.cli import main
from komm_policy.cli.check import github_annotation
from komm_policy.errors import Diagnostic, Severity, Span

from .conftest import POLICIES, ROOT
from .stalwart_oracle import stalwart_parse_problems

FIXTURES = ROOT / "tests" / "fixtures" / "stalwart"

CLEAN = "stage rcpt {\n    rule a: when sender == \"\" reject\n    default accept\n}\n"
WARNING_ONLY = "stage rcpt {\n    rule a: when sender == \"\" reject\n}\n"  # W202
ERROR = ("stage rcpt {\n    rule a: when domian(sender) == \"x.example\" reject\n"
         "    default accept\n}\n")  # E101 at 2:18-2:24


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command line that argparse refuses: exit status 2, the message on stderr."""
    with pytest.raises(SystemExit) as excinfo:
        main(list(argv))
    assert excinfo.value.code == 2
    return capsys.readouterr().err


def policy_dir(tmp_path: Path, name: str, **files: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    for file, text in files.items():
        (directory / f"{file}.policy").write_text(text)
    return directory


# ---------------------------------------------------------------------------------------
# check


def test_check_writes_to_the_current_sys_stdout() -> None:
    """`check` must print to sys.stdout as it is when it runs (redirect_stdout, capsys,
    an embedding tool), not to the stream that was sys.stdout when the module was
    imported."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["check", str(POLICIES)])
    assert code == 0
    assert out.getvalue().rstrip().endswith("0 errors, 0 warnings")


def test_check_clean_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", str(POLICIES))
    assert code == 0
    assert f"{POLICIES}: ok, " in out
    assert out.rstrip().endswith("0 errors, 0 warnings")


def test_check_strict_clean_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "check", "--strict", str(POLICIES))[0] == 0


def test_check_errors_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, "bad", a=ERROR)
    code, out, _ = run(capsys, "check", str(directory))
    assert code == 1
    assert "E101" in out and "domian" in out
    assert f"{directory}: failed" in out
    assert out.rstrip().endswith("1 error, 0 warnings")


def test_check_warnings_exit_0_or_1_with_strict(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, "warn", a=WARNING_ONLY)
    code, out, _ = run(capsys, "check", str(directory))
    assert code == 0
    assert "W202" in out
    assert out.rstrip().endswith("0 errors, 1 warning")
    assert run(capsys, "check", "--strict", str(directory))[0] == 1


def test_check_a_single_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = policy_dir(tmp_path, "one", a=CLEAN)
    code, out, _ = run(capsys, "check", str(directory / "a.policy"))
    assert code == 0
    assert "ok, 1 rule in 1 file" in out


def test_check_missing_path_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    code, out, err = run(capsys, "check", str(POLICIES), str(missing))
    assert code == 2
    assert str(missing) in err
    assert out == ""


def test_check_directory_without_policies_exits_2(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no policies here")
    code, _, err = run(capsys, "check", str(empty))
    assert code == 2
    assert "no *.policy files" in err


def test_check_text_escapes_control_characters_in_messages(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """E123 quotes the header name `"X-A\\n"`: the text report shows `X-A\\n` on the
    message's line instead of breaking it, and an escape in the source line is a `?`."""
    policy = ('stage data {\n    rule a: when true add_header "X-A\\n" "\x1b[2J"\n'
              '        continue\n    default accept\n}\n')
    directory = policy_dir(tmp_path, "ctl", a=policy)
    code, out, _ = run(capsys, "check", str(directory))
    assert code == 1
    (line,) = [line for line in out.splitlines() if "E123" in line]
    assert line.endswith("`X-A\\n` is not a valid header name")
    assert "\x1b" not in out
    assert 'add_header "X-A\\n" "?[2J"' in out


def test_check_reports_policy_entries_that_are_not_regular_files(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A dangling symlink, a directory and a FIFO named `*.policy` are E019 errors (the
    set is refused, not loaded without them), and the FIFO is never opened to block; a
    symlink to a policy file is read like the file."""
    directory = policy_dir(tmp_path, "odd", a=CLEAN)
    (tmp_path / "elsewhere.policy").write_text(WARNING_ONLY.replace("rule a", "rule b"))
    (directory / "b.policy").symlink_to(tmp_path / "elsewhere.policy")
    (directory / "c.policy").symlink_to("gone.policy")
    (directory / "d.policy").mkdir()
    os.mkfifo(directory / "e.policy")
    code, out, _ = run(capsys, "check", str(directory))
    assert code == 1
    lines = [line for line in out.splitlines() if "E019" in line]
    assert lines == [
        f"{directory / 'c.policy'}:1:1: error E019: policy file is a dangling symbolic link "
        "(its target does not exist)",
        f"{directory / 'd.policy'}:1:1: error E019: policy file is a directory, not a "
        "regular file",
        f"{directory / 'e.policy'}:1:1: error E019: policy file is a FIFO, not a regular "
        "file"]
    assert out.rstrip().endswith("3 errors, 0 warnings")
    for name in ("c", "d", "e"):
        (directory / f"{name}.policy").unlink() if name != "d" else (
            directory / "d.policy").rmdir()
    code, out, _ = run(capsys, "check", str(directory))
    assert code == 0 and "ok, 2 rules in 2 files" in out
    os.mkfifo(tmp_path / "alone.policy")
    code, out, _ = run(capsys, "check", str(tmp_path / "alone.policy"))
    assert code == 1 and "is a FIFO" in out


def test_check_unknown_option_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "check", "--pedantic", str(POLICIES))
    assert "--pedantic" in err
    err = usage_error(capsys, "check", "--format", "xml", str(POLICIES))
    assert "xml" in err


def test_no_command_and_unknown_command_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    usage_error(capsys)
    assert "lint" in usage_error(capsys, "lint")


def test_check_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = policy_dir(tmp_path, "bad", a=ERROR)
    warn = policy_dir(tmp_path, "warn", b=WARNING_ONLY)
    code, out, _ = run(capsys, "check", "--format", "json", str(bad), str(warn))
    assert code == 1
    data = json.loads(out)
    assert data["errors"] == 1
    assert data["warnings"] == 1
    first, second = data["sets"]
    assert first["path"] == str(bad)
    assert first["ok"] is False and first["version"] is None and first["rules"] is None
    assert first["files"] == [str(bad / "a.policy")]
    [diagnostic] = first["diagnostics"]
    assert diagnostic == {
        "code": "E101", "severity": "error", "message": "unknown function `domian`",
        "file": str(bad / "a.policy"), "line": 2, "column": 18, "end_line": 2,
        "end_column": 24, "hint": "did you mean `domain`?"}
    assert second["ok"] is True
    assert second["rules"] == 1
    assert isinstance(second["version"], str) and second["version"]
    [warning] = second["diagnostics"]
    assert warning["code"] == "W202" and warning["severity"] == "warning"
    assert (warning["line"], warning["column"]) == (1, 7)


def test_check_json_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", "--format", "json", str(POLICIES))
    assert code == 0
    data = json.loads(out)
    assert (data["errors"], data["warnings"]) == (0, 0)
    [entry] = data["sets"]
    assert entry["ok"] is True and entry["diagnostics"] == []
    assert len(entry["files"]) == len(list(POLICIES.glob("*.policy")))


def test_check_github(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = policy_dir(tmp_path, "bad", a=ERROR)
    warn = policy_dir(tmp_path, "warn", b=WARNING_ONLY)
    code, out, _ = run(capsys, "check", "--format", "github", str(bad), str(warn))
    assert code == 1
    error_line, warning_line = out.splitlines()
    file = str(bad / "a.policy").replace(":", "%3A").replace(",", "%2C")
    assert error_line == (
        f"::error file={file},line=2,col=18,endLine=2,endColumn=24,title=E101::"
        "unknown function `domian` (did you mean `domain`?)")
    assert warning_line.startswith(f"::warning file={warn / 'b.policy'},line=1,col=7,"
                                   "endLine=1,endColumn=11,title=W202::")
    code, out, _ = run(capsys, "check", "--format", "github", "--strict", str(warn))
    assert code == 1
    assert out.startswith("::error file=")
    assert "title=W202::" in out


def test_check_github_escapes_properties(capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    directory = tmp_path / "odd"
    directory.mkdir()
    (directory / "a,b:c%d.policy").write_text(ERROR)
    code, out, _ = run(capsys, "check", "--format", "github", str(directory))
    assert code == 1
    assert "file=" + str(directory).replace("%", "%25") + "/a%2Cb%3Ac%25d.policy,line=2," in out


def test_github_annotation_escaping() -> None:
    diagnostic = Diagnostic("E999", Severity.ERROR, "first line\nsecond: 100%, ok\r",
                            Span("dir,x/f:1%.policy", 3, 4, 5, 6), "hint, with: colon")
    assert github_annotation(diagnostic) == (
        "::error file=dir%2Cx/f%3A1%25.policy,line=3,col=4,endLine=5,endColumn=6,"
        "title=E999::first line%0Asecond: 100%25, ok%0D (hint, with: colon)")
    warning = Diagnostic("W2:0", Severity.WARNING, "m", Span("f", 1, 1, 1, 2))
    assert github_annotation(warning) == (
        "::warning file=f,line=1,col=1,endLine=1,endColumn=2,title=W2%3A0::m")
    assert github_annotation(warning, strict=True).startswith("::error ")


def test_check_file_that_is_not_utf8(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    directory = tmp_path / "latin1"
    directory.mkdir()
    file = directory / "a.policy"
    file.write_bytes(b"stage rcpt {\n  # caf\xe9\n    default accept\n}\n")
    code, out, _ = run(capsys, "check", "--format", "json", str(directory))
    assert code == 1
    [diagnostic] = json.loads(out)["sets"][0]["diagnostics"]
    assert diagnostic["code"] == "E015"
    assert diagnostic["severity"] == "error"
    assert diagnostic["file"] == str(file)
    assert (diagnostic["line"], diagnostic["column"]) == (2, 8)
    assert "0xe9" in diagnostic["message"]
    code, out, _ = run(capsys, "check", str(directory))
    assert code == 1
    assert f"{file}:2:8: error E015" in out


# ---------------------------------------------------------------------------------------
# db


def test_db_init_export_import_round_trip(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    first = tmp_path / "var" / "first.sqlite3"
    code, out, _ = run(capsys, "db", "init", "--demo", "--path", str(first))
    assert code == 0
    assert out.strip() == f"{first}: schema ready with demo data"
    code, exported, _ = run(capsys, "db", "export", "--path", str(first))
    assert code == 0
    data = json.loads(exported)
    assert set(data) == {"blocked_ips", "message_categories", "account", "admin_identities",
                         "subscriptions"}
    assert len(data["message_categories"]) == 4
    dump = tmp_path / "dump.json"
    dump.write_text(exported)
    second = tmp_path / "second.sqlite3"
    code, out, _ = run(capsys, "db", "import", str(dump), "--path", str(second))
    assert code == 0
    assert ("imported 4 account, 1 admin_identities, 4 blocked_ips, 4 message_categories, "
            "5 subscriptions") in out
    code, again, _ = run(capsys, "db", "export", "--path", str(second))
    assert code == 0
    assert json.loads(again) == data


def test_db_init_without_demo_is_empty(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite3"
    code, out, _ = run(capsys, "db", "init", "--path", str(path))
    assert code == 0
    assert out.strip() == f"{path}: schema ready"
    code, exported, _ = run(capsys, "db", "export", "--path", str(path))
    assert all(rows == [] for rows in json.loads(exported).values())


def test_db_import_from_stdin(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.sqlite3"
    rows = {"blocked_ips": [{"ip": "192.0.2.0/24", "reason": "test"}]}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(json.dumps(rows).encode())))
    code, _, _ = run(capsys, "db", "import", "-", "--path", str(path))
    assert code == 0
    code, exported, _ = run(capsys, "db", "export", "--path", str(path))
    (row,) = json.loads(exported)["blocked_ips"]
    assert {k: row[k] for k in ("ip", "reason", "active")} == {
        "ip": "192.0.2.0/24", "reason": "test", "active": True}
    assert isinstance(row["blocked_at"], int)  # the store's default: the time of the insert


def test_db_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "missing.sqlite3"
    code, _, err = run(capsys, "db", "export", "--path", str(missing))
    assert code == 2 and "no such database" in err
    assert not missing.exists()
    code, _, err = run(capsys, "db", "import", str(tmp_path / "nope.json"), "--path",
                       str(missing))
    assert code == 2
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, _, err = run(capsys, "db", "import", str(broken), "--path", str(missing))
    assert code == 1 and "invalid JSON" in err
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"blocked_ips": [{"reason": "no ip"}]}')
    code, _, err = run(capsys, "db", "import", str(wrong), "--path", str(missing))
    assert code == 1
    assert not missing.exists()


# ---------------------------------------------------------------------------------------
# eval

EVAL = ("eval", "--directory", "memory:demo")  # the demo data, whatever is configured


def test_eval_explain(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *EVAL, str(FIXTURES / "derived-rcpt-2.json"),
                       "--policies", str(POLICIES), "--explain")
    assert code == 0
    lines = out.splitlines()
    assert "stage:    rcpt" in lines
    assert "action:   reject" in lines
    assert "reply:    550 5.7.1 You are not allowed to post to this list" in lines
    assert any(line.startswith("rule:     not_allowed_to_post (") for line in lines)
    response = next(line for line in lines if line.startswith("response: "))
    assert json.loads(response[len("response: "):]) == {
        "action": "reject", "response": {
            "status": 550, "enhanced_status": "5.7.1",
            "message": "You are not allowed to post to this list", "disconnect": False,
            "enhancedStatus": "5.7.1"}}
    rules = lines[lines.index("rules:") + 1:lines.index("lookups:")]
    assert [line.split()[1:] for line in rules] == [
        ["postmaster", "no", "match"], ["role_mailbox", "no", "match"],
        ["outbound_submission", "no", "match"], ["unknown_list", "no", "match"],
        ["not_allowed_to_post", "matched"]]
    assert all("20-envelope.policy:" in line for line in rules)
    lookups = lines[lines.index("lookups:") + 1:]
    # the directory file's category(), is_admin() and subscribed(), as table reads;
    # keys and yes/no answers spelled as in the policy language (`true`, not 'True')
    assert lookups[0].startswith("  lookup(message_categories: active, email_address)"
                                 "(true, 'gemuese@solawi.example') -> "
                                 "message_categories(id=2, name='Gemuese'")
    assert lookups[1].startswith("  lookup_all(account: email, is_active)"
                                 "('anna.mueller@gmail.com', true) -> [account(id=101,")
    assert lookups[2].startswith("  exists(admin_identities: identity)('c200")
    assert " -> false" in lookups[2]
    assert lookups[3].startswith("  exists(subscriptions: active, category_id, "
                                 "subscriber_account_id)(true, 2, 101) -> false")


def test_eval_without_explain_has_no_trace(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *EVAL, str(FIXTURES / "derived-connect-1.json"),
                       "--policies", str(POLICIES))
    assert code == 0
    assert "action:   accept" in out
    assert 'response: {"action":"accept"}' in out
    assert "rules:" not in out and "lookups:" not in out


def test_eval_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *EVAL, str(FIXTURES / "derived-rcpt-3.json"),
                       "--policies", str(POLICIES), "--format", "json", "--explain")
    assert code == 0
    data = json.loads(out)
    assert data["response"] == {"action": "reject", "response": {
        "status": 550, "enhanced_status": "5.1.1", "message": "No such mailing list",
        "disconnect": False, "enhancedStatus": "5.1.1"}}
    assert stalwart_parse_problems(json.dumps(data["response"]).encode()) == []
    assert data["decision"]["action"] == "reject"
    assert data["decision"]["stage"] == "rcpt"
    assert data["decision"]["rule"]["name"] == "unknown_list"
    assert [step["rule"] for step in data["trace"]][-1] == "unknown_list"
    assert data["trace"][-1]["outcome"] == "matched"


def test_eval_with_a_sqlite_directory(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    path = tmp_path / "komm.sqlite3"
    assert run(capsys, "db", "init", "--path", str(path))[0] == 0  # no data: no lists
    code, out, _ = run(capsys, "eval", str(FIXTURES / "derived-rcpt-1.json"), "--policies",
                       str(POLICIES), "--directory", f"sqlite:{path}", "--format", "json")
    assert code == 0
    assert json.loads(out)["decision"]["rule"]["name"] == "unknown_list"


def test_eval_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, *EVAL, str(tmp_path / "missing.json"), "--policies",
                       str(POLICIES))
    assert code == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"context":{"stage":"rcpt","client":{"ip":"not-an-ip"}}}')
    code, _, err = run(capsys, *EVAL, str(bad), "--policies", str(POLICIES))
    assert code == 1
    assert "$.context.client.ip" in err
    broken = policy_dir(tmp_path, "broken", a=ERROR)
    code, _, err = run(capsys, *EVAL, str(FIXTURES / "derived-rcpt-1.json"), "--policies",
                       str(broken))
    assert code == 1
    assert "E101" in err
    code, _, err = run(capsys, "eval", str(FIXTURES / "derived-rcpt-1.json"), "--policies",
                       str(POLICIES), "--directory", f"sqlite:{tmp_path / 'none.sqlite3'}")
    assert code == 2
    assert "db init" in err


# ---------------------------------------------------------------------------------------
# stalwart-config


def both_forms(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict, dict, str]:
    """The TOML and the JSON form, each printed alone by its own run and parsed whole (so
    each is pasteable as is); and what the TOML run wrote to stderr."""
    code, out, err = run(capsys, "stalwart-config", *args, "--format", "toml")
    assert code == 0
    toml = tomllib.loads(out)
    code, out, _ = run(capsys, "stalwart-config", *args, "--format", "json")
    assert code == 0
    return toml, json.loads(out), err


def test_stalwart_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "stalwart-config")
    assert code == 0
    assert err == ""
    assert tomllib.loads(out) == both_forms(capsys)[0]  # TOML is the default, alone
    toml, data, _ = both_forms(capsys)
    hook = toml["session"]["hook"]["komm"]
    assert hook["enable"] is True
    assert hook["url"] == "http://127.0.0.1:3002/mta-hook"
    assert hook["stages"] == ["connect", "ehlo", "mail", "rcpt", "data"]
    assert hook["timeout"] == "5s"
    assert "auth" not in hook
    assert data["url"] == "http://127.0.0.1:3002/mta-hook"
    assert data["stages"] == {"connect": True, "ehlo": True, "mail": True, "rcpt": True,
                              "data": True}
    assert data["timeout"] == 5000
    assert data["httpAuth"] == {"@type": "Unauthenticated"}


def test_stalwart_config_with_token(capsys: pytest.CaptureFixture[str]) -> None:
    token = 'tok"en\\with-quote'
    toml, data, _ = both_forms(capsys, "--url", "https://hooks.example/mta-hook",
                               "--token", token, "--timeout", "1500ms", "--stages", "rcpt, DATA")
    hook = toml["session"]["hook"]["komm"]
    assert hook["enable"] is True
    assert hook["url"] == "https://hooks.example/mta-hook"
    assert hook["stages"] == ["rcpt", "data"]
    assert hook["timeout"] == "1500ms"
    assert hook["auth"] == {"username": "stalwart", "secret": token}
    assert data["stages"] == {"rcpt": True, "data": True}
    assert all(value is True for value in data["stages"].values())
    assert data["timeout"] == 1500
    assert data["httpAuth"] == {"@type": "Bearer",
                                "bearerToken": {"@type": "Value", "secret": token}}


@pytest.mark.parametrize(("flag", "value", "toml_secret", "json_secret"), [
    ("--token-env", "KOMM_TOKEN", "%{env:KOMM_TOKEN}%",
     {"@type": "EnvironmentVariable", "variableName": "KOMM_TOKEN"}),
    ("--token-file", "/etc/stalwart/komm-token", "%{file:/etc/stalwart/komm-token}%",
     {"@type": "File", "filePath": "/etc/stalwart/komm-token"}),
])
def test_stalwart_config_references_the_secret(capsys: pytest.CaptureFixture[str], flag: str,
                                               value: str, toml_secret: str,
                                               json_secret: dict[str, str]) -> None:
    toml, data, _ = both_forms(capsys, flag, value)
    assert toml["session"]["hook"]["komm"]["auth"]["secret"] == toml_secret
    assert data["httpAuth"] == {"@type": "Bearer", "bearerToken": json_secret}


def test_stalwart_config_token_forms_exclude_each_other(
        capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "stalwart-config", "--token", "a", "--token-env", "B")
    assert "not allowed with" in err


@pytest.mark.parametrize("url", ["127.0.0.1:3002/mta-hook", "localhost/mta-hook",
                                 "ftp://host/mta-hook", "http://", "/mta-hook"])
def test_stalwart_config_refuses_a_url_without_scheme(capsys: pytest.CaptureFixture[str],
                                                      url: str) -> None:
    code, out, err = run(capsys, "stalwart-config", "--url", url)
    assert code == 2 and out == ""
    assert "is not an http:// or https:// URL" in err


@pytest.mark.parametrize(("text", "ms", "toml_text"), [
    ("5s", 5000, "5s"), ("30", 30000, "30s"), ("2m", 120000, "120s"), ("250ms", 250, "250ms"),
])
def test_stalwart_config_timeouts(capsys: pytest.CaptureFixture[str], text: str, ms: int,
                                  toml_text: str) -> None:
    toml, data, _ = both_forms(capsys, "--timeout", text)
    assert data["timeout"] == ms
    assert toml["session"]["hook"]["komm"]["timeout"] == toml_text


def test_stalwart_config_single_formats(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "stalwart-config", "--format", "toml", "--id", "policy")
    assert code == 0
    assert tomllib.loads(out)["session"]["hook"]["policy"]["enable"] is True
    code, out, _ = run(capsys, "stalwart-config", "--format", "json")
    assert code == 0
    assert json.loads(out)["enable"] == {"else": "true"}


def test_stalwart_config_auth_stage_warns(capsys: pytest.CaptureFixture[str]) -> None:
    toml, data, err = both_forms(capsys, "--stages", "auth,rcpt")
    assert "never calls the auth stage" in err
    assert toml["session"]["hook"]["komm"]["stages"] == ["auth", "rcpt"]
    assert data["stages"] == {"auth": True, "rcpt": True}


@pytest.mark.parametrize("stages", ["rcpt,bogus", "", " , "])
def test_stalwart_config_unknown_stage_exits_2(capsys: pytest.CaptureFixture[str],
                                               stages: str) -> None:
    code, out, err = run(capsys, "stalwart-config", "--stages", stages)
    assert code == 2
    assert out == ""
    assert "unknown stage" in err


@pytest.mark.parametrize("timeout", ["5x", "fast", "1.5s", "-1s", ""])
def test_stalwart_config_bad_timeout_exits_2(capsys: pytest.CaptureFixture[str],
                                             timeout: str) -> None:
    code, out, err = run(capsys, "stalwart-config", f"--timeout={timeout}")
    assert code == 2
    assert out == ""
    assert "not a duration" in err


# ---------------------------------------------------------------------------------------
# serve (configuration errors only)


@pytest.fixture
def no_komm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve reads KOMM_* from the process environment: make sure none leak in."""
    for name in list(os.environ):
        if name.startswith("KOMM_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("no_komm_environment")
def test_serve_with_an_invalid_configuration_exits_2(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    config = tmp_path / "komm.toml"
    config.write_text("[server]\nshadw = true\n")
    code, out, err = run(capsys, "serve", "--config", str(config), "--port", "70000",
                         "--workers", "0", "--policies", str(tmp_path / "missing"),
                         "--directory", f"sqlite:{tmp_path / 'none.sqlite3'}")
    assert code == 2
    assert out == ""
    assert err.startswith("komm-policy serve: invalid configuration:")
    assert "unknown option [server] shadw" in err
    assert "port: 70000 is not a TCP port" in err
    assert "workers: must be at least 1, got 0" in err
    assert f"policies: {tmp_path / 'missing'} is not a directory" in err
    assert "komm-policy db init --path" in err
    assert len([line for line in err.splitlines() if line.startswith("  - ")]) == 5


@pytest.mark.usefixtures("no_komm_environment")
def test_serve_bad_flag_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "serve", "--port", "abc")
    assert "--port" in err


# ---------------------------------------------------------------------------------------
# python -m komm_policy


def test_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "komm_policy", "check", "--format", "json", str(POLICIES)],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["errors"] == 0
