"""The shipped policy set: it passes `check --strict`, and every captured Stalwart payload
gets the decision the policies and the demo directory imply."""

from __future__ import annotations

import pytest

from komm_policy.policyset import load_path, load_policy_set
from komm_policy.runtime import decide
from komm_policy.wire import decode_request

from .conftest import POLICIES
from .shipped import directory as demo_directory


@pytest.fixture(scope="module")
def shipped():
    return load_policy_set(POLICIES)


@pytest.fixture(scope="module")
def demo():
    return demo_directory()


def test_shipped_policies_have_no_findings():
    result = load_path(POLICIES)
    assert result.policy_set is not None
    assert result.diagnostics == ()


# fixture → (action, SMTP reply or None, deciding rule)
EXPECTED = {
    "derived-auth-1": ("accept", None, None),
    "derived-auth-2": ("accept", None, None),
    "derived-auth-3": ("accept", None, None),
    "derived-connect-1": ("accept", None, "default"),
    "derived-connect-2": ("reject", "550 5.7.1 IP blocked", "blocked_ip"),
    "derived-connect-3": ("accept", None, "default"),
    "derived-connect-4": ("accept", None, "default"),
    "derived-ehlo-1": ("accept", None, "default"),
    "derived-ehlo-2": ("accept", None, "default"),
    "derived-ehlo-3": ("accept", None, "default"),
    "derived-ehlo-4": ("accept", None, "default"),
    "derived-mail-1": ("accept", None, "default"),
    "derived-mail-2": ("accept", None, "default"),  # the null sender is allowed
    "derived-mail-3": ("accept", None, "default"),
    "derived-mail-4": ("accept", None, "default"),
    "derived-rcpt-1": ("accept", None, "default"),
    # the current recipient (gemuese, inactive subscription) is judged, not the first one
    "derived-rcpt-2": ("reject", "550 5.7.1 You are not allowed to post to this list",
                       "not_allowed_to_post"),
    "derived-rcpt-3": ("reject", "550 5.1.1 No such mailing list", "unknown_list"),
    "derived-rcpt-4": ("accept", None, "role_mailbox"),
    "derived-data-1": ("accept", None, "default"),
    "derived-data-2": ("accept", None, "default"),
    "derived-data-3": ("accept", None, "default"),
    "derived-data-4": ("accept", None, "default"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_decisions(name, stalwart_fixtures, shipped, demo):
    decision = decide(shipped, decode_request(stalwart_fixtures[name]), demo)
    action, reply, rule = EXPECTED[name]
    assert decision.action == action
    assert (str(decision.reply) if decision.reply else None) == reply
    assert (decision.rule.name if decision.rule else None) == rule
    assert decision.fallback is False
    assert decision.policy_version == shipped.version


def test_every_fixture_has_an_expectation(stalwart_fixtures):
    assert set(stalwart_fixtures) == set(EXPECTED)


def test_list_mail_is_tagged_with_its_category(stalwart_fixtures, shipped, demo):
    decision = decide(shipped, decode_request(stalwart_fixtures["derived-data-1"]), demo)
    assert [(m.name, m.value) for m in decision.modifications] == [
        ("X-Komm-Category", "Info")]
