"""A failing lookup's cause names where it sits: `rule → function() → … → table`, in the
decision (what the log records), in traces and in `komm-policy test` output, whether the
stage runs as generated code or as closures.  The paths are computed when the policy
compiles (`call_paths`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from komm_policy.call_paths import failure_path
from komm_policy.cli import main
from komm_policy.lookups import LookupFailed
from komm_policy.runtime import decide

from .shipped import compile_with_directory
from .test_runtime import ACCOUNTS, CountingDirectory, request, summary

SUBSCRIPTIONS = "exists(subscriptions: active, category_id, subscriber_account_id)"
MEMBERS_ONLY = """
stage rcpt {
    rule members-only:
        when category(rcpt) != none and not subscribed(sender, category(rcpt))
        reject 550 5.7.1 "members only"
        on error tempfail 451 4.3.0 "try later"

    default accept
}
"""


def decisions(text: str, fail: set[str], sender: str = "peter.schmidt@web.example",
              rcpt: str = "info@solawi.example"):
    """The generated-code decision and the traced (closure) one, for the same request."""
    result = compile_with_directory(text, "test.policy")
    assert result.policy_set is not None, [str(d) for d in result.errors]
    req = request("rcpt", sender=sender, to=[rcpt])
    return (decide(result.policy_set, req, CountingDirectory(fail=fail)),
            decide(result.policy_set, req, CountingDirectory(fail=fail), trace=True))


def test_the_cause_names_rule_function_and_table() -> None:
    text = MEMBERS_ONLY.replace("members-only", "members_only")
    plain, traced = decisions(text, {"subscriptions"})
    expected = ("rule members_only (test.policy:3) → subscribed() → table `subscriptions`: "
                f"{SUBSCRIPTIONS}(")
    for decision in (plain, traced):
        assert summary(decision) == ("tempfail", "451 4.3.0 try later", "members_only")
        assert decision.cause is not None and decision.cause.startswith(expected), \
            decision.cause
        assert decision.cause.endswith("failed: DirectoryError: subscriptions backend "
                                       "unreachable")
    assert traced.trace is not None
    step = traced.trace[0]
    assert step.outcome == "error"
    assert step.error is not None
    assert step.error.startswith(f"subscribed() → table `subscriptions`: {SUBSCRIPTIONS}(")


def test_the_other_table_of_the_same_rule_gets_its_own_path() -> None:
    text = MEMBERS_ONLY.replace("members-only", "members_only")
    plain, traced = decisions(text, {"message_categories"})
    for decision in (plain, traced):
        assert decision.cause is not None
        assert decision.cause.startswith("rule members_only (test.policy:3) → category() → "
                                         "table `message_categories`: lookup("), \
            decision.cause


def test_a_lookup_written_in_the_rule_names_only_the_table() -> None:
    text = """
stage rcpt {
    rule direct:
        when exists("subscriptions", subscriber_account_id = 1, category_id = 1,
                    active = true)
        reject 550 5.7.1 "no"

    default accept
}
"""
    plain, traced = decisions(text, {"subscriptions"})
    for decision in (plain, traced):
        assert decision.cause is not None
        assert decision.cause.startswith("rule direct (test.policy:3) → table "
                                         "`subscriptions`: exists("), decision.cause


def test_a_chain_of_functions_and_two_paths_to_one_table() -> None:
    """`is_admin` and `subscribed` both read `account` (one memoised read): both are
    named, after the functions they share."""
    text = """
def listed(addr) = category(addr) != none
def may_post(addr, list) = is_admin(addr) or subscribed(addr, category(list))
def posting_ok(addr, list) = listed(list) and may_post(addr, list)

stage rcpt {
    rule gate:
        when not posting_ok(sender, rcpt)
        reject 550 5.7.1 "no"

    default accept
}
"""
    plain, traced = decisions(text, {"account"})
    for decision in (plain, traced):
        assert decision.cause is not None
        assert decision.cause.startswith(
            "rule gate (test.policy:7) → posting_ok() → may_post() → is_admin() or "
            f"subscribed() → table `account`: {ACCOUNTS}("), decision.cause
    plain, _ = decisions(text, {"message_categories"})
    assert plain.cause is not None and plain.cause.startswith(
        "rule gate (test.policy:7) → posting_ok() → (listed() → category() or may_post() → "
        "category()) → table `message_categories`:"), plain.cause


def test_only_lookup_failures_get_a_path() -> None:
    paths = {"account": " → is_admin() → table `account`"}
    assert failure_path(paths, LookupFailed(f"{ACCOUNTS}('a', true) failed: x")) == \
        " → is_admin() → table `account`"
    assert failure_path(paths, ValueError(f"{ACCOUNTS}('a') failed")) == ""
    assert failure_path(paths, LookupFailed("exists(other: c)('a') failed: x")) == ""
    assert failure_path({}, LookupFailed(f"{ACCOUNTS}('a') failed: x")) == ""


def test_komm_policy_test_prints_the_path(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    shipped = Path(__file__).resolve().parent.parent / "policies"
    (policies / "00-directory.policy").write_text(
        (shipped / "00-directory.policy").read_text())
    (policies / "schema.toml").write_text((shipped / "schema.toml").read_text())
    (policies / "10-members.policy").write_text(
        MEMBERS_ONLY.replace("members-only", "members_only").lstrip("\n"))
    (policies / "10-members.test.toml").write_text(
        '[[case]]\nname = "directory down"\ndirectory_unavailable = true\n'
        'request = { stage = "rcpt", envelope.from = "a@example.org", '
        'envelope.to = ["info@solawi.example"] }\nexpect = { action = "accept" }\n')
    assert main(["test", str(policies)]) == 1
    out, err = capsys.readouterr()
    assert "rule members_only (" in out + err
    assert "→ subscribed() → table `account`: lookup_all(" in out + err, out + err
