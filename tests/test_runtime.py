"""The evaluator: first match, defaults, replies, modifications, dry runs, lookups (laziness,
memo, failures, timeouts, deadline), errors as values, traces, quarantine, and the shipped
policies against the demo directory.

Policies are small snippets compiled with `compile_text`; requests are Stalwart-shaped JSON
payloads built per stage and decoded with `decode_request`, as the service does.  The
helpers here are shared with `test_compiler.py`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterable
from typing import Any

import pytest

from komm_policy.decision import Decision, DryRunHit, LookupRecord, Reply, TraceStep
from komm_policy.directory import DirectoryError
from komm_policy.policyset import PolicySet, Source, compile_sources, compile_text
from komm_policy.runtime import decide
from komm_policy.wire import (
    AddHeader,
    AddRecipient,
    ChangeFrom,
    ChangeHeader,
    DeleteHeader,
    DeleteRecipient,
    InsertHeader,
    ReplaceContents,
    Request,
    decode_request,
)

from .conftest import POLICIES
from .shipped import compile_with_directory, directory

# ---------------------------------------------------------------------------------------
# Helpers (also imported by test_compiler.py)

DEMO = directory()


@functools.cache
def policy(text: str, name: str = "<policy>") -> PolicySet:
    """Compile a policy snippet after the shipped directory file (the helpers); fail the
    test with the diagnostics if it does not check."""
    result = compile_with_directory(text, name)
    assert result.policy_set is not None, "\n".join(str(d) for d in result.diagnostics)
    return result.policy_set


def raw(value: str) -> str:
    """A header value as Stalwart sends it: leading space, trailing CRLF."""
    return value if value.endswith("\n") else f" {value}\r\n"


def request(
    stage: str,
    *,
    sender: str | None = None,
    to: Iterable[str] = (),
    headers: Iterable[tuple[str, str]] = (),
    body: str = "",
    ip: str = "192.0.2.10",
    port: int = 1234,
    helo: str | None = "mx.example.net",
    sasl: str | None = None,
    tls: bool = False,
    size: int | None = None,
) -> Request:
    """A request for `stage`, with the keys Stalwart sends at that stage (wire ref. §3.2).

    `headers` are (name, value) pairs; a value without a line end is sent raw as
    " value\\r\\n"; one that ends in a newline is sent exactly as given."""
    context: dict[str, Any] = {
        "stage": stage,
        "client": {"ip": ip, "port": port, "ptr": None,
                   "helo": None if stage == "connect" else helo, "activeConnections": 1},
    }
    if sasl is not None:
        context["sasl"] = {"login": sasl}
    if tls:
        context["tls"] = {"version": "TLSv1.3", "cipher": "TLS13_AES_256_GCM_SHA384"}
    context["server"] = {"name": "Stalwart v0.16.18", "port": 25, "ip": "203.0.113.25"}
    if stage == "data":
        context["queue"] = {"id": "482806d63a41001"}
    context["protocol"] = {"version": 1}
    payload: dict[str, Any] = {"context": context}
    if stage in ("mail", "rcpt", "data"):
        payload["envelope"] = {
            "from": {"address": sender if sender is not None else ""},
            "to": [{"address": a} for a in to],
        }
    if stage == "data":
        header_list = [[name, raw(value)] for name, value in headers]
        payload["message"] = {
            "headers": header_list,
            "contents": body,
            "size": size if size is not None else 200 + len(body),
        }
    return decode_request(json.dumps(payload))


def summary(decision: Decision) -> tuple[str, str | None, str | None]:
    """(action, "code enhanced message" or None, deciding rule name or None)."""
    return (decision.action, str(decision.reply) if decision.reply else None,
            decision.rule.name if decision.rule else None)


def run(text: str, req: Request, directory: Any = None, **kwargs: Any) -> Decision:
    return decide(policy(text), req, DEMO if directory is None else directory, **kwargs)


class FakeClock:
    """A clock the test moves by hand (decide(..., clock=FakeClock()))."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingDirectory:
    """Wraps a directory's tables: records every table read as (table, *keys), and can
    fail, be slow (on a fake clock) or return a replacement value for chosen tables.

    The helpers are functions over the shipped tables: `is_admin(a)` reads
    `lookup_all("account", …)` (shared with `subscribed`, memoised) and, for each account
    found, `admin_identities`; `category` reads `message_categories`; `account` reads
    `account` (first row); `subscribed` reads `subscriptions`."""

    def __init__(self, inner: Any = None, *, blocking: bool = False,
                 fail: Iterable[str] = (), clock: FakeClock | None = None,
                 delay: float = 0.0, sleep: float = 0.0,
                 returns: dict[str, Any] | None = None) -> None:
        self.inner = DEMO if inner is None else inner
        self.blocking = blocking
        self.fail = set(fail)
        self.clock = clock
        self.delay = delay
        self.sleep = sleep
        self.returns = returns or {}
        self.calls: list[tuple[Any, ...]] = []

    def snapshot(self) -> CountingDirectory:
        return self

    @property
    def tables(self) -> CountingDirectory:
        return self

    def count(self, table: str) -> int:
        return sum(1 for call in self.calls if call[0] == table)

    def _read(self, method: str, index: str, keys: tuple[Any, ...]) -> Any:
        table = index.split("(", 1)[0]
        self.calls.append((table, *keys))
        if self.clock is not None:
            self.clock.now += self.delay
        if self.sleep:
            time.sleep(self.sleep)
        if table in self.fail:
            raise DirectoryError(f"{table} backend unreachable")
        if table in self.returns:
            return self.returns[table]
        return getattr(self.inner.snapshot().tables, method)(index, keys)

    def first(self, index: str, keys: tuple[Any, ...]) -> Any:
        return self._read("first", index, keys)

    def all(self, index: str, keys: tuple[Any, ...]) -> Any:
        return self._read("all", index, keys)

    def exists(self, index: str, keys: tuple[Any, ...]) -> Any:
        return self._read("exists", index, keys)


ACCOUNTS = "lookup_all(account: email, is_active)"
"""The read `is_admin` and `subscribed` start with (its label in records and causes)."""


# ---------------------------------------------------------------------------------------
# First match, default, non-terminal rules

FIRST_MATCH = """
stage mail {
    rule not_me:
        when sender == "nobody@example.org"
        reject 550 5.7.1 "not me"
    rule first:
        when sender ends_with "@example.org"
        reject 550 5.7.1 "first"
    rule second:
        when sender == "alice@example.org"
        tempfail 451 4.7.1 "second"
    default discard
}
"""


def test_first_matching_rule_decides():
    decision = run(FIRST_MATCH, request("mail", sender="alice@example.org"))
    assert summary(decision) == ("reject", "550 5.7.1 first", "first")
    assert decision.fallback is False and decision.cause is None
    assert decision.stage == "mail"


def test_default_decides_when_no_rule_matches():
    decision = run(FIRST_MATCH, request("mail", sender="bob@example.net"))
    assert summary(decision) == ("discard", "250 2.0.0 Message queued for delivery", "default")
    assert decision.rule is not None
    assert (decision.rule.file, decision.rule.line) == ("<policy>", 12)


def test_missing_default_accepts():
    text = 'stage mail { rule r: when sender == "x@example.org" reject }'
    result = compile_text(text)
    assert any(d.code == "W202" for d in result.diagnostics)
    decision = run(text, request("mail", sender="alice@example.org"))
    assert summary(decision) == ("accept", None, None)
    assert decision.modifications == ()


def test_stage_without_rules_accepts():
    decision = run(FIRST_MATCH, request("connect"))
    assert summary(decision) == ("accept", None, None)
    assert decision.stage == "connect"


def test_deciding_rule_has_name_file_and_line():
    first = Source("10-first.policy", "stage mail {\n    default accept\n}\n")
    second = Source("20-second.policy", (
        "# comment\n"
        "stage mail {\n"
        "    rule early: when sender == \"x@example.org\" reject\n"
        "\n"
        "      rule blocked_sender:\n"
        "        when sender ends_with \"@spam.example\"\n"
        "        reject\n"
        "}\n"))
    result = compile_sources([first, second])
    assert result.policy_set is not None, result.diagnostics
    decision = decide(result.policy_set, request("mail", sender="a@spam.example"), DEMO)
    assert decision.rule is not None
    assert (decision.rule.name, decision.rule.file, decision.rule.line,
            decision.rule.column) == ("blocked_sender", "20-second.policy", 5, 7)
    other = decide(result.policy_set, request("mail", sender="a@ok.example"), DEMO)
    assert other.rule is not None
    assert (other.rule.name, other.rule.file, other.rule.line) == (
        "default", "10-first.policy", 2)


NON_TERMINAL = """
stage data {
    rule tag_one:
        when true
        add_header "X-One" "1"
        log "one for {sender}"
        continue
    rule tag_never:
        when sender == "nobody@example.org"
        add_header "X-Never" "never"
        continue
    rule tag_two:
        when sender ends_with "@example.org"
        insert_header "X-Two" "2" at 1
        change_header "Subject" "[list] {subject}"
        delete_header "X-Secret" at 2
        continue
    rule reject_bad:
        when subject contains "REJECT"
        log "rejecting"
        reject 550 5.7.1 "rejected"
    rule discard_bad:
        when subject contains "DISCARD"
        discard
    rule tempfail_bad:
        when subject contains "TEMPFAIL"
        tempfail
    rule accept_tagged:
        when subject contains "ACCEPT"
        add_header "X-Three" "3"
        change_from "bounce@example.org"
        add_recipient "archive@example.org"
        delete_recipient "Old@Example.org"
        replace_contents "new body"
        accept
    default accept
}
"""


def test_non_terminal_rules_accumulate_modifications_in_order():
    decision = run(NON_TERMINAL, request("data", sender="alice@example.org",
                                        to=["info@solawi.example"],
                                        headers=[("Subject", "hello")]))
    assert summary(decision) == ("accept", None, "default")
    assert decision.modifications == (
        AddHeader(name="X-One", value="1"),
        InsertHeader(index=1, name="X-Two", value="2"),
        ChangeHeader(index=1, name="Subject", value="[list] hello"),
        DeleteHeader(index=2, name="X-Secret"),
    )
    assert decision.logs == ("one for alice@example.org",)


def test_terminal_accept_rule_adds_its_own_modifications_last():
    decision = run(NON_TERMINAL, request("data", sender="bob@example.net",
                                        to=["info@solawi.example"],
                                        headers=[("Subject", "ACCEPT me")]))
    assert summary(decision) == ("accept", None, "accept_tagged")
    assert decision.modifications == (
        AddHeader(name="X-One", value="1"),
        AddHeader(name="X-Three", value="3"),
        ChangeFrom(value="bounce@example.org"),
        AddRecipient(value="archive@example.org"),
        DeleteRecipient(value="old@example.org"),
        ReplaceContents(value="new body"),
    )


@pytest.mark.parametrize(("subject", "expected"), [
    ("REJECT", ("reject", "550 5.7.1 rejected", "reject_bad")),
    ("DISCARD", ("discard", "250 2.0.0 Message queued for delivery", "discard_bad")),
    ("TEMPFAIL", ("tempfail", "451 4.3.0 Temporary failure, please try again later",
                  "tempfail_bad")),
])
def test_modifications_are_dropped_when_a_non_accept_action_decides(subject, expected):
    decision = run(NON_TERMINAL, request("data", sender="alice@example.org",
                                        to=["info@solawi.example"],
                                        headers=[("Subject", subject)]))
    assert summary(decision) == expected
    assert decision.modifications == ()
    # log lines of the rules that ran are kept
    assert decision.logs[0] == "one for alice@example.org"


def test_log_lines_interpolate_fields_and_lookups_in_order():
    text = """
    stage rcpt {
        rule log_list:
            when category(rcpt) != none
            log "list {category(rcpt).name} for {sender}"
            continue
        rule log_unmatched:
            when sender == "nobody@example.org"
            log "never"
            continue
        rule log_and_reject:
            when not is_admin(sender)
            log "not an admin: {sender}"
            reject
        default accept
    }
    """
    decision = run(text, request("rcpt", sender="Peter.Schmidt@web.example",
                                 to=["Gemuese@Solawi.example"]))
    assert summary(decision)[0] == "reject"
    assert decision.logs == ("list Gemuese for peter.schmidt@web.example",
                             "not an admin: peter.schmidt@web.example")


DRY_RUN = """
stage rcpt {
    rule would_reject dry_run:
        when sender ends_with "@example.org"
        reject 554 "would reject {sender}"
    rule would_not dry_run:
        when sender == "nobody@example.org"
        reject
    rule would_tempfail dry_run:
        when true
        tempfail 452 4.2.2 "full"
    rule real:
        when rcpt == "info@solawi.example"
        tempfail 451 4.7.1 "real"
    default accept
}
"""


def test_dry_run_rules_are_recorded_without_effect():
    decision = run(DRY_RUN, request("rcpt", sender="alice@example.org",
                                    to=["info@solawi.example"]))
    assert summary(decision) == ("tempfail", "451 4.7.1 real", "real")
    assert [(hit.rule.name, hit.action, hit.reply) for hit in decision.dry_run] == [
        ("would_reject", "reject", Reply(554, "5.0.0", "would reject alice@example.org")),
        ("would_tempfail", "tempfail", Reply(452, "4.2.2", "full")),
    ]
    assert all(isinstance(hit, DryRunHit) for hit in decision.dry_run)
    # a dry run never decides: without the real rule the default does
    other = run(DRY_RUN, request("rcpt", sender="alice@example.org", to=["x@solawi.example"]))
    assert summary(other) == ("accept", None, "default")
    assert len(other.dry_run) == 2


def test_dry_run_modifications_are_not_applied():
    text = """
    stage data {
        rule tag dry_run:
            when true
            add_header "X-Dry" "yes"
            continue
        rule drop dry_run:
            when true
            discard
        default accept
    }
    """
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"]))
    assert summary(decision) == ("accept", None, "default")
    assert decision.modifications == ()
    assert [(hit.rule.name, hit.action) for hit in decision.dry_run] == [
        ("tag", "continue"), ("drop", "discard")]


def test_a_failing_dry_run_rule_never_decides():
    text = """
    stage rcpt {
        rule probe dry_run:
            when is_admin(sender)
            reject
        rule list: when category(rcpt) != none tempfail 451 4.7.1 "list"
        default accept
    }
    """
    decision = run(text, request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   CountingDirectory(fail={"account"}))
    assert summary(decision) == ("tempfail", "451 4.7.1 list", "list")
    assert decision.fallback is False
    assert decision.dry_run == ()
    assert len(decision.errors) == 1 and "probe" in decision.errors[0]


# ---------------------------------------------------------------------------------------
# SMTP replies


@pytest.mark.parametrize(("action", "reply"), [
    ("reject", Reply(550, "5.7.1", "Rejected by policy")),
    ("tempfail", Reply(451, "4.3.0", "Temporary failure, please try again later")),
    ("discard", Reply(250, "2.0.0", "Message queued for delivery")),
    ("reject 554", Reply(554, "5.0.0", "Rejected by policy")),
    ("reject 553 \"No such user\"", Reply(553, "5.0.0", "No such user")),
    ("tempfail 421", Reply(421, "4.0.0", "Temporary failure, please try again later")),
    ("tempfail 450 \"Busy\"", Reply(450, "4.0.0", "Busy")),
    ("reject 553 5.1.7 \"Invalid sender address\"", Reply(553, "5.1.7", "Invalid sender address")),
    ("tempfail 452 4.2.2 \"Mailbox full\"", Reply(452, "4.2.2", "Mailbox full")),
    ("reject \"Go away\"", Reply(550, "5.7.1", "Go away")),
    ("tempfail \"Later\"", Reply(451, "4.3.0", "Later")),
    ("reject 5.7.26 \"Unauthenticated\"", Reply(550, "5.7.26", "Unauthenticated")),
])
def test_replies_explicit_and_defaults(action, reply):
    decision = run(f"stage mail {{ rule r: when true {action} }}",
                   request("mail", sender="a@example.org"))
    assert decision.reply == reply
    assert isinstance(decision.reply.status, int)
    assert decision.reply.message  # a reply always has both a status and a message


def test_accept_has_no_reply():
    decision = run("stage mail { rule r: when true accept }", request("mail", sender="a@b.cd"))
    assert summary(decision) == ("accept", None, "r")


def test_reply_templates_interpolate_fields_and_lookups():
    text = """
    stage rcpt {
        rule closed:
            when category(rcpt) != none
            reject 550 5.7.1 "{sender} -> {rcpt} ({category(rcpt).name}) from {client.ip}"
        default accept
    }
    """
    decision = run(text, request("rcpt", sender="Alice@Example.org",
                                 to=["info@solawi.example"], ip="::ffff:198.51.100.7"))
    assert decision.reply == Reply(
        550, "5.7.1", "alice@example.org -> info@solawi.example (Info) from 198.51.100.7")


def _printable_ascii(text: str) -> bool:
    return all(" " <= c <= "~" for c in text)


def test_interpolated_text_is_made_safe_in_replies():
    text = """
    stage data {
        rule r:
            when true
            reject 550 5.7.1 "Refused: {subject} / {message.body}"
    }
    """
    decision = run(text, request(
        "data", sender="a@example.org", to=["b@example.org"],
        headers=[("Subject", "=?UTF-8?Q?Gr=C3=BC=C3=9Fe_=F0=9F=98=80?=")],
        body="line one\r\nline two\nbell\x07 del\x7f tab\tend"))
    reply = decision.reply
    assert reply is not None
    assert _printable_ascii(reply.message), reply.message
    assert "\r" not in reply.message and "\n" not in reply.message
    assert reply.message.startswith("Refused: Gr")
    assert "line one" in reply.message and "line two" in reply.message
    assert str(reply).count("\n") == 0


def test_interpolated_reply_text_is_bounded():
    decision = run('stage data { rule r: when true reject "Body: {message.body}" }',
                   request("data", sender="a@example.org", to=["b@example.org"],
                           body="x" * 5000))
    assert decision.reply is not None
    assert 9 < len(decision.reply.message) <= 400


@pytest.mark.parametrize("let", ['"first line\\nsecond line"', '"Grüße"'])
def test_constant_text_interpolated_into_a_reply_is_made_safe(let):
    """A `let` string may hold "\\n" or non-ASCII; interpolated into a reply it must not
    reach Stalwart as is (CR/LF would inject SMTP reply lines).  Either `check` refuses
    the policy (E122) or the reply is made safe like any interpolated text."""
    text = f"""
    let note = {let}
    stage mail {{
        rule r:
            when true
            reject 550 5.7.1 "Refused: {{note}}"
    }}
    """
    result = compile_text(text)
    if result.policy_set is None:
        assert any(d.code == "E122" for d in result.diagnostics), result.diagnostics
        return
    decision = decide(result.policy_set, request("mail", sender="a@example.org"), DEMO)
    assert decision.reply is not None
    assert decision.reply.message.startswith("Refused: ")
    assert _printable_ascii(decision.reply.message), repr(decision.reply.message)


def test_header_values_never_contain_cr_or_lf():
    text = """
    let note = "one\\ntwo"
    stage data {
        rule tag:
            when true
            add_header "X-Body" message.body
            insert_header "X-Folded" header("X-Folded") at 1
            change_header "X-Note" note
            add_header "X-Mixed" "{message.body}|{note}"
            continue
        default accept
    }
    """
    decision = run(text, request(
        "data", sender="a@example.org", to=["b@example.org"],
        headers=[("X-Folded", " folded\r\n continued\r\n")],
        body="first\r\nsecond\nthird\rfourth"))
    values = [m.value for m in decision.modifications]
    assert len(values) == 4
    for value in values:
        assert "\r" not in value and "\n" not in value, repr(value)
    assert values[0].split() == ["first", "second", "third", "fourth"]
    assert values[1] == "folded continued"


# ---------------------------------------------------------------------------------------
# Lookups: laziness, memo, records

LAZY = """
stage rcpt {
    rule vip:
        when sender == "vip@example.org"
        accept
    rule unknown_list:
        when category(rcpt) == none
        reject 550 5.1.1 "No such list"
    rule closed_list:
        when category(rcpt).name == "Buchhaltung" and not is_admin(sender)
        reject 550 5.7.1 "closed"
    rule not_subscribed:
        when not subscribed(sender, category(rcpt))
        reject 550 5.7.1 "subscribe first"
    default accept
}
"""


def test_lookups_are_lazy():
    directory = CountingDirectory()
    decision = run(LAZY, request("rcpt", sender="vip@example.org",
                                 to=["info@solawi.example"]), directory)
    assert summary(decision) == ("accept", None, "vip")
    assert directory.calls == []
    assert decision.lookups == ()

    directory = CountingDirectory()
    decision = run(LAZY, request("rcpt", sender="a@example.org", to=["nope@solawi.example"]),
                   directory)
    assert summary(decision)[2] == "unknown_list"
    assert directory.calls == [("message_categories", "nope@solawi.example")]


def test_lookups_skipped_by_short_circuit_and_none_arguments():
    text = """
    stage data {
        rule r:
            when sender == "a@example.org" or is_admin(sender)
            add_header "X-Hit" "1"
            continue
        rule s:
            when category(header("X-List")) != none
            discard
        default accept
    }
    """
    directory = CountingDirectory()
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"]),
                   directory)
    assert summary(decision) == ("accept", None, "default")
    assert directory.calls == []  # `or` decided early; category(none) is not looked up


def test_lookups_are_memoised_within_a_decision():
    directory = CountingDirectory()
    decision = run(LAZY, request("rcpt", sender="peter.schmidt@web.example",
                                 to=["buchhaltung@solawi.example"]), directory)
    # category(rcpt) is used by three rules, is_admin once, subscribed once
    assert directory.count("message_categories") == 1
    assert directory.count("account") == 1
    assert directory.count("admin_identities") == 1
    assert [record.function for record in decision.lookups] == [
        "lookup(message_categories: active, email_address)", ACCOUNTS,
        "exists(admin_identities: identity)"]
    assert summary(decision) == ("reject", "550 5.7.1 closed", "closed_list")


def test_none_results_are_memoised_too():
    text = """
    stage rcpt {
        rule a: when category(rcpt) != none and sender == "x@example.org" reject
        rule b: when category(rcpt) == none reject 550 5.1.1 "unknown"
        default accept
    }
    """
    directory = CountingDirectory()
    decision = run(text, request("rcpt", sender="a@example.org", to=["nope@solawi.example"]),
                   directory)
    assert summary(decision)[2] == "b"
    assert directory.calls == [("message_categories", "nope@solawi.example")]


def test_memo_is_not_shared_between_decisions():
    directory = CountingDirectory()
    req = request("rcpt", sender="peter.schmidt@web.example", to=["info@solawi.example"])
    first = run(LAZY, req, directory)
    second = run(LAZY, req, directory)
    assert summary(first) == summary(second) == ("accept", None, "default")
    assert directory.count("message_categories") == 2
    assert directory.count("subscriptions") == 2
    # category, the sender's accounts, and the subscription
    assert len(second.lookups) == len(first.lookups) == 3


@pytest.mark.parametrize("blocking", [False, True])
def test_lookup_records(blocking):
    directory = CountingDirectory(blocking=blocking, fail={"account"})
    text = """
    stage rcpt {
        rule admin: when is_admin(sender) accept
            on error continue
        rule list: when category(rcpt) == none reject
        default accept
    }
    """
    decision = run(text, request("rcpt", sender="jane@solawi.example",
                                 to=["Info@Solawi.example"]), directory)
    assert summary(decision) == ("accept", None, "default")
    failed, found = decision.lookups
    assert isinstance(failed, LookupRecord)
    assert (failed.function, failed.args, failed.result) == (
        ACCOUNTS, ("jane@solawi.example", True), None)
    assert failed.error is not None and "account backend unreachable" in failed.error
    assert (found.function, found.args, found.error) == (
        "lookup(message_categories: active, email_address)", (True, "info@solawi.example"),
        None)
    assert found.result is not None and found.result.name == "Info"
    if blocking:
        assert found.duration_ms is not None and found.duration_ms >= 0
    else:
        assert found.duration_ms is None


@pytest.mark.parametrize("blocking", [False, True])
def test_failed_lookups_are_memoised(blocking):
    text = """
    stage rcpt {
        rule first: when is_admin(sender) accept
            on error continue
        rule second: when is_admin(sender) reject "admin"
            on error continue
        rule third: when category(rcpt) != none and is_admin(sender) reject "again"
            on error continue
        default accept
    }
    """
    directory = CountingDirectory(blocking=blocking, fail={"account"})
    decision = run(text, request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   directory)
    assert summary(decision) == ("accept", None, "default")
    assert directory.count("account") == 1
    assert [e.split(":", 1)[0] for e in decision.errors] == [
        "rule first (<policy>", "rule second (<policy>", "rule third (<policy>"]
    assert sum(1 for r in decision.lookups if r.function == ACCOUNTS) == 1


# ---------------------------------------------------------------------------------------
# Failures and fallbacks

FAILING = """
stage rcpt {
    rule vip:
        when sender == "vip@example.org"
        accept
    rule admin_bypass:
        when is_admin(sender)
        accept
        ON_ERROR
    rule known_list:
        when category(rcpt) != none
        accept
    default reject 550 5.1.1 "unknown"
}
"""


def _failing(on_error: str, settings: str = "") -> str:
    return settings + FAILING.replace("ON_ERROR", on_error)


@pytest.mark.parametrize(("on_error", "expected"), [
    ('on error reject 550 5.7.0 "Directory down"', ("reject", "550 5.7.0 Directory down")),
    ("on error accept", ("accept", None)),
    ("on error discard", ("discard", "250 2.0.0 Message queued for delivery")),
    ("on error tempfail", ("tempfail", "451 4.3.0 Temporary failure, please try again later")),
])
def test_rule_on_error_action_applies(on_error, expected):
    directory = CountingDirectory(fail={"account"})
    decision = run(_failing(on_error),
                   request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   directory)
    assert summary(decision) == (*expected, "admin_bypass")
    assert decision.fallback is True
    assert decision.cause is not None
    assert "admin_bypass" in decision.cause
    assert f"{ACCOUNTS}('a@example.org', true)" in decision.cause
    assert "account backend unreachable" in decision.cause
    assert directory.count("message_categories") == 0  # stopped at the failing rule


def test_on_error_continue_records_the_error_and_goes_on():
    directory = CountingDirectory(fail={"account"})
    decision = run(_failing("on error continue"),
                   request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   directory)
    assert summary(decision) == ("accept", None, "known_list")
    assert decision.fallback is False and decision.cause is None
    assert len(decision.errors) == 1
    assert "admin_bypass" in decision.errors[0]
    assert f"{ACCOUNTS}('a@example.org', true)" in decision.errors[0]


def test_settings_on_lookup_error_is_the_fallback():
    settings = ('settings { on_lookup_error = tempfail 452 4.4.3 "Directory busy" }\n')
    decision = run(_failing("", settings),
                   request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   CountingDirectory(fail={"account"}))
    assert summary(decision) == ("tempfail", "452 4.4.3 Directory busy", "admin_bypass")
    assert decision.fallback is True
    assert decision.cause is not None and ACCOUNTS in decision.cause


def test_built_in_fallback_is_tempfail_451_430():
    decision = run(_failing(""),
                   request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   CountingDirectory(fail={"account"}))
    assert decision.action == "tempfail"
    assert decision.reply is not None
    assert (decision.reply.status, decision.reply.enhanced) == (451, "4.3.0")
    assert decision.fallback is True
    assert decision.cause is not None
    assert decision.cause.startswith("rule admin_bypass (<policy>:")


def test_no_failure_no_fallback():
    decision = run(_failing(""), request("rcpt", sender="vip@example.org",
                                         to=["info@solawi.example"]),
                   CountingDirectory(fail={"account"}))
    assert summary(decision) == ("accept", None, "vip")
    assert decision.fallback is False and decision.errors == ()


SLOW = """
settings {
    lookup_timeout = 250ms
    deadline = 500ms
    on_lookup_error = tempfail 451 4.4.3 "Directory slow"
}
stage rcpt {
    rule admin: when is_admin(sender) accept
        ON_ERROR
    rule account_check: when account(sender) == none reject 550 5.7.1 "no account"
    rule known_list: when category(rcpt) == none reject 550 5.1.1 "no list"
    rule subscriber: when subscribed(sender, category(rcpt)) accept
        on error accept
    default reject 550 5.7.1 "not subscribed"
}
"""


def test_slow_lookup_times_out_on_a_fake_clock():
    clock = FakeClock()
    directory = CountingDirectory(blocking=True, clock=clock, delay=0.3)
    decision = decide(policy(SLOW.replace("ON_ERROR", "")),
                      request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                      directory, clock=clock)
    assert summary(decision) == ("tempfail", "451 4.4.3 Directory slow", "admin")
    assert decision.fallback is True
    assert decision.cause is not None
    assert "admin" in decision.cause and f"{ACCOUNTS}(" in decision.cause
    assert "timed out" in decision.cause
    (record,) = decision.lookups
    assert record.error is not None and "timed out" in record.error
    assert record.duration_ms == pytest.approx(300)
    assert directory.calls == [("account", "a@example.org")]


def test_timed_out_lookup_uses_the_rules_on_error():
    clock = FakeClock()
    directory = CountingDirectory(blocking=True, clock=clock, delay=0.3)
    decision = decide(policy(SLOW.replace("ON_ERROR", "on error continue")),
                      request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                      directory, clock=clock)
    # is_admin timed out (continue); account(...) is the next slow lookup
    assert decision.errors and "timed out" in decision.errors[0]
    assert decision.fallback is True
    assert decision.rule is not None and decision.rule.name == "account_check"
    assert decision.cause is not None and "lookup(account: email, is_active)(" in (
        decision.cause)


def test_lookups_under_the_timeout_and_deadline_succeed():
    clock = FakeClock()
    directory = CountingDirectory(blocking=True, clock=clock, delay=0.09)
    decision = decide(policy(SLOW.replace("ON_ERROR", "")),
                      request("rcpt", sender="peter.schmidt@web.example",
                              to=["info@solawi.example"]),
                      directory, clock=clock)
    assert summary(decision) == ("accept", None, "subscriber")
    assert decision.fallback is False
    # accounts, admin identity, account, category, subscription: 450 ms of a 500 ms deadline
    assert [r.duration_ms for r in decision.lookups] == pytest.approx([90.0] * 5)


def test_slow_lookup_times_out_on_the_real_clock():
    text = """
    settings { lookup_timeout = 20ms deadline = 1s }
    stage rcpt {
        rule admin: when is_admin(sender) accept
        default accept
    }
    """
    directory = CountingDirectory(blocking=True, sleep=0.06)
    decision = run(text, request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   directory)
    assert decision.action == "tempfail" and decision.fallback is True
    assert decision.cause is not None and "timed out" in decision.cause


def test_whole_decision_over_the_deadline_gets_the_settings_fallback():
    clock = FakeClock()
    # each lookup 200 ms: under the 250 ms timeout, but the third ends after 600 ms
    # (is_admin reads the sender's accounts and their admin identity, then account())
    directory = CountingDirectory(blocking=True, clock=clock, delay=0.2)
    decision = decide(policy(SLOW.replace("ON_ERROR", "on error accept")),
                      request("rcpt", sender="peter.schmidt@web.example",
                              to=["info@solawi.example"]),
                      directory, clock=clock)
    assert decision.action == "tempfail"
    assert decision.reply == Reply(451, "4.4.3", "Directory slow")
    assert decision.fallback is True
    assert decision.cause is not None and "deadline" in decision.cause
    # no lookup is started after the deadline passed
    assert [c[0] for c in directory.calls] == ["account", "admin_identities", "account"]


def test_deadline_without_settings_is_the_built_in_tempfail():
    text = """
    settings { lookup_timeout = 100ms deadline = 150ms }
    stage rcpt {
        rule a: when is_admin(sender) reject
        rule b: when account(sender) != none reject
        rule c: when category(rcpt) != none reject
        default accept
    }
    """
    clock = FakeClock()
    directory = CountingDirectory(blocking=True, clock=clock, delay=0.09)
    decision = decide(policy(text), request("rcpt", sender="a@example.org",
                                            to=["x@example.org"]), directory, clock=clock)
    assert decision.action == "tempfail"
    assert decision.reply is not None
    assert (decision.reply.status, decision.reply.enhanced) == (451, "4.3.0")
    assert decision.cause is not None and "deadline" in decision.cause
    assert len(directory.calls) == 2


WRONG_TYPE = """
stage rcpt {
    rule list_name:
        when category(rcpt).name == "Info"
        reject 550 5.7.1 "info"
        ON_ERROR
    rule next: when sender == "a@example.org" discard
    default accept
}
"""


def test_a_policy_bug_at_run_time_becomes_the_fallback():
    directory = CountingDirectory(returns={"message_categories": "not a category record"})
    decision = run(WRONG_TYPE.replace("ON_ERROR", ""),
                   request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   directory)
    assert decision.action == "tempfail"
    assert decision.fallback is True
    assert decision.cause is not None and "list_name" in decision.cause
    assert "AttributeError" in decision.cause


def test_a_policy_bug_with_on_error_continue_goes_on():
    directory = CountingDirectory(returns={"message_categories": 42})
    decision = run(WRONG_TYPE.replace("ON_ERROR", "on error continue"),
                   request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   directory)
    assert summary(decision) == ("discard", "250 2.0.0 Message queued for delivery", "next")
    assert len(decision.errors) == 1 and "list_name" in decision.errors[0]


@pytest.mark.parametrize("bad", [["unhashable", "list"], {"a": 1}, object()])
def test_wrong_lookup_results_never_raise_from_decide(bad):
    text = """
    stage rcpt {
        rule r:
            when not subscribed(sender, category(rcpt))
            reject 550 5.7.1 "{category(rcpt).name} is closed"
        default accept
    }
    """
    directory = CountingDirectory(returns={"message_categories": bad, "subscriptions": False})
    decision = run(text, request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   directory)
    assert decision.action == "tempfail"
    assert decision.fallback is True and decision.cause


def test_a_failing_lookup_in_a_reply_template_uses_on_error():
    text = """
    stage rcpt {
        rule r:
            when sender == "a@example.org"
            reject 550 5.7.1 "{category(rcpt).name} is closed"
            on error reject 550 5.7.1 "closed"
        default accept
    }
    """
    decision = run(text, request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   CountingDirectory(fail={"message_categories"}))
    assert summary(decision) == ("reject", "550 5.7.1 closed", "r")
    assert decision.fallback is True


# ---------------------------------------------------------------------------------------
# Errors as values in `or` / `and`


@pytest.mark.parametrize(("condition", "matched"), [
    ('is_admin(sender) or sender == "a@example.org"', True),
    ('sender == "a@example.org" or is_admin(sender)', True),
    ('is_admin(sender) or rcpt == "x@example.org" or sender ends_with "@example.org"', True),
    ('is_admin(sender) and sender == "other@example.org"', False),
    ('sender == "other@example.org" and is_admin(sender)', False),
    ('not (is_admin(sender) or sender == "a@example.org")', False),
    ('(is_admin(sender) and sender == "z@example.org") or rcpt == "x@example.org"', True),
])
def test_or_and_with_a_failing_side_and_a_deciding_side_do_not_fail(condition, matched):
    text = f"stage rcpt {{ rule r: when {condition} reject 550 5.7.1 \"hit\" default accept }}"
    decision = run(text, request("rcpt", sender="a@example.org", to=["x@example.org"]),
                   CountingDirectory(fail={"account"}))
    assert decision.fallback is False, decision.cause
    assert summary(decision) == (("reject", "550 5.7.1 hit", "r") if matched
                                 else ("accept", None, "default"))


@pytest.mark.parametrize("condition", [
    'is_admin(sender) or sender == "other@example.org"',
    'sender == "other@example.org" or is_admin(sender)',
    'is_admin(sender) and sender == "a@example.org"',
    'sender == "a@example.org" and is_admin(sender)',
])
def test_or_and_fail_when_the_other_side_does_not_decide(condition):
    text = f"stage rcpt {{ rule r: when {condition} reject 550 5.7.1 \"hit\" default accept }}"
    decision = run(text, request("rcpt", sender="a@example.org", to=["x@example.org"]),
                   CountingDirectory(fail={"account"}))
    assert decision.fallback is True
    assert decision.action == "tempfail"
    assert decision.cause is not None and f"{ACCOUNTS}(" in decision.cause


# ---------------------------------------------------------------------------------------
# Traces

TRACED = """
stage rcpt {
    rule no_1: when sender == "x@example.org" reject
    rule no_2: when sender == "y@example.org" reject
    rule dry dry_run: when true reject
    rule broken: when is_admin(sender) accept
        on error continue
    rule tag: when true log "seen" continue
    rule hit: when rcpt ends_with "@solawi.example" tempfail
    rule after: when true reject
    default accept
}
"""


def test_trace_lists_every_rule_evaluated_in_order():
    decision = run(TRACED, request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   CountingDirectory(fail={"account"}), trace=True)
    assert summary(decision)[::2] == ("tempfail", "hit")
    assert decision.trace is not None
    assert [(step.rule.name, step.outcome) for step in decision.trace] == [
        ("no_1", "no match"),
        ("no_2", "no match"),
        ("dry", "dry run"),
        ("broken", "error"),
        ("tag", "matched"),
        ("hit", "matched"),
    ]
    assert all(isinstance(step, TraceStep) for step in decision.trace)
    broken = decision.trace[3]
    assert broken.error is not None and ACCOUNTS in broken.error
    assert [step.rule.line for step in decision.trace] == [3, 4, 5, 6, 8, 9]


def test_no_trace_unless_asked():
    decision = run(TRACED, request("rcpt", sender="a@example.org", to=["info@solawi.example"]))
    assert decision.trace is None


def test_trace_walks_fused_rules_one_by_one():
    text = """
    stage mail {
        rule a: when sender ends_with "@a.example" reject
        rule b: when sender ends_with "@b.example" reject
        rule c: when sender ends_with "@c.example" reject
        rule d: when sender ends_with "@d.example" reject
        default accept
    }
    """
    compiled = policy(text).stages["mail"]
    assert len(compiled.steps) < len(compiled.rules)  # the rules are fused
    decision = run(text, request("mail", sender="u@c.example"), trace=True)
    assert decision.trace is not None
    assert [(s.rule.name, s.outcome) for s in decision.trace] == [
        ("a", "no match"), ("b", "no match"), ("c", "matched")]
    assert summary(decision)[2] == "c"


# ---------------------------------------------------------------------------------------
# Quarantine

QUARANTINE = """
settings { quarantine_to = "quarantine@solawi.example" }
stage data {
    rule tag:
        when true
        add_header "X-Tag" "tagged"
        add_recipient "archive@example.org"
        insert_header "X-Inserted" "yes" at 1
        continue
    rule fix:
        when true
        change_header "Subject" "[fixed] {subject}"
        delete_header "X-Old" at 1
        delete_recipient "other@example.org"
        change_from "bounce@example.org"
        continue
    rule spam:
        when subject contains "SPAM"
        quarantine "spam from {sender}: {message.body}"
    rule plain:
        when subject contains "PLAIN"
        quarantine
    default accept
}
"""


def test_quarantine_redirects_the_message_into_the_quarantine_mailbox():
    decision = run(QUARANTINE, request(
        "data", sender="Mallory@Example.org",
        to=["Info@Solawi.example", "gemuese@solawi.example"],
        headers=[("Subject", "SPAM offer")], body="buy\r\nnow"))
    assert decision.action == "quarantine"
    assert decision.reply is None
    assert decision.rule is not None and decision.rule.name == "spam"
    assert decision.modifications == (
        AddHeader(name="X-Tag", value="tagged"),
        InsertHeader(index=1, name="X-Inserted", value="yes"),
        ChangeHeader(index=1, name="Subject", value="[fixed] SPAM offer"),
        DeleteHeader(index=1, name="X-Old"),
        AddHeader(name="X-Komm-Quarantine", value="spam from mallory@example.org: buy  now"),
        AddHeader(name="X-Komm-Original-Recipients",
                  value="info@solawi.example, gemuese@solawi.example"),
        DeleteRecipient(value="info@solawi.example"),
        DeleteRecipient(value="gemuese@solawi.example"),
        AddRecipient(value="quarantine@solawi.example"),
    )


def test_quarantine_without_reason_has_a_default_reason():
    decision = run(QUARANTINE, request("data", sender="a@example.org", to=["b@example.org"],
                                      headers=[("Subject", "PLAIN")]))
    assert decision.action == "quarantine"
    reasons = [m.value for m in decision.modifications
               if isinstance(m, AddHeader) and m.name == "X-Komm-Quarantine"]
    assert len(reasons) == 1 and reasons[0]
    assert decision.modifications[-1] == AddRecipient(value="quarantine@solawi.example")
    assert DeleteRecipient(value="b@example.org") in decision.modifications
    assert AddRecipient(value="archive@example.org") not in decision.modifications


QUARANTINE_FALLBACK = """
settings {
    quarantine_to = "quarantine@solawi.example"
    on_lookup_error = quarantine "directory unavailable"
}
stage rcpt {
    rule rcpt_list: when category(rcpt) == none reject
    default accept
}
stage data {
    rule tag: when true add_header "X-Tag" "1" continue
    rule data_lists: when any t in envelope.to: category(t) == none reject
    default accept
}
"""


def test_settings_fallback_quarantine_becomes_tempfail_before_data():
    decision = run(QUARANTINE_FALLBACK,
                   request("rcpt", sender="a@example.org", to=["info@solawi.example"]),
                   CountingDirectory(fail={"message_categories"}))
    assert decision.action == "tempfail"
    assert decision.reply is not None
    assert (decision.reply.status, decision.reply.enhanced) == (451, "4.3.0")
    assert decision.modifications == ()
    assert decision.fallback is True


def test_settings_fallback_quarantine_at_data_quarantines():
    decision = run(QUARANTINE_FALLBACK,
                   request("data", sender="a@example.org", to=["Info@solawi.example"]),
                   CountingDirectory(fail={"message_categories"}))
    assert decision.action == "quarantine"
    assert decision.fallback is True
    assert decision.reply is None
    assert decision.modifications == (
        AddHeader(name="X-Tag", value="1"),
        AddHeader(name="X-Komm-Quarantine", value="directory unavailable"),
        AddHeader(name="X-Komm-Original-Recipients", value="info@solawi.example"),
        DeleteRecipient(value="info@solawi.example"),
        AddRecipient(value="quarantine@solawi.example"),
    )


def test_rule_on_error_quarantine_at_data():
    text = """
    settings { quarantine_to = "q@solawi.example" }
    stage data {
        rule r: when is_admin(sender) accept
            on error quarantine "could not check {sender}"
        default accept
    }
    """
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"]),
                   CountingDirectory(fail={"account"}))
    assert decision.action == "quarantine" and decision.fallback is True
    assert AddHeader(name="X-Komm-Quarantine", value="could not check a@example.org") in (
        decision.modifications)
    assert decision.modifications[-1] == AddRecipient(value="q@solawi.example")


# ---------------------------------------------------------------------------------------
# The shipped policies with the demo directory


@pytest.fixture(scope="module")
def shipped() -> PolicySet:
    from komm_policy.policyset import load_policy_set

    return load_policy_set(POLICIES)


def _shipped(shipped_set: PolicySet, req: Request, directory: Any = None) -> Decision:
    decision = decide(shipped_set, req, DEMO if directory is None else directory)
    return decision


def test_shipped_mail_loop_is_discarded(shipped):
    decision = _shipped(shipped, request(
        "data", sender="peter.schmidt@web.example", to=["info@solawi.example"],
        headers=[("X-BeenThere", "Gemuese@Solawi.Example"), ("Subject", "Re: Kartoffeln")]))
    assert summary(decision) == ("discard", "250 2.0.0 Message queued for delivery",
                                 "mail_loop")
    assert decision.modifications == ()


def test_shipped_x_beenthere_of_a_foreign_list_is_not_a_loop(shipped):
    decision = _shipped(shipped, request(
        "data", sender="peter.schmidt@web.example", to=["info@solawi.example"],
        headers=[("X-BeenThere", "users@lists.example.net"), ("Subject", "hi")]))
    assert summary(decision) == ("accept", None, "default")


def _quarantined_to(decision: Decision) -> list[str]:
    return [m.value for m in decision.modifications if isinstance(m, AddRecipient)]


def test_shipped_spam_flag_is_quarantined(shipped):
    decision = _shipped(shipped, request(
        "data", sender="peter.schmidt@web.example", to=["info@solawi.example"],
        headers=[("X-Spam-Flag", "YES"), ("Subject", "Ernte")]))
    assert summary(decision) == ("quarantine", None, "spam_flagged_upstream")
    assert _quarantined_to(decision) == ["quarantine@solawi.example"]
    assert DeleteRecipient(value="info@solawi.example") in decision.modifications
    no_flag = _shipped(shipped, request(
        "data", sender="peter.schmidt@web.example", to=["info@solawi.example"],
        headers=[("X-Spam-Flag", "NO"), ("Subject", "Ernte")]))
    assert no_flag.action == "accept"


def test_shipped_spammy_subject_is_quarantined(shipped):
    decision = _shipped(shipped, request(
        "data", sender="peter.schmidt@web.example", to=["info@solawi.example"],
        headers=[("Subject", "=?UTF-8?Q?You_are_a_LOTTERY_?=\r\n =?UTF-8?Q?winner!?=\r\n")]))
    assert summary(decision) == ("quarantine", None, "spam_subject")
    assert AddHeader(name="X-Komm-Quarantine", value="subject looks like spam") in (
        decision.modifications)
    assert _quarantined_to(decision) == ["quarantine@solawi.example"]


@pytest.mark.parametrize("list_address", [
    "info@solawi.example", "gemuese@solawi.example", "buchhaltung@solawi.example"])
def test_shipped_admin_may_post_to_any_list(shipped, list_address):
    decision = _shipped(shipped, request("rcpt", sender="jane@solawi.example",
                                         to=[list_address]))
    assert summary(decision) == ("accept", None, "default")
    assert decision.fallback is False


def test_shipped_inactive_account_may_not_post(shipped):
    # john.doe has an active subscription to Info, but his account is inactive
    decision = _shipped(shipped, request("rcpt", sender="john.doe@example.org",
                                         to=["info@solawi.example"]))
    assert summary(decision) == ("reject", "550 5.7.1 You are not allowed to post to this list",
                                 "not_allowed_to_post")


@pytest.mark.parametrize(("sender", "rcpt", "action"), [
    # the demo data stores `Anna.Mueller@gmail.com` and `Gemuese@Solawi.example`
    ("anna.mueller@gmail.com", "info@solawi.example", "accept"),
    ("Anna.Mueller@Gmail.COM", "INFO@solawi.example", "accept"),
    ("peter.schmidt@web.example", "gemuese@solawi.example", "accept"),
    ("Peter.Schmidt@Web.Example", "Gemuese@Solawi.example", "accept"),
    ("anna.mueller@gmail.com", "gemuese@solawi.example", "reject"),  # subscription inactive
])
def test_shipped_addresses_match_case_insensitively(shipped, sender, rcpt, action):
    decision = _shipped(shipped, request("rcpt", sender=sender, to=[rcpt]))
    assert decision.action == action
    assert decision.fallback is False


def test_shipped_data_tags_list_mail_with_mixed_case_category(shipped):
    decision = _shipped(shipped, request("data", sender="peter.schmidt@web.example",
                                         to=["gemuese@solawi.example"],
                                         headers=[("Subject", "Kisten")]))
    assert summary(decision) == ("accept", None, "default")
    assert decision.modifications == (AddHeader(name="X-Komm-Category", value="Gemuese"),)


@pytest.mark.parametrize(("ip", "action"), [
    ("192.0.2.66", "reject"),
    ("::ffff:192.0.2.66", "reject"),
    ("2001:db8:4860:12::7", "reject"),
    ("198.19.255.1", "reject"),
    ("203.0.113.200", "accept"),  # inactive entry
    ("127.0.0.1", "accept"),
])
def test_shipped_connect_blocks_addresses_and_ranges(shipped, ip, action):
    decision = _shipped(shipped, request("connect", ip=ip))
    assert decision.action == action


def test_shipped_directory_failure_at_data(shipped):
    directory = CountingDirectory(fail={"message_categories"})
    decision = _shipped(shipped, request(
        "data", sender="peter.schmidt@web.example", to=["info@solawi.example"],
        headers=[("X-BeenThere", "info@solawi.example"), ("Subject", "hi")]), directory)
    # mail_loop says `on error continue`; list_post_not_allowed then needs the directory
    assert decision.errors and "mail_loop" in decision.errors[0]
    assert summary(decision) == (
        "tempfail", "451 4.3.0 Directory temporarily unavailable, please try again later",
        "list_post_not_allowed")
    assert decision.fallback is True
    # the list address in X-BeenThere and the recipient are the same: asked once
    assert directory.count("message_categories") == 1
