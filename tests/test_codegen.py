"""Generated stage functions (`codegen`) decide exactly like the closures they replace.

A decision without a trace runs the stage's generated function; the same policy set with
its stages' `run` removed runs the compiled closures (`stage_run.run_steps`).  On random
policies (random expressions, the shipped helpers, `and`/`or` with failing sides,
quantifiers, functions, table lookups, dry runs, `on error`, statements) and several
requests, on the demo directory (the in-place fast path) and on a directory whose lookups
are counted or fail (the generic path), both give equal decisions, lookups records
included, and read the directory in the same order.  A deliberately broken generator is
caught by the same comparison.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from komm_policy import codegen_compare
from komm_policy.policyset import PolicySet
from komm_policy.runtime import decide

from .shipped import compile_with_directory, demo_for
from .test_properties import _P, _Q, _arguments, _bool_bodies, expressions
from .test_runtime import CountingDirectory, request

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                      HealthCheck.filter_too_much])

_REQUESTS = [
    request(stage, sender=sender, to=to, ip=ip, helo=helo,
            headers=[("X-List", to[0]), ("Subject", "viagra offer")])
    for stage in ("rcpt", "data")
    for sender, to, ip, helo in (
        ("peter.schmidt@web.example", ["gemuese@solawi.example"], "192.0.2.10", "mx.a.b"),
        ("Jane@solawi.example", ["info@solawi.example", "x@example.org"], "192.0.2.66",
         "localhost"),
        ("a@example.org", ["Info@Solawi.example"], "198.51.100.1", None),
        # non-ASCII and padded: lookup keys of `sender`/`rcpt` beyond the ASCII shortcut
        (" Jörg@Bücher.Example", ["İnfo@Solawi.example\u3000"], "192.0.2.10", "mx.a.b"),
    )
]
_FAILING = [(), ("account",), ("message_categories",), ("subscriptions", "account")]


def without_generated(policy_set: PolicySet) -> PolicySet:
    """The same set running its closures (`run_steps`) instead of generated functions."""
    stages = {name: dataclasses.replace(stage, run=None)
              for name, stage in policy_set.stages.items()}
    return dataclasses.replace(policy_set, stages=stages)


def differences(policy_set: PolicySet) -> list[str]:
    """Every request and directory on which the generated functions and the closures
    disagree (decision or directory reads)."""
    closures = without_generated(policy_set)
    found = []
    for req in _REQUESTS:
        if req.context.stage not in policy_set.stages:
            continue
        generated_on_demo = decide(policy_set, req, demo_for(policy_set))
        closures_on_demo = decide(closures, req, demo_for(policy_set))
        if generated_on_demo != closures_on_demo:
            found.append(f"demo: {generated_on_demo} != {closures_on_demo}")
        for failing in _FAILING:
            counted = CountingDirectory(fail=failing), CountingDirectory(fail=failing)
            by_code, by_closures = (decide(p, req, d) for p, d in zip(
                (policy_set, closures), counted, strict=True))
            if by_code != by_closures or counted[0].calls != counted[1].calls:
                found.append(f"failing {failing}: {by_code} != {by_closures}")
    return found


def _rules(conditions: list[tuple[str, str, str]]) -> str:
    parts = []
    for i, (condition, action, handler) in enumerate(conditions):
        dry = " dry_run" if action.startswith("dry:") else ""
        parts.append(f"  rule r{i}{dry}:\n    when {condition}\n"
                     f"{action.removeprefix('dry:')}{handler}")
    return "\n".join(parts)


_ACTIONS = st.sampled_from([
    '    reject 550 5.7.1 "hit {sender}"\n',
    '    log "seen {sender}"\n    continue\n',
    'dry:    reject 550 5.7.1 "would {client.ip}"\n',
    '    tempfail 451 4.7.1 "later"\n',
    "    accept\n",
])
_HANDLERS = st.sampled_from(["", "    on error continue\n",
                             '    on error tempfail 451 4.3.2 "failed"\n'])


def _inline(body: str, first: str, second: str) -> str:
    return body.replace(_P, f"({first})").replace(_Q, f"({second})")


_helper_conditions = st.tuples(_bool_bodies, _arguments, _arguments).map(
    lambda t: _inline(*t).replace(").address", ").email_address"))
_shapes = st.sampled_from([
    "sender matches /(?i)SOLAWI/", 'not (client.helo contains ".")', "client.port < 2000",
    "client.ip in [192.0.2.0/24, 10.0.0.0/8]", 'envelope.to[1] == "x@example.org"',
    '"{sender}-{rcpt}" starts_with "a@"', 'lower(sender) in ["a@example.org", "x"]',
    'client.helo ends_with ".b"', "envelope.to == [rcpt]", 'rcpt != "INFO@solawi.example"',
    "all w in envelope.to: w ends_with \".example\"", "len(envelope.to) >= 2",
    'header("X-List") == rcpt',
])
_conditions = st.one_of(_helper_conditions, _helper_conditions, _shapes,
                        st.tuples(_shapes, st.sampled_from([" and ", " or "]),
                                  _helper_conditions).map("".join),
                        expressions)


def _policy(conditions: list[tuple[str, str, str]], stage: str) -> str:
    return f"stage {stage} {{\n{_rules(conditions)}\n  default accept\n}}\n"


def check(text: str) -> None:
    result = compile_with_directory(text, "codegen.policy")
    if result.policy_set is None:
        return  # a random policy that does not check: nothing to run
    assert differences(result.policy_set) == [], text


@settings(FAST, max_examples=150)
@given(st.lists(st.tuples(_conditions, _ACTIONS, _HANDLERS), min_size=1, max_size=3),
       st.sampled_from(["rcpt", "rcpt", "data"]))
@example([("subscribed(sender, category(rcpt)) or category(rcpt) == none",
           "    accept\n", "")], "rcpt")
@example([("is_admin(sender) and (any w in envelope.to: category(w) != none)",
           "    accept\n", "    on error continue\n")], "rcpt")
@example([('not (sender ends_with "@web.example") and len(envelope.to) > 1',
           "    accept\n", "")], "rcpt")
def test_generated_stages_decide_like_the_closures(conditions, stage):
    check(_policy(conditions, stage))


def test_the_generated_path_is_the_one_decisions_take():
    result = compile_with_directory(_policy([("category(rcpt) != none", "    reject\n", "")],
                                            "rcpt"))
    assert result.policy_set is not None
    assert result.policy_set.stages["rcpt"].run is not None
    # the closures remain, for traces (and as the reference these tests compare with)
    assert result.policy_set.stages["rcpt"].steps


_EXAMPLES = [
    'client.helo != none and client.helo contains "."',
    "len(envelope.to) >= 2",
    'sender ends_with "@web.example" or rcpt starts_with "info@"',
    "category(rcpt) == none",
    "not (rcpt in envelope.to)",
]


@pytest.mark.parametrize("broken", ["order", "equality"])
def test_a_broken_generator_is_caught(monkeypatch: Any, broken: str):
    """The comparison can fail: with the generator's `>=` written as `<`, or its `==` as
    `!=`, some example decides differently from the closures."""
    original = codegen_compare.CompareGenerating._compare

    def wrong(self: Any, op: str, neg: bool, *args: Any) -> Any:
        if broken == "order" and op in codegen_compare._ORDER:
            op = "<"
        if broken == "equality" and op in ("==", "!="):
            neg = not neg
        return original(self, op, neg, *args)

    monkeypatch.setattr(codegen_compare.CompareGenerating, "_compare", wrong)
    found = []
    for condition in _EXAMPLES:
        result = compile_with_directory(_policy([(condition, "    reject\n", "")], "rcpt"),
                                        "broken.policy")
        assert result.policy_set is not None
        found += differences(result.policy_set)
    assert found


def _chain(depth: int) -> str:
    """`depth` functions, each `or`-ing one comparison with a call of the one before."""
    lines = ['def f0(p) = p == "a@example.org"']
    lines += [f'def f{i}(p) = p == "r{i}@example.org" or f{i - 1}(p)' for i in range(1, depth)]
    return "\n".join(lines) + "\n" + _policy([(f"f{depth - 1}(sender)", "    reject\n", "")],
                                             "rcpt")


def _decides_the_chain(policy_set: PolicySet) -> None:
    for sender, expected in (("a@example.org", "reject"), ("r7@example.org", "reject"),
                             ("b@example.org", "accept")):
        req = request("rcpt", sender=sender, to=["x@example.org"])
        assert decide(policy_set, req, demo_for(policy_set)).action == expected


@pytest.mark.parametrize("depth", [20, 74])
def test_deeply_nested_conditions(depth: int):
    """Functions calling functions nest `or`s (at 74 functions, 148 levels, near the
    checker's E156 bound, the generator gives up and the rule calls its closure); both
    depths decide like the closures."""
    result = compile_with_directory(_chain(depth))
    assert result.policy_set is not None
    if depth == 20:
        assert result.policy_set.stages["rcpt"].run is not None
    assert differences(result.policy_set) == []
    _decides_the_chain(result.policy_set)


def test_a_stage_python_refuses_runs_on_closures(monkeypatch: Any):
    """Source Python will not compile (say, more nested blocks than it allows): the stage
    keeps its closures, no `run`, and decides as before."""
    from komm_policy import codegen

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SyntaxError("too many statically nested blocks")

    monkeypatch.setattr(codegen, "compile", refuse, raising=False)
    result = compile_with_directory(_chain(20))
    assert result.policy_set is not None
    assert result.policy_set.stages["rcpt"].run is None
    _decides_the_chain(result.policy_set)


def test_past_the_budgets_rules_call_closures_and_decide_alike(monkeypatch: Any):
    """Past the inline-lookup budget lookups are calls, past the line budget rules call
    their closures (both bound load time); the decisions stay the closures'."""
    from komm_policy import codegen, codegen_lookups

    monkeypatch.setattr(codegen_lookups, "INLINE_LOOKUPS", 2)
    monkeypatch.setattr(codegen, "STAGE_LINES", 60)
    rules = [(f'category(rcpt) != none and not subscribed(sender, category(rcpt)) and '
              f'sender ends_with "@d{i}.example"', "    reject\n", "") for i in range(6)]
    rules += [("ip_blocked(client.ip) or is_admin(sender)", "    tempfail\n", ""),
              ("category(rcpt) == none", '    log "x"\n    continue\n', "")]
    result = compile_with_directory(_policy(rules, "rcpt"))
    assert result.policy_set is not None
    assert result.policy_set.stages["rcpt"].run is not None
    assert differences(result.policy_set) == []
