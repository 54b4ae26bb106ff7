"""Which generated lookups keep a per-decision memo, decided when a stage is written.

A lookup call that runs at most once in a decision (not in a quantifier body or a
function argument) and is the only call of its memo tag in the stage skips the memo: no
key, read or write.  Every other call keeps it, so a repeated lookup is still read and
recorded once.  A decision runs one stage, so calls in other stages do not count.
"""

from __future__ import annotations

from komm_policy.policyset import PolicySet
from komm_policy.runtime import decide

from .shipped import compile_with_directory, demo_for
from .test_codegen import without_generated
from .test_runtime import request


def _compiled(text: str) -> PolicySet:
    result = compile_with_directory(text)
    assert result.policy_set is not None, result.diagnostics
    return result.policy_set


def _source(policy_set: PolicySet, stage: str) -> str:
    run = policy_set.stages[stage].run
    assert run is not None, "the stage runs generated code"
    return run.source


SUBSCRIBED = request("rcpt", sender="peter.schmidt@web.example",
                     to=["gemuese@solawi.example"], ip="192.0.2.10", helo="mx.a.b")


def test_lookups_that_run_once_skip_the_memo() -> None:
    policy_set = _compiled("""
    stage rcpt {
        rule blocked: when ip_blocked(client.ip) reject
        rule unknown: when lookup("account", email = sender, is_active = true) == none reject
        default accept
    }
    stage data {
        rule blocked_data: when ip_blocked(client.ip) reject
        default accept
    }
    """)
    for stage in ("rcpt", "data"):  # one call per stage: the other stage's does not count
        source = _source(policy_set, stage)
        assert "ctx.lookup_log.append" in source
        assert "ctx.memo" not in source, source
    decision = decide(policy_set, SUBSCRIBED, demo_for(policy_set))
    assert decision == decide(without_generated(policy_set), SUBSCRIBED,
                              demo_for(policy_set))
    assert [lookup.function for lookup in decision.lookups] == [
        "exists(blocked_ips: ip, active)", "lookup(account: email, is_active)"]


def test_repeated_lookups_keep_the_memo_and_are_read_once() -> None:
    # `category(rcpt)` twice (two rules; an argument read inside the loop), the
    # subscription lookup in a quantifier body: every one of them keeps its memo
    policy_set = _compiled("""
    stage rcpt {
        rule unknown_list: when category(rcpt) == none reject
        rule not_subscribed: when not subscribed(sender, category(rcpt)) reject
        default accept
    }
    """)
    source = _source(policy_set, "rcpt")
    assert source.count("ctx.memo.get(") == 3, source  # category ×2, subscriptions
    assert source.count("ctx.memo.get(") == source.count("ctx.memo[")
    directory = demo_for(policy_set)
    decision = decide(policy_set, SUBSCRIBED, directory)
    assert decision.action == "accept"
    assert decision == decide(without_generated(policy_set), SUBSCRIBED, directory)
    labels = [lookup.function for lookup in decision.lookups]
    assert labels.count("lookup(message_categories: active, email_address)") == 1, labels
    assert labels.count("lookup_all(account: email, is_active)") == 1, labels


def test_a_lookup_repeated_in_a_loop_with_the_same_key_is_recorded_once() -> None:
    policy_set = _compiled("""
    stage rcpt {
        rule r:
            when any n in [1, 2, 3]: n == 3 and exists("blocked_ips", ip = client.ip,
                                                          active = true)
            reject
        default accept
    }
    """)
    assert "ctx.memo.get(" in _source(policy_set, "rcpt")
    decision = decide(policy_set, SUBSCRIBED, demo_for(policy_set))
    assert len(decision.lookups) == 1
    assert decision == decide(without_generated(policy_set), SUBSCRIBED,
                              demo_for(policy_set))
