"""Table lookups in the language: `lookup`, `lookup_all`, `exists`, row fields, checked
against a schema, run lazily and memoised per decision, failing into the fallback."""

from __future__ import annotations

from typing import Any

import pytest

from komm_policy.directory import DirectoryError
from komm_policy.directory.memory import InMemoryDirectory
from komm_policy.directory.schema import parse_schema
from komm_policy.policyset import PolicySet, Source, compile_sources
from komm_policy.runtime import decide

from .test_runtime import request

SCHEMA = parse_schema({"tables": {
    "blocked_domains": {"columns": {"domain": {"type": "address"},
                                    "reason": {"type": "text", "optional": True}}},
    "blocked_nets": {"primary_key": ["net"], "columns": {
        "net": {"type": "network"}, "reason": {"type": "text"},
        "active": {"type": "bool"}}},
    "account_emails": {"primary_key": ["id"], "columns": {
        "id": {"type": "integer"}, "account_id": {"type": "integer"},
        "email": {"type": "address"}, "verified": {"type": "bool"}}},
    "subscriptions": {"primary_key": ["id"], "columns": {
        "id": {"type": "integer"}, "account_id": {"type": "integer"},
        "topic": {"type": "text"},
        "status": {"type": "enum", "variants": ["ManuallySubscribed", "LinkUnsubscribed"]},
        "permission": {"type": "enum", "variants": ["Read", "Write"]},
        "note": {"type": "text", "optional": True},
        "price": {"type": "float", "optional": True}}},
}})

ROWS: dict[str, list[dict[str, Any]]] = {
    "blocked_domains": [{"domain": "Spam.Example", "reason": "spam"},
                        {"domain": "bücher.example", "reason": None}],
    "blocked_nets": [{"net": "10.0.0.0/8", "reason": "wide", "active": True},
                     {"net": "10.1.0.0/16", "reason": "narrow", "active": True},
                     {"net": "2001:db8::/32", "reason": "v6", "active": False}],
    "account_emails": [{"id": 2, "account_id": 20, "email": "Anna@Example.org",
                        "verified": True},
                       {"id": 1, "account_id": 10, "email": "anna@example.org",
                        "verified": False},
                       {"id": 3, "account_id": 30, "email": "bob@example.org",
                        "verified": True}],
    "subscriptions": [
        {"id": 1, "account_id": 20, "topic": "info", "status": "ManuallySubscribed",
         "permission": "Write", "note": None, "price": None},
        {"id": 2, "account_id": 20, "topic": "news", "status": "LinkUnsubscribed",
         "permission": "Write", "note": "x", "price": 1.5},
        {"id": 3, "account_id": 30, "topic": "info", "status": "ManuallySubscribed",
         "permission": "Read", "note": None, "price": None}],
}


def compile_with(text: str, schema: Any = SCHEMA) -> tuple[PolicySet | None, list[Any]]:
    result = compile_sources([Source("t.policy", text)], schema=schema)
    return result.policy_set, list(result.diagnostics)


def load(text: str) -> PolicySet:
    policy_set, diagnostics = compile_with(text)
    assert policy_set is not None, "\n".join(str(d) for d in diagnostics)
    return policy_set


def directory_for(policy_set: PolicySet, rows: dict[str, list[dict[str, Any]]] = ROWS
                  ) -> InMemoryDirectory:
    directory = InMemoryDirectory(tables=rows)
    directory.require(SCHEMA, policy_set.needs)
    return directory


def rcpt_decision(text: str, sender: str, ip: str = "192.0.2.10",
                  directory: Any = None) -> tuple[str, str | None, Any]:
    policy_set = load(text)
    directory = directory or directory_for(policy_set)
    decision = decide(policy_set, request("rcpt", sender=sender, to=["info@x.example"],
                                          ip=ip), directory)
    rule = decision.rule.name if decision.rule else None
    return decision.action, rule, decision


POSTING = """
stage rcpt {
    rule blocked_domain:
        when exists("blocked_domains", domain = domain(sender))
        reject 550 5.7.1 "blocked domain"
    rule writer:
        when any s in lookup_all("subscriptions",
                                 account_id = lookup("account_emails", email = sender,
                                                     verified = true).account_id):
            s.topic == "info" and s.status == "ManuallySubscribed" and s.permission == "Write"
        accept
    default reject 550 5.7.1 "not a writer"
}
"""


@pytest.mark.parametrize(("sender", "expected"), [
    ("ANNA@example.ORG", ("accept", "writer")),  # mixed case: row 2 (verified) wins
    ("bob@example.org", ("reject", "default")),  # a Read subscription
    ("x@SPAM.example", ("reject", "blocked_domain")),
    ("x@BÜCHER.example", ("reject", "blocked_domain")),  # IDN, stored as U-label
    ("x@xn--bcher-kva.example", ("reject", "blocked_domain")),  # the A-label
    ("nobody@example.org", ("reject", "default")),  # none account → none key → []
    ("", ("reject", "default")),  # the null sender
])
def test_posting_rule_over_tables(sender: str, expected: tuple[str, str | None]) -> None:
    action, rule, _ = rcpt_decision(POSTING, sender)
    assert (action, rule) == expected


def test_network_keys_most_specific_first_and_combined_with_equality() -> None:
    text = """
    stage rcpt {
        rule blocked:
            when lookup("blocked_nets", net = client.ip, active = true) != none
            reject 550 5.7.1 "{lookup("blocked_nets", net = client.ip, active = true).reason}"
        default accept
    }
    """
    for ip, expected in (("10.1.2.3", "narrow"), ("10.200.0.1", "wide"),
                         ("::ffff:10.1.0.9", "narrow"), ("2001:db8::1", None),
                         ("192.0.2.1", None)):
        _, _, decision = rcpt_decision(text, "a@x.example", ip=ip)
        if expected is None:
            assert decision.action == "accept", ip
        else:
            assert decision.reply is not None and decision.reply.message == expected, ip


def test_optional_fields_and_enum_comparisons() -> None:
    text = """
    stage rcpt {
        rule noted:
            when lookup("subscriptions", account_id = 20, topic = "news").note == "x"
                and lookup("subscriptions", account_id = 20, topic = "info").note == none
                and lookup("subscriptions", account_id = 20, status = "LinkUnsubscribed").id == 2
            accept
        default reject
    }
    """
    assert rcpt_decision(text, "a@x.example")[:2] == ("accept", "noted")


class CountingTables:
    """A snapshot's tables that count reads and can fail."""

    def __init__(self, inner: Any, fail: bool = False) -> None:
        self.inner = inner
        self.reads: list[tuple[str, Any]] = []
        self.fail = fail

    def _read(self, method: str, spec: Any, keys: Any) -> Any:
        self.reads.append((method, keys))
        if self.fail:
            raise DirectoryError("replica older than max_staleness")
        return getattr(self.inner, method)(spec, keys)

    def first(self, spec: Any, keys: Any) -> Any:
        return self._read("first", spec, keys)

    def all(self, spec: Any, keys: Any) -> Any:
        return self._read("all", spec, keys)

    def exists(self, spec: Any, keys: Any) -> Any:
        return self._read("exists", spec, keys)


class CountingDirectory:
    blocking = False

    def __init__(self, inner: InMemoryDirectory, fail: bool = False) -> None:
        self.tables = CountingTables(inner.snapshot().tables, fail)

    def snapshot(self) -> CountingDirectory:
        return self


def test_lookups_are_lazy_and_memoised_per_decision() -> None:
    text = """
    stage rcpt {
        rule cheap_first:
            when sender == "" and exists("blocked_domains", domain = domain(sender))
            reject
        rule twice:
            when exists("blocked_domains", domain = domain(sender))
                or exists("blocked_domains", domain = domain(sender))
            reject 550 5.7.1 "{lookup("account_emails", email = sender).id}"
        rule none_key:
            when exists("account_emails", email = lookup("account_emails",
                                                         email = "nobody@x.example").email)
            reject
        default accept
    }
    """
    policy_set = load(text)
    counting = CountingDirectory(directory_for(policy_set))
    decision = decide(policy_set, request("rcpt", sender="a@x.example", to=["i@x.example"]),
                      counting)
    assert decision.action == "accept"
    # cheap_first: `sender == ""` is false, no read; twice: one read, memoised; none_key:
    # the inner lookup reads once, its none result makes the outer key none: no read
    assert counting.tables.reads == [("exists", ("x.example",)),
                                     ("first", ("nobody@x.example",))]
    labels = [lookup.function for lookup in decision.lookups]
    assert labels == ["exists(blocked_domains: domain)", "lookup(account_emails: email)"]


def test_a_failing_directory_gives_on_error_then_the_fallback() -> None:
    text = """
    settings { on_lookup_error = tempfail 451 4.3.0 "Directory unavailable" }
    stage rcpt {
        rule with_on_error:
            when sender == "a@x.example" and exists("blocked_domains", domain = domain(sender))
            reject
            on error accept
        rule without:
            when exists("blocked_domains", domain = domain(sender))
            reject
        default accept
    }
    """
    policy_set = load(text)
    failing = CountingDirectory(directory_for(policy_set), fail=True)
    first = decide(policy_set, request("rcpt", sender="a@x.example", to=["i@x.example"]),
                   failing)
    assert first.action == "accept" and first.rule and first.rule.name == "with_on_error"
    second = decide(policy_set, request("rcpt", sender="b@x.example", to=["i@x.example"]),
                    failing)
    assert second.fallback and second.action == "tempfail"
    assert "replica older than max_staleness" in (second.cause or "")


def test_snapshot_isolation_within_a_decision() -> None:
    """A decision reads the snapshot taken when it started, even if the directory
    publishes a new one meanwhile."""
    policy_set = load(POSTING)
    directory = directory_for(policy_set)
    snapshot = directory.snapshot()
    directory.apply({"blocked_domains": ([], [{"domain": "new.example", "reason": "r"}])})
    assert not snapshot.tables.exists(
        next(s for s in policy_set.needs.indexes if s.table == "blocked_domains"),
        ("new.example",))
    action, rule, _ = rcpt_decision(POSTING, "x@new.example", directory=directory)
    assert (action, rule) == ("reject", "blocked_domain")


def test_needs_name_exactly_the_indexes_the_policy_reads() -> None:
    policy_set = load(POSTING)
    # `verified = true` is a literal key: folded into a partial index of verified rows
    assert sorted((s.table, s.columns, s.kind, s.where)
                  for s in policy_set.needs.indexes) == [
        ("account_emails", ("email",), "eq", (("verified", True),)),
        ("blocked_domains", ("domain",), "eq", ()),
        ("subscriptions", ("account_id",), "eq", ())]


# -- checker -----------------------------------------------------------------------------


def codes(text: str, schema: Any = SCHEMA) -> list[tuple[str, int, int, str | None]]:
    _, diagnostics = compile_with(text, schema)
    return [(d.code, d.span.line, d.span.column, d.hint) for d in diagnostics]


def rule(condition: str) -> str:
    return f"stage rcpt {{\n    rule r:\n        when {condition}\n        accept\n" \
           "    default accept\n}\n"


@pytest.mark.parametrize(("condition", "expected"), [
    # (code, column of the caret, the hint or None); every diagnostic is on line 3
    ('exists("blocked_domain", domain = sender)',
     ("E140", 21, "did you mean `blocked_domains`?")),
    ('exists("blocked_domains", domian = sender)', ("E141", 40, "did you mean `domain`?")),
    ('exists("blocked_domains", domain = sender, domain = sender)', ("E141", 57, None)),
    ('exists("blocked_domains", domain = 3)', ("E142", 49, None)),
    ('exists("subscriptions", status = "Active")', ("E142", 47, None)),  # not a variant
    ('exists("blocked_nets", net = "10.0.0.1")', ("E142", 43, None)),  # text, not ip
    ('exists("subscriptions", price = 3)', ("E142", 46, None)),
    ('exists("blocked_domains")',
     ("E104", 14, 'e.g. exists("blocked_domains", domain = domain(sender))')),
    ('exists(sender, domain = sender)', ("E105", 21, "tables are fixed when the policy "
                                         "loads")),
    ('lookup("account_emails", email = sender).emial == ""',
     ("E107", 55, "did you mean `email`?")),
    ('lower(text = sender) == ""',
     ("E104", 20, "signature: lower(text: address or text) -> text")),
    ('lookup("account_emails", email = sender) == "x"', ("E105", 55, None)),
])
def test_checker_diagnostics(condition: str, expected: tuple[Any, ...]) -> None:
    found = codes(rule(condition))
    code, column, hint = expected
    assert found == [(code, 3, column, hint)], found


def test_float_columns_have_no_index() -> None:
    schema = parse_schema({"tables": {"prices": {"columns": {"amount": {"type": "float"},
                                                             "tags": {"type": "list",
                                                                      "element": "text"}}}}})
    found = codes(rule('exists("prices", amount = lookup("prices", tags = []).amount)'),
                  schema)
    assert [(c[0], c[2]) for c in found] == [("E143", 31), ("E143", 57)], found


def test_without_schema_one_warning_and_the_rest_is_checked() -> None:
    text = rule('exists("a", x = sender) and exists("b", y = sender) and sendr == ""')
    found = codes(text, None)
    assert [c[0] for c in found] == ["W209", "E102"]


def test_a_positional_argument_after_a_keyword_is_a_syntax_error() -> None:
    found = codes(rule('exists("blocked_domains", domain = sender, "x")'))
    assert found[0][0] == "E001"


SUB = 'lookup("subscriptions", account_id = 20)'


@pytest.mark.parametrize(("prefix", "condition", "expected"), [
    # (let lines before the stage, the condition, [(column of the caret, hint)])
    ("", f'{SUB}.status == "ManualySubscribed"',
     [(65, "did you mean `ManuallySubscribed`?")]),
    ("", f'"Wrte" != {SUB}.permission', [(14, "did you mean `Write`?")]),
    ("", f'{SUB}.status in ["ManuallySubscribed", "Pausd"]', [(88, None)]),
    ("", f'{SUB}.status not in ["LinkUnsubscribd"]',
     [(70, "did you mean `LinkUnsubscribed`?")]),
    # a constant: the caret is at its name in the comparison, the message names it
    ('let states = ["ManuallySubscribed", "LinkUnsubscrbed"]\n', f"{SUB}.status in states",
     [(65, "did you mean `LinkUnsubscribed`?")]),
    ('let one = "Reed"\n', f"{SUB}.permission == one", [(69, "did you mean `Read`?")]),
    # variants spelt right, computed text, and text fields: no error
    ('let states = ["ManuallySubscribed"]\n',
     f'{SUB}.status in states and {SUB}.permission == "Write" and {SUB}.status != lower("x")'
     f' and {SUB}.topic == "Pausd"', []),
])
def test_an_enum_compared_with_text_that_names_no_variant_is_an_error(
        prefix: str, condition: str, expected: list[tuple[int, str | None]]) -> None:
    """breaker3 #1: `s.status in ["RequiredSubscrbed"]` was accepted and never true."""
    found = codes(prefix + rule(condition))
    line = 3 + prefix.count("\n")
    assert found == [("E142", line, column, hint) for column, hint in expected], found


def test_an_enum_check_follows_constants_but_not_loop_variables() -> None:
    found = codes('let s = "Pausd"\n' + rule(
        'any s in lookup_all("subscriptions", topic = "info"): s.status == "Pausd"'))
    assert [(c[0], c[1]) for c in found if c[0].startswith("E")] == [("E142", 4)], found
    message = compile_with('let st = ["Pausd"]\n' + rule(f"{SUB}.status in st"),
                           SCHEMA)[1][0].message
    assert '"Pausd" (in `let st`) is not a variant of' in message
