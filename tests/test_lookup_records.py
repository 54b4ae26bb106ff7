"""The generated stage and the traced path (`eval --explain`, `decide(trace=True)`) give
the same decision record for the same decision, `lookups` included.

docs/decision-record.md: `lookups` lists "the directory lookups made, in order", and a
lookup is memoised per decision, so a lookup made once is listed once however often the
policy names it: twice in a condition, in a function called twice, in the condition and
again in the reply, a `log` line or a header value.  The tester's finding: a lookup in a
rule's condition and again in its reply text was listed twice by the generated code
(whose condition skipped the memo: it did not count the reply's closure as a second
call) and once by the traced path.

The comparison runs the shipped and the example policy sets on their own test cases'
requests and directories (every request on every case's directory), random requests on
the demo directory, snippets with repeated lookups, and random policies whose actions
repeat their conditions' lookups.  Only what a trace adds (`trace`, and the lookups'
`duration_ms`: the traced path times them) is left out of the comparison.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from komm_policy.decision import Decision
from komm_policy.decisionlog.records import encode_record, make_record
from komm_policy.policyset import PolicySet, load_path
from komm_policy.policytest.spec import Case, load_file
from komm_policy.runtime import decide
from komm_policy.wire import Request

from .conftest import POLICIES, ROOT
from .shipped import compile_with_directory, demo_for
from .test_runtime import CountingDirectory, request

EXAMPLE = ROOT / "examples" / "origin-2026"
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.filter_too_much])


def _frozen() -> float:
    return 0.0  # no lookup timeout or deadline fires in the traced path


def record(req: Request, decision: Decision) -> dict[str, Any]:
    """The decision record as logged, without what only a trace has."""
    lookups = tuple(msgspec.structs.replace(lookup, duration_ms=None)
                    for lookup in decision.lookups)
    plain = msgspec.structs.replace(decision, trace=None, lookups=lookups)
    return json.loads(encode_record(make_record(req, plain, 0.0, record_id="x", at="t")))


def mismatch(policy_set: PolicySet, req: Request, directory: Any) -> str | None:
    """None when the generated and the traced path log the same record."""
    if req.context.stage not in policy_set.stages:
        return None
    generated = record(req, decide(policy_set, req, directory))
    traced = record(req, decide(policy_set, req, directory, trace=True, clock=_frozen))
    if generated == traced:
        return None
    return f"{req.context.stage}:\n  generated {generated}\n  traced    {traced}"


def _cases(path: Path, policy_set: PolicySet) -> list[Case]:
    cases = [case for file in sorted(path.glob("*.test.toml"))
             for case in load_file(file, policy_set.schema)]
    for case in cases:
        require = getattr(case.directory, "require", None)
        if require is not None and policy_set.schema is not None:
            require(policy_set.schema, policy_set.needs)
    return [case for case in cases if case.error is None and case.request is not None]


@functools.cache
def _set(path: Path) -> PolicySet:
    result = load_path(path)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    return result.policy_set


@pytest.mark.parametrize("path", [POLICIES, EXAMPLE], ids=["shipped", "origin-2026"])
def test_the_test_cases_log_the_same_record_generated_and_traced(path: Path) -> None:
    """Every case's request on every case's directory (the rows differ per case)."""
    policy_set = _set(path)
    assert any(stage.run is not None for stage in policy_set.stages.values())
    cases = _cases(path, policy_set)
    assert len(cases) >= 10
    directories = list({id(c.directory): c.directory for c in cases}.values())
    found = [problem for case in cases for directory in directories
             if (problem := mismatch(policy_set, case.request, directory))]
    assert found == [], found[:3]
    assert any(record(c.request, decide(policy_set, c.request, c.directory)).get("lookups")
               for c in cases)  # the comparison saw lookups


ADDRESSES = ["peter.schmidt@web.example", "Jane@solawi.example", "jane@solawi.example",
             "anna.mueller@gmail.com", "john.doe@example.org", "a@example.org",
             "info@solawi.example", "Gemuese@solawi.example", "vorstand@solawi.example",
             "postmaster", "", " Jörg@Bücher.Example", "x@example.org"]
IPS = ["192.0.2.10", "192.0.2.66", "2001:db8:4860::1", "198.18.0.1", "203.0.113.200",
       "::1"]

requests = st.builds(
    lambda stage, sender, to, ip, helo, sasl: request(
        stage, sender=sender, to=to, ip=ip, helo=helo, sasl=sasl,
        headers=[("X-List", to[0] if to else "x"), ("Subject", "viagra offer")]),
    st.sampled_from(["connect", "ehlo", "mail", "rcpt", "data"]),
    st.sampled_from(ADDRESSES),
    st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=4),
    st.sampled_from(IPS),
    st.sampled_from(["mx.a.b", "localhost", None]),
    st.sampled_from([None, "jane"]),
)


@settings(FAST, max_examples=300)
@given(requests)
def test_the_shipped_set_logs_the_same_record_on_random_requests(req: Request) -> None:
    policy_set = _set(POLICIES)
    assert mismatch(policy_set, req, demo_for(policy_set)) is None


REPEATED = {
    "twice in a condition": """
    stage rcpt {
        rule r: when account(sender) != none and account(sender).name != "" reject
        default accept
    }""",
    "a function called twice": """
    def known(a) = lookup("account", email = a, is_active = true) != none
    stage rcpt {
        rule r: when known(sender) and (known(sender) or known(rcpt)) reject
        default accept
    }""",
    "exists and lookup of the same key": """
    stage rcpt {
        rule r:
            when exists("account", email = sender, is_active = true)
                 and lookup("account", email = sender, is_active = true) != none
                 and exists("account", email = sender, is_active = true)
            reject
        default accept
    }""",
    "the condition and the reply": """
    stage rcpt {
        rule r: when account(sender) != none
            reject 550 5.7.1 "no, {account(sender).name}"
        default accept
    }""",
    "the condition, a log line, a header and a quarantine reason": """
    settings { quarantine_to = "quarantine@solawi.example" }
    stage data {
        rule r: when category(envelope.to[0]) != none
            log "list {category(envelope.to[0]).name}"
            add_header "X-List-Name" category(envelope.to[0]).name
            continue
        rule s: when ip_blocked(client.ip) or category(envelope.to[0]) == none
            quarantine "blocked {category(envelope.to[0]).name}"
        default accept
    }""",
    "the reply only, in two rules": """
    stage rcpt {
        rule r: when sender == "a@example.org" reject 550 5.7.1 "{account(sender).name}"
        rule s: when rcpt != "" reject 550 5.7.1 "{account(sender).name}!"
        default accept
    }""",
    "an on error rule and the reply of the next": """
    stage rcpt {
        rule r: when is_admin(sender) and account(sender) == none reject
            on error continue
        rule s: when rcpt != "" reject 550 5.7.1 "{sender} {account(sender).name}"
        default accept
    }""",
    "a loop and the reply": """
    stage rcpt {
        rule r: when any w in envelope.to: category(w) != none
            reject 550 5.7.1 "{category(rcpt).name}"
        default accept
    }""",
}

FAILING = [(), ("account",), ("message_categories",), ("subscriptions", "account")]
_SAMPLES = [request(stage, sender=sender, to=to, ip=ip)
            for stage in ("rcpt", "data")
            for sender, to, ip in (
                ("peter.schmidt@web.example", ["gemuese@solawi.example"], "192.0.2.10"),
                ("jane@solawi.example", ["info@solawi.example", "x@example.org"],
                 "192.0.2.66"),
                ("a@example.org", ["Info@Solawi.example"], "198.51.100.1"),
                ("nobody@example.org", ["nobody@solawi.example"], "192.0.2.10"))]


def _compiled(text: str) -> PolicySet:
    result = compile_with_directory(text)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    return result.policy_set


def differences(policy_set: PolicySet) -> list[str]:
    """Mismatches on the demo directory and on directories whose tables fail."""
    found = []
    for req in _SAMPLES:
        directories = [demo_for(policy_set), *(CountingDirectory(fail=f) for f in FAILING)]
        found += [p for d in directories if (p := mismatch(policy_set, req, d))]
    return found


@pytest.mark.parametrize("text", REPEATED.values(), ids=REPEATED.keys())
def test_a_repeated_lookup_is_logged_once_by_both_paths(text: str) -> None:
    policy_set = _compiled(text)
    assert differences(policy_set) == []
    for req in _SAMPLES:
        lookups = record(req, decide(policy_set, req, demo_for(policy_set))).get("lookups", [])
        calls = [(lookup["function"], json.dumps(lookup["args"])) for lookup in lookups]
        assert len(calls) == len(set(calls)), calls  # each made (and listed) once


def test_the_finding_a_lookup_in_the_condition_and_the_reply_is_listed_once() -> None:
    policy_set = _compiled(REPEATED["the condition and the reply"])
    req = _SAMPLES[0]
    decision = decide(policy_set, req, demo_for(policy_set))
    assert decision.action == "reject" and decision.reply is not None
    assert decision.reply.message == "no, Peter Schmidt"
    assert [lookup.function for lookup in decision.lookups] == [
        "lookup(account: email, is_active)"]


_conditions = st.sampled_from([
    "account(sender) != none", "category(envelope.to[0]) != none", "ip_blocked(client.ip)",
    "is_admin(sender)", "subscribed(sender, category(envelope.to[0]))",
    "any w in envelope.to: category(w) != none", 'sender ends_with ".example"',
    "not ip_blocked(client.ip) and category(envelope.to[0]) == none",
])
_actions = st.sampled_from([
    '    reject 550 5.7.1 "{account(sender).name}"\n',
    '    log "{category(envelope.to[0]).name} {ip_blocked(client.ip)}"\n    continue\n',
    '    add_header "X-C" "{category(envelope.to[0]).email_address}"\n    accept\n',
    'dry:    reject 550 5.7.1 "would {is_admin(sender)}"\n',
    '    quarantine "q {subscribed(sender, category(envelope.to[0]))}"\n',
    "    accept\n",
])
_handlers = st.sampled_from(["", "    on error continue\n",
                             '    on error tempfail 451 4.3.2 "{sender}"\n'])


@settings(FAST, max_examples=60)
@given(st.lists(st.tuples(_conditions, _actions, _handlers), min_size=1, max_size=3))
def test_random_policies_repeating_their_lookups_log_the_same_record(rules) -> None:
    parts = []
    for i, (condition, action, handler) in enumerate(rules):
        dry = " dry_run" if action.startswith("dry:") else ""
        parts.append(f"  rule r{i}{dry}:\n    when {condition}\n"
                     f"{action.removeprefix('dry:')}{handler}")
    text = ('settings { quarantine_to = "quarantine@solawi.example" }\n'
            "stage data {\n" + "\n".join(parts) + "\n  default accept\n}\n")
    result = compile_with_directory(text)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    assert differences(result.policy_set) == [], text


FUSED_CONTINUE = """settings { quarantine_to = "quarantine@solawi.example" }
stage data {
  rule r0:
    when sender ends_with ".example"
    reject 550 5.7.1 "{account(sender).name}"
    on error continue

  rule r1:
    when sender ends_with ".example"
    reject 550 5.7.1 "{account(sender).name}"

  default accept
}
"""


def test_a_rule_after_one_whose_action_failed_with_on_error_continue_still_runs() -> None:
    """Found by the random policies above: two rules of the same simple condition were
    fused into one step, which ran only the first that matched; when its reply's lookup
    failed and `on error continue` skipped it, the second (also matching, without `on error
    continue`) was skipped too and the generated stage accepted by default, where the
    rules as written (and `eval --explain`) give the lookup failure's fallback."""
    policy_set = _compiled(FUSED_CONTINUE)
    req = next(r for r in _SAMPLES if r.context.stage == "data"
               and r.envelope is not None and r.envelope.from_.address.endswith(".example"))
    decision = decide(policy_set, req, CountingDirectory(fail=("account",)))
    assert decision.action == "tempfail" and decision.fallback, decision
    assert decision.rule is not None and decision.rule.name == "r1"
    assert len(decision.errors) == 1 and decision.errors[0].startswith("rule r0")
    assert differences(policy_set) == []
