"""`komm-policy test`: test files, expected-vs-actual output, formats, coverage, exit codes."""

from __future__ import annotations

import io
import json
import shutil
import xml.etree.ElementTree as ET
from argparse import Namespace
from pathlib import Path

import pytest

from komm_policy.cli import main
from komm_policy.cli import test as test_cli
from komm_policy.directory.schema import load_schema
from komm_policy.policyset import compile_text
from komm_policy.policytest.requests import build_request
from komm_policy.policytest.runner import Coverage, run_cases
from komm_policy.policytest.spec import SpecError, load_file

from .conftest import POLICIES, ROOT

POLICY = """\
stage connect {
    rule local:
        when client.ip in [127.0.0.0/8]
        accept

    rule tag:
        when client.port == 25
        log "port 25"
        continue

    rule blocked:
        when exists("blocked_ips", ip = client.ip)
        reject 550 5.7.1 "blocked"
        on error tempfail 451 4.3.0 "try later"

    rule watch dry_run:
        when client.port == 2525
        reject

    default accept
}
"""


def run_test(*paths: str, format: str = "text", coverage: bool = False,
             threshold: float | None = None, verbose: bool = False) -> tuple[int, str, str]:
    args = Namespace(paths=list(paths), format=format, coverage=coverage,
                     threshold=threshold, verbose=verbose)
    out, err = io.StringIO(), io.StringIO()
    return test_cli.run(args, out, err), out.getvalue(), err.getvalue()


TABLES = """\
[tables.blocked_ips]
primary_key = ["ip"]
columns.ip = { type = "network" }
columns.reason = { type = "text", optional = true }

[tables.account]
primary_key = ["id"]
columns.id = { type = "integer" }
columns.name = { type = "text" }
columns.email = { type = "address" }
"""
"""The schema file of the sets written here (rows are checked against it)."""


def write_set(tmp_path: Path, tests: str, policy: str = POLICY) -> Path:
    if not (tmp_path / "schema.toml").exists():
        (tmp_path / "schema.toml").write_text(TABLES)
    (tmp_path / "10-connect.policy").write_text(policy)
    (tmp_path / "10-connect.test.toml").write_text(tests)
    return tmp_path


PASSING = """\
[[rows.blocked_ips]]
ip = "192.0.2.66"

[[case]]
name = "local"
request = { stage = "connect", client.ip = "127.0.0.1" }
expect = { action = "accept", rule = "local" }

[[case]]
name = "blocked on port 25"
request = { stage = "connect", client.ip = "192.0.2.66", client.port = 25 }
expect = { action = "reject", status = 550, enhanced = "5.7.1", message = "blocked", \
rule = "blocked", logs = ["port 25"] }
"""


# ---------------------------------------------------------------------------------------
# The shipped set


def test_the_shipped_tests_pass_with_full_coverage():
    code, out, _ = run_test(str(POLICIES), format="json", threshold=100)
    report = json.loads(out)
    assert code == 0, out
    assert report["failed"] == 0 and report["errors"] == 0
    assert report["passed"] >= 25
    assert report["coverage"]["percent"] == 100.0
    kinds = {item["kind"] for item in report["coverage"]["items"]}
    assert kinds == {"rule", "default", "on error", "function"}  # the directory's helpers


def test_make_test_runs_the_shipped_tests():
    makefile = (ROOT / "Makefile").read_text()
    assert "komm-policy test --threshold 100 policies" in makefile


def test_a_copied_policy_directory_tests_green(tmp_path):
    # operators copy policies/ to /etc/komm-policy/policies (contrib/komm-policy.service);
    # a fixture path reaching out of the directory (`../tests/...`) broke 3 cases there
    copied = tmp_path / "etc" / "policies"
    shutil.copytree(POLICIES, copied)
    code, out, _ = run_test(str(copied), format="json")
    report = json.loads(out)
    assert code == 0, out
    assert report["errors"] == 0 and report["failed"] == 0
    assert report["passed"] >= 25
    for test_file in copied.glob("*.test.toml"):
        for line in test_file.read_text(encoding="utf-8").splitlines():
            assert "../" not in line, f"{test_file.name}: {line}"


def test_the_shipped_fixtures_are_the_shared_captures():
    # policies/fixtures/ holds copies so the directory stands alone; they must not drift
    shipped = sorted((POLICIES / "fixtures").glob("*.json"))
    assert len(shipped) == 3
    for fixture in shipped:
        shared = ROOT / "tests" / "fixtures" / "stalwart" / fixture.name
        assert fixture.read_bytes() == shared.read_bytes(), fixture.name


# ---------------------------------------------------------------------------------------
# Results and output formats


def test_passing_cases_exit_0(tmp_path):
    code, out, _ = run_test(str(write_set(tmp_path, PASSING)), verbose=True)
    assert code == 0
    assert "ok    " in out and "2 passed, 0 failed, 0 errors" in out


def test_a_failure_shows_expected_and_actual_per_field(tmp_path):
    failing = PASSING.replace('rule = "local"', 'rule = "blocked", status = 250')
    code, out, _ = run_test(str(write_set(tmp_path, failing)))
    assert code == 1
    assert f"FAIL  {tmp_path}/10-connect.test.toml:4: local" in out
    assert '- rule: "blocked"\n      + rule: "local"' in out
    assert "- status: 250\n      + status: null" in out
    assert "decision: accept by local (" in out
    assert "1 passed, 1 failed, 0 errors" in out


def test_json_output(tmp_path):
    failing = PASSING.replace('message = "blocked"', 'message_matches = "^allowed"')
    code, out, _ = run_test(str(write_set(tmp_path, failing)), format="json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert (report["passed"], report["failed"], report["errors"]) == (1, 1, 0)
    failed = [c for c in report["cases"] if c["status"] == "failed"]
    assert failed[0]["name"] == "blocked on port 25" and failed[0]["line"] == 9
    assert failed[0]["differences"] == [
        {"field": "message_matches", "expected": "/^allowed/", "actual": "blocked"}]


def test_junit_output_is_read_by_an_xml_parser(tmp_path):
    failing = PASSING.replace('action = "accept"', 'action = "reject"') + (
        '\n[[case]]\nname = "broken"\nrequest = { stage = "connect", nope = 1 }\n'
        'expect = { action = "accept" }\n')
    code, out, _ = run_test(str(write_set(tmp_path, failing)), format="junit")
    assert code == 1
    root = ET.fromstring(out)
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    (suite,) = root.findall("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["local"].find("failure") is not None
    assert '- action: "reject"' in cases["local"].find("failure").text
    assert cases["blocked on port 25"].find("failure") is None
    assert "unknown request field `nope`" in cases["broken"].find("error").get("message")


def test_control_characters_in_names_and_values_keep_junit_well_formed(tmp_path):
    """XML 1.0 forbids U+0001 even as `&#1;`: it is written as the escape `\\x01`, and
    the text report shows the same escape instead of the raw control."""
    hostile = (
        '[[case]]\nname = "bell\\u0001\\u001b[2J case"\n'
        'request = { stage = "connect", client.ip = "127.0.0.1" }\n'
        'expect = { action = "reject", message = "no\\u0001pe\\uffff" }\n')
    code, out, _ = run_test(str(write_set(tmp_path, hostile)), format="junit")
    assert code == 1
    root = ET.fromstring(out)  # raises on ill-formed XML
    (case,) = root.iter("testcase")
    assert case.get("name") == "bell\\x01\\x1b[2J case"
    failure = case.find("failure").text
    assert 'message: "no\\u0001pe\\uffff"' in failure  # JSON's escape, then shown's
    assert not any(c in failure for c in "\x01\uffff")
    code, out, _ = run_test(str(tmp_path))
    assert code == 1
    assert "FAIL " in out and "bell\\x01\\x1b[2J case" in out
    assert not any(c in out for c in "\x01\x1b\uffff")


# ---------------------------------------------------------------------------------------
# Coverage


def test_coverage_counts_evaluated_matched_decided_and_on_error(tmp_path):
    tests = PASSING + """
[[case]]
name = "directory down"
directory_unavailable = true
request = { stage = "connect", client.ip = "192.0.2.1", client.port = 2525 }
expect = { action = "tempfail", status = 451, fallback = true, rule = "blocked", dry_run = [] }
"""
    code, out, _ = run_test(str(write_set(tmp_path, tests)), format="json", coverage=True)
    assert code == 0, out
    items = {(i["kind"], i["name"]): i for i in json.loads(out)["coverage"]["items"]}
    assert items[("rule", "local")]["counts"] == {"evaluated": 3, "matched": 1, "decided": 1}
    # `continue`: nothing to decide
    assert items[("rule", "tag")]["counts"] == {"evaluated": 2, "matched": 1}
    # evaluated twice, matched once; the error decided through `on error`, not the rule
    assert items[("rule", "blocked")]["counts"] == {"evaluated": 2, "matched": 1,
                                                    "decided": 1}
    assert items[("on error", "blocked")]["counts"] == {"taken": 1}
    # never reached: the earlier rules decided every case
    assert items[("rule", "watch")]["missing"] == ["evaluated", "matched"]
    assert items[("default", "default")]["missing"] == ["decided"]
    report = json.loads(out)["coverage"]
    assert (report["covered"], report["total"]) == (9, 12)


def test_threshold_fails_below_and_passes_at_it(tmp_path):
    write_set(tmp_path, PASSING)
    code, out, _ = run_test(str(tmp_path), threshold=80)
    assert code == 1
    assert "is below the threshold 80%" in out
    assert "never decided" in out  # the uncovered default is listed
    code, _, _ = run_test(str(tmp_path), threshold=50)
    assert code == 0
    assert run_test(str(tmp_path), threshold=101)[0] == 2


def test_a_dry_run_rule_counts_as_matched(tmp_path):
    tests = ('[[case]]\nname = "watched"\n'
             'request = { stage = "connect", client.port = 2525 }\n'
             'expect = { action = "accept", rule = "default", dry_run = ["watch"] }\n')
    code, out, _ = run_test(str(write_set(tmp_path, tests)), format="json", coverage=True)
    assert code == 0, out
    items = {(i["kind"], i["name"]): i for i in json.loads(out)["coverage"]["items"]}
    assert items[("rule", "watch")]["counts"] == {"evaluated": 1, "matched": 1}
    assert items[("default", "default")]["counts"] == {"decided": 1}


# ---------------------------------------------------------------------------------------
# The test file format and its errors


def test_rows_are_checked_against_the_schema(tmp_path):
    (tmp_path / "schema.toml").write_text(TABLES)
    schema = load_schema(tmp_path / "schema.toml")
    for rows, message in [
        ('[[rows.blocked_ip]]\nip = "192.0.2.1"\n', "unknown table `blocked_ip`; did you "
                                                     "mean `blocked_ips`?"),
        ('[[rows.blocked_ips]]\naddress = "192.0.2.1"\n', "unknown column `address`"),
        ("[[rows.account]]\nid = \"one\"\nname = \"A\"\nemail = \"a@b.c\"\n",
         "column `id` (integer): column id wants an integer, got 'one'"),
        ('[[rows.account]]\nname = "A"\nemail = "a@b.c"\n', "missing required column `id`"),
        ('[[rows.blocked_ips]]\nip = "10.0.0.1/8"\n', "host bits set"),
        ('[[rows.blocked_ips]]\nip = "300.1.2.3"\n', "not an IP address"),
    ]:
        path = tmp_path / "x.test.toml"
        path.write_text(rows + '[[case]]\nrequest = { stage = "connect" }\n'
                               'expect = { action = "accept" }\n')
        with pytest.raises(SpecError) as caught:
            load_file(path, schema)
        assert message in str(caught.value), (rows, str(caught.value))


def test_rows_without_a_schema_file_are_an_error(tmp_path):
    path = tmp_path / "x.test.toml"
    path.write_text('[[rows.blocked_ips]]\nip = "192.0.2.1"\n[[case]]\n'
                    'request = { stage = "connect" }\nexpect = { action = "accept" }\n')
    with pytest.raises(SpecError) as caught:
        load_file(path)
    assert "no schema file beside the policies" in str(caught.value)


def test_case_rows_are_added_to_the_file_rows_for_that_case_only(tmp_path):
    tests = PASSING + """
[[case]]
name = "blocked for this case"
request = { stage = "connect", client.ip = "198.51.100.7" }
rows = { blocked_ips = [{ ip = "198.51.100.0/24" }] }
expect = { action = "reject", rule = "blocked" }

[[case]]
name = "not blocked in the next case"
request = { stage = "connect", client.ip = "198.51.100.7" }
expect = { action = "accept", rule = "default" }

[[case]]
name = "the file's rows are still there"
request = { stage = "connect", client.ip = "192.0.2.66" }
rows = { blocked_ips = [{ ip = "198.51.100.0/24" }] }
expect = { action = "reject", rule = "blocked" }
"""
    assert run_test(str(write_set(tmp_path, tests)))[0] == 0


def test_case_problems_are_errors_and_other_cases_still_run(tmp_path):
    tests = PASSING + """
[[case]]
name = "no expectation"
request = { stage = "connect" }

[[case]]
name = "bad action"
request = { stage = "connect" }
expect = { action = "bounce" }

[[case]]
name = "typo in expect"
request = { stage = "connect" }
expect = { acton = "accept" }

[[case]]
name = "no stage"
request = { client.ip = "192.0.2.1" }
expect = { action = "accept" }

[[case]]
name = "bad address"
request = { stage = "connect", client.ip = "not-an-ip" }
expect = { action = "accept" }

[[case]]
name = "missing fixture"
fixture = "nope.json"
expect = { action = "accept" }
"""
    code, out, _ = run_test(str(write_set(tmp_path, tests)), format="json")
    report = json.loads(out)
    assert code == 1
    assert (report["passed"], report["errors"]) == (2, 6)
    errors = {c["name"]: c["error"] for c in report["cases"] if c["status"] == "error"}
    assert "no `expect`" in errors["no expectation"]
    assert "must be one of accept" in errors["bad action"]
    assert "did you mean `action`?" in errors["typo in expect"]
    assert "no stage" in errors["no stage"]
    assert "not an IP address" in errors["bad address"] and "$.context.client.ip" in errors[
        "bad address"]
    assert "nope.json" in errors["missing fixture"]


def test_a_toml_syntax_error_names_the_line(tmp_path):
    code, out, _ = run_test(str(write_set(tmp_path, '[[case]]\nname = "x"\nexpect = {\n')))
    assert code == 1
    assert f"ERROR {tmp_path}/10-connect.test.toml:3: TOML syntax" in out


def test_requests_from_fixture_payload_and_fields():
    fixture = ROOT / "tests" / "fixtures" / "stalwart" / "derived-rcpt-2.json"
    base = json.loads(fixture.read_bytes())
    request = build_request(base, {"rcpt": "extra@solawi.example",
                                   "client": {"ip": "10.1.2.3"}})
    assert request.context.client.ip == "10.1.2.3"
    assert request.context.client.helo == "mail-ed1-f49.google.com"  # kept from the fixture
    assert [a.address for a in request.envelope.to] == [
        "info@solawi.example", "gemuese@solawi.example", "extra@solawi.example"]
    request = build_request(None, {"stage": "DATA", "headers": [["X-A", "1"], ["X-A", "2"]],
                                   "subject": "hi", "message": {"body": "text"},
                                   "sender": "a@example.org", "rcpt": "b@example.org"})
    assert request.context.stage == "data"
    assert request.message.headers == (("Subject", " hi\r\n"), ("X-A", " 1\r\n"),
                                       ("X-A", " 2\r\n"))
    assert request.message.contents == "text" and request.message.size > 4


def test_a_fixture_case_and_an_inline_payload_case(tmp_path):
    fixture = ROOT / "tests" / "fixtures" / "stalwart" / "derived-connect-1.json"
    shutil.copy(fixture, tmp_path / "connect.json")
    tests = """\
[[case]]
name = "fixture with a field changed"
fixture = "connect.json"
request = { client.ip = "127.0.0.1" }
expect = { action = "accept", rule = "local" }

[[case]]
name = "inline payload"
payload = { context = { stage = "connect", client = { ip = "192.0.2.9", port = 25 } } }
expect = { action = "accept", rule = "default", logs = ["port 25"] }
"""
    code, out, _ = run_test(str(write_set(tmp_path, tests)))
    assert code == 0, out


# ---------------------------------------------------------------------------------------
# Exit codes for the command


def test_usage_and_io_problems_exit_2(tmp_path):
    assert run_test(str(tmp_path / "missing"))[0] == 2
    (tmp_path / "a.policy").write_text(POLICY)
    code, _, err = run_test(str(tmp_path))
    assert code == 2 and "no *.test.toml files" in err
    with pytest.raises(SystemExit) as usage:
        main(["test", "--format", "xml"])
    assert usage.value.code == 2


def test_a_policy_set_with_errors_exits_1(tmp_path):
    write_set(tmp_path, PASSING, policy="stage connect { rule r: when nope accept }\n")
    code, _, err = run_test(str(tmp_path))
    assert code == 1 and "the policy set has errors" in err


def test_a_test_file_path_runs_against_its_directory(tmp_path):
    write_set(tmp_path, PASSING)
    assert run_test(str(tmp_path / "10-connect.test.toml"))[0] == 0


# ---------------------------------------------------------------------------------------
# Speed: hundreds of cases per second, in-process


def test_hundreds_of_cases_in_one_file(tmp_path):
    cases = "".join(
        f'[[case]]\nname = "c{i}"\nrequest = {{ stage = "connect", client.ip = '
        f'"198.51.{i // 250}.{i % 250}", client.port = {i} }}\n'
        f'expect = {{ action = "accept", rule = "default" }}\n\n' for i in range(600))
    write_set(tmp_path, PASSING.split("[[case]]")[0] + cases)
    code, out, _ = run_test(str(tmp_path), coverage=True)
    assert code == 0, out[-500:]
    assert "600 passed" in out


def test_a_slow_machine_never_turns_a_case_into_its_fallback(tmp_path, monkeypatch):
    """Cases decide on a frozen clock: a lookup that looks slower than `lookup_timeout`
    (a clock jumping a second per reading, as a stalled CI machine would look) must not
    take the rule's `on error` branch."""
    from komm_policy.policytest import runner

    ticks = iter(range(10**6))
    real_decide = runner.decide

    def decide_on_a_stalling_machine(*args, clock=lambda: float(next(ticks)), **kwargs):
        return real_decide(*args, clock=clock, **kwargs)

    monkeypatch.setattr(runner, "decide", decide_on_a_stalling_machine)
    schema = load_schema(write_set(tmp_path, PASSING) / "schema.toml")
    policy_set = compile_text(POLICY, "p.policy", schema=schema).policy_set
    results = run_cases(policy_set, load_file(tmp_path / "10-connect.test.toml", schema),
                        None)
    assert [r.status for r in results] == ["passed", "passed"]
    assert results[1].decision.reply.status == 550


def test_run_cases_directly_matches_the_decision(tmp_path):
    path = write_set(tmp_path, PASSING) / "10-connect.test.toml"
    schema = load_schema(tmp_path / "schema.toml")
    policy_set = compile_text(POLICY, "p.policy", schema=schema).policy_set
    coverage = Coverage(policy_set)
    results = run_cases(policy_set, load_file(path, schema), coverage)
    assert [r.status for r in results] == ["passed", "passed"]
    assert results[1].decision.reply.status == 550
    assert coverage.percent == pytest.approx(100 * 8 / 12)  # local 3, tag 2, blocked 3


SCHEMA_FILE = """\
[tables.blocked_domains]
primary_key = ["domain"]
columns.domain = { type = "address" }
columns.status = { type = "enum", variants = ["Active", "Expired"] }
columns.note = { type = "text", optional = true }

[tables.blocked_ips]
columns.ip = { type = "network" }
columns.reason = { type = "text" }
columns.active = { type = "bool" }
"""


def test_rows_are_checked_against_the_schema_file_beside_the_policies(tmp_path):
    write_set(tmp_path, PASSING)
    (tmp_path / "schema.toml").write_text(SCHEMA_FILE)
    good = ('[[rows.blocked_domains]]\ndomain = "spam.example"\nstatus = "Active"\n'
            '[[case]]\nrequest = { stage = "connect" }\nexpect = { action = "accept" }\n')
    path = tmp_path / "x.test.toml"
    path.write_text(good)
    schema = load_schema(tmp_path / "schema.toml")
    (case,) = load_file(path, schema)
    assert case.error is None
    assert case.directory.table_rows["blocked_domains"] == [
        {"domain": "spam.example", "status": "Active"}]
    for rows, message in [
        ('[[rows.blocked_domains]]\ndomain = "a.example"\nstatus = "Gone"\n', "`status` (enum)"),
        ('[[rows.blocked_domains]]\nstatus = "Active"\n', "missing required column `domain`"),
        ('[[rows.blocked_domains]]\ndomain = "a.example"\nstatus = "Active"\nnot = 1\n',
         "did you mean `note`?"),
        ('[[rows.blocked_domain]]\ndomain = "a.example"\n', "did you mean `blocked_domains`?"),
    ]:
        path.write_text(rows + '[[case]]\nrequest = { stage = "connect" }\n'
                               'expect = { action = "accept" }\n')
        with pytest.raises(SpecError) as caught:
            load_file(path, schema)
        assert message in str(caught.value), (rows, str(caught.value))
    # the command reads the schema file itself
    path.write_text('[[rows.blocked_domains]]\ndomain = "a.example"\nstatus = "Gone"\n'
                    '[[case]]\nrequest = { stage = "connect" }\nexpect = { action = "accept" }\n')
    code, out, _ = run_test(str(tmp_path))
    assert code == 1 and "`status` (enum)" in out


def test_policy_functions_are_covered_through_the_rules_that_call_them(tmp_path):
    policy = ("def loopback(ip) = ip in [127.0.0.0/8]\n"
              "def local(ip) = loopback(ip)\n"
              "def odd_port(p) = p == 2525\n"
              "def never_called(x) = x == 1\n"
              + POLICY.replace("client.ip in [127.0.0.0/8]", "local(client.ip)")
                      .replace("when client.port == 2525", "when odd_port(client.port)"))
    code, out, _ = run_test(str(write_set(tmp_path, PASSING, policy)), format="json",
                            coverage=True)
    assert code == 0, out
    items = {(i["kind"], i["name"]): i for i in json.loads(out)["coverage"]["items"]}
    # `local` (and `loopback` through it) is called by rule `local`: evaluated by both
    # cases, matched and decided by one
    for name in ("local", "loopback"):
        assert items[("function", name)]["counts"] == {"evaluated": 2, "matched": 1,
                                                       "decided": 1}
    # called only by the dry-run rule `watch`, which no case reached: nothing to decide
    assert items[("function", "odd_port")]["missing"] == ["evaluated", "matched"]
    assert items[("function", "never_called")]["missing"] == ["evaluated", "matched"]


def test_file_request_fields_merge_with_each_case_field_by_field(tmp_path):
    tests = """\
[request]
stage = "connect"
client.ip = "127.0.0.1"

[[case]]
name = "inherits stage and client.ip, adds client.port"
request = { client.port = 25 }
expect = { action = "accept", rule = "local" }

[[case]]
name = "overrides client.ip"
request = { client.ip = "192.0.2.10", client.port = 25 }
expect = { action = "accept", rule = "default", logs = ["port 25"] }
"""
    code, out, _ = run_test(str(write_set(tmp_path, tests)))
    assert code == 0, out


def test_a_row_of_the_shipped_schema_file_feeds_table_lookups(tmp_path):
    # blocked_ips as the shipped schema file has it: `blocked_at` is required there
    (tmp_path / "schema.toml").write_text(
        (POLICIES / "schema.toml").read_text(encoding="utf-8"))
    policy = POLICY.replace(
        'when exists("blocked_ips", ip = client.ip)',
        'when lookup("blocked_ips", ip = client.ip, active = true) != none')
    rows = ('[[rows.blocked_ips]]\nip = "192.0.2.66"\nreason = "spam"\nactive = true\n'
            'blocked_at = 2026-08-01T00:00:00Z\n\n')
    case = ('[[case]]\nname = "looked up"\n'
            'request = { stage = "connect", client.ip = "192.0.2.66" }\n'
            'expect = { action = "reject", rule = "blocked" }\n')
    code, out, _ = run_test(str(write_set(tmp_path, rows + case, policy)))
    assert code == 0, out
    missing = rows.replace("blocked_at = 2026-08-01T00:00:00Z\n", "")
    code, out, _ = run_test(str(write_set(tmp_path, missing + case, policy)))
    assert code == 1 and "missing required column `blocked_at`" in out


def test_every_bad_row_is_reported_at_its_line(tmp_path):
    """breaker3 #12: only the first problem was reported, and with no line."""
    (tmp_path / "schema.toml").write_text(TABLES)
    schema = load_schema(tmp_path / "schema.toml")
    path = tmp_path / "x.test.toml"
    path.write_text('[[rows.account]]\nid = "one"\nname = "A"\nemail = "a@b.c"\n'  # 1-4
                    '\n[[rows.nosuch]]\nx = 1\n'                                 # 6-7
                    '\n[[rows.blocked_ips]]\nip = "192.0.2.1"\n'                 # 9-10
                    '\n[[rows.blocked_ips]]\nip = "10.0.0.1/8"\n'                # 12-13
                    '[[case]]\nrequest = { stage = "connect" }\n'
                    'expect = { action = "accept" }\n'
                    '[[case]]\nrequest = { stage = "connect" }\n'
                    'rows = { blocked_ips = [{ ip = "300.1.2.3" }] }\n'           # 20
                    'expect = { action = "accept" }\n')
    with pytest.raises(SpecError) as caught:
        load_file(path, schema)
    text = str(caught.value)
    assert caught.value.line == 2, text  # the first problem: account's `id`
    assert "line 2: row 1 of `account`: column `id` (integer)" in text, text
    assert "line 6: unknown table `nosuch`" in text, text
    assert "line 13: row 2 of `blocked_ips`: column `ip`" in text and "host bits" in text
    assert "line 10" not in text  # the good row
    (tmp_path / "y.test.toml").write_text(
        '[[case]]\nrequest = { stage = "connect" }\n'
        'rows = { blocked_ips = [{ ip = "300.1.2.3" }, { ip = "10.0.0.1/8" }] }\n'
        'expect = { action = "accept" }\n')
    (case,) = load_file(tmp_path / "y.test.toml", schema)
    assert case.error is not None
    assert case.error.count("line 3: row") == 2, case.error
    assert "row 1 of `blocked_ips`" in case.error and "row 2 of `blocked_ips`" in case.error
