"""`komm-policy replay`: re-deciding logged envelope stages with another policy set."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from komm_policy.cli import replay as replay_cli
from komm_policy.decisionlog import encode_record, make_record
from komm_policy.directory.sqlite import connect, init_schema
from komm_policy.policyset import load_policy_set
from komm_policy.replay import Change, Outcome, rebuild_request
from komm_policy.runtime import decide
from komm_policy.wire import decode_request

from .conftest import POLICIES, ROOT
from .shipped import directory as demo_directory

FIXTURES = ROOT / "tests" / "fixtures" / "stalwart"
REDACTED_FIXTURE = "derived-ehlo-2"


@pytest.fixture(scope="module")
def log_lines() -> list[bytes]:
    """The shipped set's decisions on every captured payload, as the service logs them;
    one record with the client IP redacted, and one line that is no record."""
    shipped = load_policy_set(POLICIES)
    directory = demo_directory()
    lines = []
    for path in sorted(FIXTURES.glob("*.json")):
        request = decode_request(path.read_bytes())
        decision = decide(shipped, request, directory)
        record = make_record(request, decision, 0.1, record_id=path.stem,
                             redact_client_ip=path.stem == REDACTED_FIXTURE)
        lines.append(encode_record(record))
    lines.append(b'{"truncated": ')
    return lines


@pytest.fixture
def jsonl(tmp_path, log_lines) -> Path:
    path = tmp_path / "decisions.jsonl"
    path.write_bytes(b"\n".join(log_lines) + b"\n")
    return path


def policies_without(tmp_path: Path, rule: str) -> Path:
    """A copy of the shipped set with one rule removed: the known change."""
    target = tmp_path / f"without-{rule}"
    shutil.copytree(POLICIES, target, ignore=shutil.ignore_patterns("*.test.toml"))
    for path in target.glob("*.policy"):
        text = path.read_text()
        start = text.find(f"    rule {rule}:")
        if start >= 0:
            end = text.index("\n\n", start)
            path.write_text(text[:start] + text[end + 2:])
            return target
    raise AssertionError(f"no rule {rule}")


def run_replay(log: Path | str, policies: Path | str, *, baseline: Path | None = None,
               directory: str = "memory:demo", examples: int = 10,
               fail_on_change: bool = False) -> tuple[int, dict, str]:
    args = Namespace(log=str(log), policies=str(policies),
                     baseline=str(baseline) if baseline else None, directory=directory,
                     examples=examples, format="json", fail_on_change=fail_on_change)
    out, err = io.StringIO(), io.StringIO()
    code = replay_cli.run(args, out, err)
    return code, json.loads(out.getvalue()) if out.getvalue() else {}, err.getvalue()


def test_the_same_policies_change_nothing_and_unreplayable_records_are_named(jsonl):
    code, report, _ = run_replay(jsonl, POLICIES)
    assert code == 0
    fixtures = len(list(FIXTURES.glob("*.json")))
    assert report["records"] == fixtures + 1
    assert report["not_replayed_by_reason"] == {
        "data stage (the record holds no message headers or body)": 4,
        "client IP redacted": 1,
        "not a decision record (unreadable line)": 1,
    }
    line = sorted(p.stem for p in FIXTURES.glob("*.json")).index(REDACTED_FIXTURE) + 1
    assert report["not_replayed_first"]["client IP redacted"].endswith(
        f"decisions.jsonl:{line}")
    assert report["replayed"] == fixtures - 5
    assert report["changed"] == 0 and report["examples"] == []


def test_a_removed_rule_is_found_with_old_and_new_decision(jsonl, tmp_path):
    new = policies_without(tmp_path, "blocked_ip")
    code, report, _ = run_replay(jsonl, new)
    assert code == 0
    assert report["changed"] == 1
    assert report["changed_by_stage"] == {"connect": 1}
    assert report["changed_by_rule"] == [
        {"stage": "connect", "old_rule": "blocked_ip", "new_rule": "default", "count": 1}]
    (example,) = report["examples"]
    assert example["id"] == "derived-connect-2"
    assert example["old"] == {"action": "reject", "reply": "550 5.7.1 IP blocked",
                              "rule": "blocked_ip", "fallback": False}
    assert example["new"]["action"] == "accept" and example["new"]["rule"] == "default"
    assert run_replay(jsonl, new, fail_on_change=True)[0] == 1


def test_a_changed_reply_text_is_a_change(jsonl, tmp_path):
    new = tmp_path / "new"
    shutil.copytree(POLICIES, new, ignore=shutil.ignore_patterns("*.test.toml"))
    envelope = new / "20-envelope.policy"
    envelope.write_text(envelope.read_text().replace('"No such mailing list"',
                                                     '"Unknown list"'))
    _, report, _ = run_replay(jsonl, new)
    assert report["changed"] == 1
    assert report["examples"][0]["new"]["reply"] == "550 5.1.1 Unknown list"


def test_baseline_re_decides_both_on_todays_directory(jsonl, tmp_path):
    # The directory is empty now: against the log, list mail decisions change because of
    # the data; against a baseline decided on the same directory only the policy counts.
    _, against_log, _ = run_replay(jsonl, POLICIES, directory="memory:empty")
    assert against_log["changed"] >= 1
    _, against_baseline, _ = run_replay(jsonl, POLICIES, baseline=POLICIES,
                                        directory="memory:empty")
    assert against_baseline["changed"] == 0
    new = policies_without(tmp_path, "blocked_ip")
    _, report, _ = run_replay(jsonl, new, baseline=POLICIES, directory="memory:demo")
    assert report["changed_by_rule"] == [
        {"stage": "connect", "old_rule": "blocked_ip", "new_rule": "default", "count": 1}]


def test_mta_log_in_a_sqlite_store_is_read_like_jsonl(jsonl, log_lines, tmp_path):
    store = tmp_path / "komm.sqlite3"
    conn = connect(store)
    init_schema(conn)
    with conn:  # SQLite refuses the line that is not JSON (mta_log's generated columns)
        conn.executemany("INSERT INTO mta_log (record) VALUES (?)",
                         [(line.decode(),) for line in log_lines[:-1]])
    conn.close()
    new = policies_without(tmp_path, "blocked_ip")
    _, from_store, _ = run_replay(store, new)
    _, from_jsonl, _ = run_replay(jsonl, new)
    assert from_store["records"] == from_jsonl["records"] - 1
    del from_jsonl["not_replayed_by_reason"]["not a decision record (unreadable line)"]
    for key in ("replayed_by_stage", "not_replayed_by_reason", "changed_by_rule"):
        assert from_store[key] == from_jsonl[key], key
    assert from_store["examples"][0]["where"].startswith("mta_log rowid ")


def test_versioned_records_carry_helo_and_sasl_login():
    record = {"record_version": 1, "stage": "rcpt", "client_ip": "192.0.2.141",
              "helo": "[192.168.178.23]", "sasl_login": "jane", "client_port": 60498,
              "sender": "jane@solawi.example",
              "recipients": ["peter.schmidt@web.example", "buchhaltung@solawi.example"],
              "tls_version": "TLSv1.3", "server_port": 587, "action": "accept"}
    request = rebuild_request(record)
    assert not isinstance(request, str)
    assert request.context.client.helo == "[192.168.178.23]"
    assert request.context.sasl.login == "jane"
    assert request.context.tls.version == "TLSv1.3"
    assert [a.address for a in request.envelope.to] == record["recipients"]
    assert rebuild_request({**record, "record_version": 99}) == (
        "record_version newer than this komm-policy reads")
    assert rebuild_request({**record, "client_ip": None}) == "client IP redacted"
    assert rebuild_request({**record, "stage": "data"}).startswith("data stage")


def test_a_versioned_ehlo_record_replays_its_helo(tmp_path):
    records = [
        {"record_version": 1, "id": "a", "stage": "ehlo", "client_ip": "192.0.2.9",
         "helo": "  ", "sender": None, "recipients": [], "action": "reject",
         "reply": {"status": 501, "enhanced": "5.5.2",
                   "message": "Invalid EHLO/HELO argument"},
         "rule": {"name": "empty_helo", "file": "x", "line": 1}},
        {"record_version": 1, "id": "b", "stage": "ehlo", "client_ip": "192.0.2.9",
         "helo": "mx.example.net", "sender": None, "recipients": [], "action": "accept",
         "rule": {"name": "default", "file": "x", "line": 1}},
    ]
    log = tmp_path / "v1.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    _, report, _ = run_replay(log, POLICIES)
    assert report["replayed"] == 2 and report["without_record_version"] == 0
    assert report["changed"] == 0
    _, report, _ = run_replay(log, policies_without(tmp_path, "empty_helo"))
    assert report["changed_by_rule"] == [
        {"stage": "ehlo", "old_rule": "empty_helo", "new_rule": "default", "count": 1}]


def test_exit_codes(jsonl, tmp_path):
    assert run_replay(tmp_path / "missing.jsonl", POLICIES)[0] == 2
    assert run_replay(jsonl, tmp_path / "no-policies")[0] == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.policy").write_text("stage connect { rule r: when nope accept }\n")
    code, _, err = run_replay(jsonl, broken)
    assert code == 1 and "has errors" in err
    code, _, err = run_replay(jsonl, POLICIES, directory="ldap:nowhere")
    assert code == 2 and "ldap:nowhere" in err
    not_a_store = tmp_path / "other.sqlite3"
    sqlite3.connect(not_a_store).execute("CREATE TABLE t (x)").connection.close()
    code, _, err = run_replay(not_a_store, POLICIES)
    assert code == 2 and "mta_log" in err


def test_the_command_runs_as_a_process(jsonl, tmp_path):
    new = policies_without(tmp_path, "blocked_ip")
    result = subprocess.run(
        [sys.executable, "-m", "komm_policy", "replay", str(jsonl), "--policies", str(new),
         "--directory", "memory:demo", "--examples", "1"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "1 answers would change" in result.stdout
    assert "connect  blocked_ip -> default" in result.stdout
    assert "old: reject 550 5.7.1 IP blocked (blocked_ip)" in result.stdout
    assert "1  client IP redacted" in result.stdout


def run_text(log: Path, policies: Path | str) -> str:
    args = Namespace(log=str(log), policies=str(policies), baseline=None,
                     directory="memory:demo", examples=10, format="text",
                     fail_on_change=False)
    out, err = io.StringIO(), io.StringIO()
    assert replay_cli.run(args, out, err) == 0, err.getvalue()
    return out.getvalue()


def test_the_text_report_escapes_wire_values_and_caps_recipients(tmp_path):
    """Sender and recipients come from the wire: a terminal escape in either is shown
    escaped, and 1,000 recipients are listed as the first few and `… and N more`."""
    escape = "\x1b]0;owned\x07\x1b[2J"
    record = {"record_version": 2, "id": "h", "stage": "mail", "client_ip": "192.0.2.9",
              "sender": f"a{escape}@example.org",
              "recipients": [f"r{i}{escape}@example.org" for i in range(1000)],
              "action": "reject", "reply": {"status": 550, "message": f"no{escape}"},
              "rule": {"name": "gone", "file": "x", "line": 1}}
    log = tmp_path / "hostile.jsonl"
    log.write_text(json.dumps(record) + "\n")
    text = run_text(log, POLICIES)
    assert "1 answers would change" in text
    assert not any(c in text for c in "\x1b\x07"), text
    example = next(line for line in text.splitlines() if "from " in line)
    assert "from 'a\\x1b]0;owned\\x07\\x1b[2J@example.org'" in example
    assert "to r0\\x1b]0;owned\\x07\\x1b[2J@example.org, " in example
    assert example.endswith(", … and 995 more")
    assert "r5" not in example and len(example) < 600
    assert "old: reject 550 no\\x1b]0;owned" in text


def test_a_line_nested_past_the_recursion_limit_is_not_a_record(tmp_path):
    log = tmp_path / "deep.jsonl"
    log.write_text("[" * 100_000 + "\n" + '{"a": ' * 100_000 + "\n")
    code, report, err = run_replay(log, POLICIES)
    assert code == 0, err
    assert report["records"] == 2
    assert report["not_replayed_by_reason"] == {"not a decision record (unreadable line)": 2}


def test_recipients_that_are_not_a_list_do_not_stop_the_replay(tmp_path):
    record = {"record_version": 2, "stage": "mail", "client_ip": "192.0.2.9",
              "sender": "", "recipients": 5, "action": "reject"}
    log = tmp_path / "odd.jsonl"
    log.write_text(json.dumps(record) + "\n")
    code, report, err = run_replay(log, POLICIES)
    assert code == 0, err
    assert report["changed"] == 1 and report["examples"][0]["recipients"] == []


def _changed_record(stage: str, **fields: object) -> dict:
    """A record whose logged answer the shipped set will not give again (a gone rule)."""
    return {"record_version": 2, "id": stage, "stage": stage, "client_ip": "198.51.100.23",
            "helo": None, "sender": None, "recipients": [], "action": "reject",
            "reply": {"status": 554, "message": "gone"},
            "rule": {"name": "gone", "file": "x", "line": 1}} | fields


def test_a_change_names_what_identifies_its_session_at_its_stage(tmp_path):
    """Operator finding: a connect-stage change showed only `decisions.jsonl:3  connect`.
    Each change names the client (every stage), HELO at ehlo, login, sender, recipients."""
    records = [
        _changed_record("connect", client_ip="2001:db8::25"),
        _changed_record("ehlo", helo="mx1.example.net"),
        _changed_record("auth", helo="[redacted]", sasl_login="anna"),
        _changed_record("mail", helo="mx1.example.net", sender=""),
        _changed_record("rcpt", helo="mx1.example.net", sender="anna.mueller@gmail.com",
                        recipients=["peter@web.example"]),
    ]
    log = tmp_path / "decisions.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    lines = [line for line in run_text(log, POLICIES).splitlines()
             if line.startswith(f"  {log}:")]
    assert lines == [
        f"  {log}:1  connect  client 2001:db8::25",
        f"  {log}:2  ehlo  client 198.51.100.23 helo 'mx1.example.net'",
        f"  {log}:3  auth  client 198.51.100.23 helo '[redacted]' login 'anna'",
        f"  {log}:4  mail  client 198.51.100.23 from ''",
        f"  {log}:5  rcpt  client 198.51.100.23 from 'anna.mueller@gmail.com' "
        "to peter@web.example",
    ]
    code, report, err = run_replay(log, POLICIES)
    assert code == 0, err
    first, second, third = report["examples"][:3]
    assert (first["client_ip"], first["helo"], first["sasl_login"]) == (
        "2001:db8::25", None, None)
    assert second["helo"] == "mx1.example.net" and third["sasl_login"] == "anna"


def test_a_redacted_client_shows_as_redacted_not_as_nothing():
    change = Change("log:1", "x", None, "connect", None, [], Outcome("accept", None, None),
                    Outcome("reject", "550 no", "r"), client_ip=None)
    assert replay_cli._who(change) == "client [redacted]"
