"""What komm-policy sends back is safe (issue "What we send back is safe").

§1 addresses: an `addRecipient`, `changeFrom` or `deleteRecipient` value is one valid
address or the rule fails into its `on error` / the fallback, with the cause recorded and
nothing of it sent.  §2/§3 header values: no controls, 7-bit (RFC 2047), folded.  The
examples of the issue are here with their exact values; siblings of each kind follow.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

from komm_policy import outgoing
from komm_policy.builtins import valid_address
from komm_policy.decision import Decision
from komm_policy.demo import DEMO_TABLES
from komm_policy.policyset import PolicySet, Source, compile_sources
from komm_policy.runtime import decide
from komm_policy.wire import AddHeader, AddRecipient, ChangeFrom, DeleteRecipient

from .conftest import POLICIES
from .sent import address_problems, header_problems, read_back
from .shipped import SCHEMA
from .shipped import directory as demo_directory
from .test_checker import assert_error, assert_warning, codes, diagnostics, locate, single, where
from .test_runtime import DEMO, request, run, summary

FORWARD = """
stage data {
    rule forward:
        when header("X-Forward-To") != none
        add_recipient header("X-Forward-To")
        continue
}
"""
CHANGE_FROM = FORWARD.replace("add_recipient", "change_from").replace("forward:", "bounce:")
# The issue's header, exactly: an encoded CR/LF followed by a second SMTP command.
INJECTION = "=?us-ascii?q?kasse@solawi.example=0D=0ARCPT_TO:<x@evil.example>?="


def shipped_plus(extra: str) -> PolicySet:
    sources = [Source(p.name, p.read_text()) for p in sorted(POLICIES.glob("*.policy"))]
    result = compile_sources([*sources, Source("40-extra.policy", extra)], schema=SCHEMA)
    assert result.policy_set is not None, [str(d) for d in result.diagnostics]
    return result.policy_set


def list_mail(*headers: tuple[str, str], to: tuple[str, ...] = ("info@solawi.example",)):
    return request("data", sender="anna.mueller@gmail.com", to=to,
                   headers=[("Subject", "Ernte"), *headers])


def sent_addresses(decision: Decision) -> list[str]:
    return [m.value for m in decision.modifications
            if isinstance(m, AddRecipient | ChangeFrom | DeleteRecipient)]


# ---------------------------------------------------------------------------------------
# §1 Injection through envelope modifications


@pytest.mark.parametrize("extra", [FORWARD, CHANGE_FROM], ids=["add_recipient", "change_from"])
def test_issue_example_encoded_crlf_is_never_sent(extra: str) -> None:
    decision = decide(shipped_plus(extra), list_mail(("X-Forward-To", INJECTION)), DEMO)
    # Nothing with the injected command is sent; the rule failed into the fallback.
    assert decision.modifications == ()
    assert (decision.action, str(decision.reply)) == (
        "tempfail", "451 4.3.0 Directory temporarily unavailable, please try again later")
    assert decision.fallback is True
    assert decision.rule is not None and decision.rule.name in ("forward", "bounce")
    assert decision.cause is not None and "is not one valid address" in decision.cause
    assert "nothing was sent" in decision.cause


def test_a_clean_forward_address_is_sent() -> None:
    decision = decide(shipped_plus(FORWARD),
                      list_mail(("X-Forward-To", "kasse@solawi.example")), DEMO)
    assert decision.action == "accept"
    assert decision.modifications == (
        AddHeader(name="X-Komm-Category", value="Info"),
        AddRecipient(value="kasse@solawi.example"))


def test_on_error_continue_drops_only_the_unsafe_rule() -> None:
    text = FORWARD.replace("continue\n}", "continue\n        on error continue\n}")
    decision = decide(shipped_plus(text), list_mail(("X-Forward-To", INJECTION)), DEMO)
    assert decision.action == "accept"
    assert decision.modifications == (AddHeader(name="X-Komm-Category", value="Info"),)
    assert len(decision.errors) == 1 and "add_recipient" in decision.errors[0]


UNSAFE = [
    "kasse@solawi.example\r\nRCPT TO:<x@evil.example>",
    "kasse@solawi.example\nRCPT TO:<x@evil.example>",
    "kasse@solawi.example\rRCPT TO:<x@evil.example>",
    "kasse@solawi.example\x00",
    "kas\x1bse@solawi.example",
    "kasse@solawi.example\x7f",
    "kasse@solawi.example, x@evil.example,",
    "kasse@solawi.example\tx@evil.example",
    "kasse@solawi.example> NOTIFY=NEVER",
    "<kasse@solawi.example>",
    "kasse",
    "",
    "@solawi.example",
    "kasse@",
    "a" * 65 + "@solawi.example",
]


@pytest.mark.parametrize("kind", ["add_recipient", "change_from", "delete_recipient"])
@pytest.mark.parametrize("value", UNSAFE)
def test_unsafe_addresses_fail_the_rule(kind: str, value: str) -> None:
    text = f"""
    stage data {{
        rule mod: when true {kind} message.body continue on error reject 550 5.7.0 "no"
        default accept
    }}"""
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"],
                                 body=value))
    assert decision.modifications == ()
    assert str(decision.reply) == "550 5.7.0 no"
    assert decision.cause is not None and kind in decision.cause


@pytest.mark.parametrize("kind", ["add_recipient", "change_from", "delete_recipient"])
def test_absent_header_is_no_address(kind: str) -> None:
    """`none` is empty text: an unguarded rule on a message without the header fails."""
    text = f"""
    stage data {{
        rule mod: when true {kind} header("X-Absent") continue on error continue
        default accept
    }}"""
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"]))
    assert decision.action == "accept" and decision.modifications == ()
    assert len(decision.errors) == 1


@pytest.mark.parametrize("value", [" Kasse@Solawi.example ", "kasse@solawi.example\r\n",
                                   "\ta@bücher.example", "a@xn--bcher-kva.example"])
def test_valid_addresses_are_sent_trimmed(value: str) -> None:
    text = """
    stage data {
        rule mod: when true add_recipient message.body change_from message.body continue
        default accept
    }"""
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"],
                                 body=value))
    trimmed = value.strip(" \t\r\n")
    assert sent_addresses(decision) == [trimmed, trimmed]
    assert all(address_problems(a) == [] for a in sent_addresses(decision))


@pytest.mark.parametrize("value", ["odd user@example.org", "a@b@example.org", "a@localhost",
                                   "kasse@solawi.example x@evil.example",
                                   "kasse@solawi.example, x@evil.example",
                                   "a@[192.0.2.1]", "a@[999.0.2.1]", "ü@example.org"])
def test_what_is_sent_is_exactly_what_valid_address_accepts(value: str) -> None:
    """The rule is `valid_address`'s, not a second copy of it."""
    text = """
    stage data {
        rule mod: when true add_recipient message.body continue on error continue
        default accept
    }"""
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"],
                                 body=value))
    assert sent_addresses(decision) == ([value] if valid_address(value) else [])


def test_delete_recipient_may_name_an_envelope_recipient_even_the_bare_postmaster() -> None:
    text = """
    stage data {
        rule mod: when true delete_recipient envelope.to[0] continue
        default accept
    }"""
    decision = run(text, request("data", sender="a@example.org", to=["", "b@example.org"]))
    assert decision.modifications == (DeleteRecipient(value=""),)


def test_quarantine_removes_the_bare_postmaster_recipient_too() -> None:
    text = """
    settings { quarantine_to = "quarantine@solawi.example" }
    stage data { default quarantine "held" }"""
    decision = run(text, request("data", sender="a@example.org", to=["", "b@example.org"]))
    assert decision.action == "quarantine"
    assert sent_addresses(decision) == ["", "b@example.org", "quarantine@solawi.example"]


def test_deleted_recipients_are_named_as_stalwart_stored_them() -> None:
    """Policies see A-label domains, but Stalwart removes a recipient only when the value
    equals its stored, lower-cased address: an IDN recipient of a quarantined message must
    be named as it arrived, or the message would still reach it (regression: it was sent
    as `anna@xn--bcher-kva.example`)."""
    text = """
    settings { quarantine_to = "quarantine@solawi.example" }
    stage data { default quarantine "held" }"""
    decision = run(text, request("data", sender="a@example.org",
                                 to=["Anna@Bücher.example", "b@example.org", "\u00b2"]))
    assert sent_addresses(decision) == ["anna@bücher.example", "b@example.org", "\u00b2",
                                        "quarantine@solawi.example"]
    one = """
    stage data {
        rule mod: when true delete_recipient envelope.to[0] continue
        default accept
    }"""
    decision = run(one, request("data", sender="a@example.org", to=["Anna@Bücher.example"]))
    assert decision.modifications == (DeleteRecipient(value="anna@bücher.example"),)


QUARANTINE_ALL = """
settings {{ quarantine_to = "quarantine@solawi.example" }}
stage data {{
    rule hold: when true quarantine "held" {on_error}
    default accept
}}"""


@pytest.mark.parametrize(("on_error", "expected"), [
    ("", ("tempfail", "451 4.3.0 Directory unavailable, please try again later")),
    ('on error reject 550 5.7.1 "held"', ("reject", "550 5.7.1 held")),
    ("on error quarantine", ("tempfail", "451 4.3.0 Temporary failure, please try again later")),
])
def test_quarantine_that_cannot_remove_a_recipient_fails(on_error, expected) -> None:
    """A recipient with a control character (a dequoted local part can hold one, wire
    reference §12) cannot be named in a deleteRecipient: the message must not reach it, so
    the quarantine fails into the rule's `on error`, or tempfail."""
    decision = run(QUARANTINE_ALL.format(on_error=on_error),
                   request("data", sender="a@example.org", to=["b\x1b@example.org"]))
    assert (decision.action, str(decision.reply)) == expected
    assert decision.modifications == ()
    assert decision.cause is not None and "delete_recipient" in decision.cause


def test_modifications_are_built_only_in_outgoing() -> None:
    """The one place: no other module constructs a modification."""
    names = {"AddHeader", "InsertHeader", "ChangeHeader", "DeleteHeader", "ChangeFrom",
             "AddRecipient", "DeleteRecipient", "ReplaceContents"}
    package = Path(outgoing.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.name in ("outgoing.py", "wire.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in names):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


# ---------------------------------------------------------------------------------------
# §2 Control characters in header values


def test_issue_example_helo_with_nul_and_esc() -> None:
    text = 'stage data { rule r: when true add_header "X-HELO" client.helo continue }'
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"],
                                 helo="mx\u0000\u001b.sender.example"))
    assert decision.modifications == (AddHeader(name="X-HELO", value="mx??.sender.example"),)


@pytest.mark.parametrize(("raw_text", "sent"), [
    ("a\x00b", "a?b"), ("a\x07b", "a?b"), ("a\x7fb", "a?b"), ("a\x85b", "a?b"),
    ("a\tb", "a\tb"), ("a\rb", "a b"), ("a\nb", "a b"), ("a\r\nb", "a  b"),
    ("a\r\nX-Evil: 1", "a  X-Evil: 1"), ("\r\n", ""), ("\x1b[31mred", "?[31mred"),
])
def test_header_value_controls(raw_text: str, sent: str) -> None:
    assert outgoing.header_value(raw_text, "X-Test") == sent


def test_quarantine_headers_carry_no_controls() -> None:
    text = """
    settings { quarantine_to = "quarantine@solawi.example" }
    stage data { rule hold: when true quarantine "held for {client.helo}" }"""
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"],
                                 helo="mx\u0000\u001b.sender.example"))
    headers = {m.name: m.value for m in decision.modifications if isinstance(m, AddHeader)}
    assert headers["X-Komm-Quarantine"] == "held for mx??.sender.example"
    for name, value in headers.items():
        assert header_problems(name, value) == []


# ---------------------------------------------------------------------------------------
# §3 Line limits and 7-bit


def test_issue_example_category_with_umlaut_is_encoded() -> None:
    value = outgoing.header_value("Gemüse & Obst", "X-Komm-Category")
    assert value == "=?utf-8?q?Gem=C3=BCse?= & Obst"
    assert read_back(value) == "Gemüse & Obst"


def test_issue_example_quarantine_of_100_recipients_is_folded_in_full() -> None:
    recipients = [f"mitglied{i:03d}@solawi.example" for i in range(100)]
    text = """
    settings { quarantine_to = "quarantine@solawi.example" }
    stage data { default quarantine }"""
    decision = run(text, request("data", sender="a@example.org", to=recipients))
    (value,) = [m.value for m in decision.modifications
                if isinstance(m, AddHeader) and m.name == "X-Komm-Original-Recipients"]
    assert header_problems("X-Komm-Original-Recipients", value) == []
    lines = f"X-Komm-Original-Recipients: {value}".split("\r\n")
    assert max(len(line) for line in lines) <= 78
    assert read_back(value) == ", ".join(recipients)


def test_long_templated_subject_is_folded_below_998() -> None:
    subject = "Ernteanteile " * 200 + "x" * 3000
    text = 'stage data { rule r: when true change_header "Subject" "[extern] {subject}" continue }'
    decision = run(text, request("data", sender="a@example.org", to=["b@example.org"],
                                 headers=[("Subject", subject)]))
    (mod,) = decision.modifications
    assert header_problems("Subject", mod.value) == []
    assert read_back(mod.value) == "[extern] " + subject.strip()


@pytest.mark.parametrize("value", [
    "Grüße aus Köln", "Grüße  Grüße", "日本語のテキスト " * 40, "x =?utf-8?q?a?= y",
    "=?utf-8?q?kasse=0D=0A?=", "a" * 5000, "ü" * 3000, "a " * 3000, "Jürgen <j@example.org>",
])
def test_header_values_read_back_as_written(value: str) -> None:
    sent = outgoing.header_value(value, "X-Test")
    assert header_problems("X-Test", sent) == []
    assert read_back(sent) == value.strip()


def test_long_whitespace_runs_become_one_space() -> None:
    sent = outgoing.header_value("a" + " " * 5000 + "b", "X-Test")
    assert sent == "a b"


def test_header_value_time_is_linear() -> None:
    def timed(n: int) -> float:
        value = ("wort ü " * n)[:n] + "x" * n
        start = time.perf_counter()
        outgoing.header_value(value, "X-Test")
        return time.perf_counter() - start
    small, large = min(timed(20_000) for _ in range(3)), min(timed(200_000) for _ in range(3))
    assert large < small * 10 * 3  # ten times the text, well under 30 times the time


# ---------------------------------------------------------------------------------------
# `check`: W210 (unguarded address from data), E125 (constant that is no address), E123


def _rule(condition: str, statement: str, extra: str = "") -> str:
    return (f"stage data {{\n    rule r:\n        when {condition}\n        {statement}\n"
            f"        continue{extra}\n    default accept\n}}\n")


@pytest.mark.parametrize("kind", ["add_recipient", "change_from", "delete_recipient"])
@pytest.mark.parametrize("value", ['header("X-Forward-To")', "sender", "envelope.to[0]",
                                   "lower(message.body)", 'account(sender).email',
                                   '"{local_part(sender)}@example.org"'])
def test_w209_unguarded_address_from_data(kind: str, value: str) -> None:
    text = _rule('header("X-Forward-To") != none', f"{kind} {value}")
    d = single(diagnostics(text), "W210")
    assert_warning(d, "W210")
    assert where(d) == locate(text, value, after=kind)
    assert kind in d.message and d.hint is not None and "valid_address" in d.hint


@pytest.mark.parametrize(("condition", "extra"), [
    ('valid_address(header("X-Forward-To"))', ""),
    ('header("X-Forward-To") != none and valid_address(header("X-Forward-To"))', ""),
    ('true and (valid_address(header("X-Forward-To")) and true)', ""),
    ("true", "\n        on error continue"),
    ("true", '\n        on error tempfail 451 4.3.0 "later"'),
])
def test_w209_guarded_or_handled_is_quiet(condition: str, extra: str) -> None:
    text = _rule(condition, 'add_recipient header("X-Forward-To")', extra)
    assert codes(diagnostics(text)) == []


@pytest.mark.parametrize("condition", [
    'valid_address(header("X-Other"))', 'valid_address(header("X-Forward-To")) or true',
    'not valid_address(header("X-Forward-To"))',
])
def test_w209_a_guard_on_something_else_is_no_guard(condition: str) -> None:
    text = _rule(condition, 'add_recipient header("X-Forward-To")')
    assert codes(diagnostics(text)) == ["W210"]


def test_w209_constants_and_lets_are_not_request_data() -> None:
    text = 'let archive = "archiv@solawi.example"\n' + _rule(
        "true", "add_recipient archive change_from \"bounce@solawi.example\"")
    assert codes(diagnostics(text)) == []


@pytest.mark.parametrize("statement", ['add_recipient "archiv"', 'change_from "a@b@"',
                                       'delete_recipient "x\\ny@example.org"',
                                       'add_recipient "a@example.org,"'])
def test_e125_constant_that_is_no_address(statement: str) -> None:
    text = _rule("true", statement)
    d = single(diagnostics(text), "E125")
    assert_error(d, "E125")
    literal = statement.split(" ", 1)[1]
    assert where(d) == locate(text, literal)


def test_e125_allows_deleting_the_bare_postmaster() -> None:
    assert codes(diagnostics(_rule("true", 'delete_recipient ""'))) == []


def test_e123_header_name_too_long_to_fold() -> None:
    name = "X-" + "a" * 75
    text = _rule("true", f'add_header "{name}" "1"')
    d = single(diagnostics(text), "E123")
    assert "77 characters" in d.message
    assert codes(diagnostics(_rule("true", f'add_header "{name[:76]}" "1"'))) == []


# ---------------------------------------------------------------------------------------
# §4 bullet 2: the bare Postmaster recipient


@pytest.mark.parametrize(("to", "expected"), [
    ([""], ("accept", None, "postmaster")),
    (["info@solawi.example", ""], ("accept", None, "postmaster")),
    (["postmaster@solawi.example"], ("accept", None, "role_mailbox")),
    (["nobody@solawi.example"], ("reject", "550 5.1.1 No such mailing list", "unknown_list")),
])
def test_shipped_policy_accepts_the_bare_postmaster(to, expected) -> None:
    shipped = shipped_plus("")
    decision = decide(shipped, request("rcpt", sender="stranger@example.net", to=to), DEMO)
    assert summary(decision) == expected


# ---------------------------------------------------------------------------------------
# §4 bullet 3: the guard for copying a header that may be present but blank

COPY_MARK = """
stage data {{
    rule copy_mark:
        when {guard}
        change_header "X-Foo" header("X-Mark")
        continue
    default accept
}}"""


@pytest.mark.parametrize(("guard", "mark", "expected"), [
    # the issue's example: `!= none` still sends an empty value, which deletes X-Foo
    ('header("X-Mark") != none', " \r\n", [("X-Foo", "")]),
    ('header("X-Mark") != none', None, []),
    # the documented guards: nothing is sent for a blank or absent X-Mark
    ('len(header("X-Mark")) > 0', " \r\n", []),
    ('len(header("X-Mark")) > 0', None, []),
    ('len(header("X-Mark")) > 0', " marked\r\n", [("X-Foo", "marked")]),
    ('header("X-Mark") != none and header("X-Mark") != ""', " \t \r\n", []),
    ('header("X-Mark") != none and header("X-Mark") != ""', None, []),
    ('header("X-Mark") != none and header("X-Mark") != ""', " marked\r\n",
     [("X-Foo", "marked")]),
])
def test_guard_for_a_blank_header(guard: str, mark: str | None, expected) -> None:
    headers = [("X-Foo", "old")] + ([("X-Mark", mark)] if mark is not None else [])
    decision = run(COPY_MARK.format(guard=guard),
                   request("data", sender="a@example.org", to=["b@example.org"],
                           headers=headers))
    assert [(m.name, m.value) for m in decision.modifications] == expected


def test_issue_example_shipped_category_header_is_7bit() -> None:
    """The shipped `tag_list_mail` rule with a category named `Gemüse & Obst`."""
    categories = tuple({**c, "name": "Gemüse & Obst"} if c["id"] == 2 else c
                       for c in DEMO_TABLES["message_categories"])
    directory = demo_directory({**DEMO_TABLES, "message_categories": categories})
    decision = decide(shipped_plus(""), request(
        "data", sender="peter.schmidt@web.example", to=["gemuese@solawi.example"],
        headers=[("Subject", "Ernte")]), directory)
    assert decision.action == "accept"
    assert decision.modifications == (
        AddHeader(name="X-Komm-Category", value="=?utf-8?q?Gem=C3=BCse?= & Obst"),)


def test_quarantine_of_many_idn_recipients_stays_cheap() -> None:
    """Every recipient is named as Stalwart sent it, without normalising each recipient
    once per recipient (that was 3.8 s for 400 IDN recipients)."""
    recipients = [f"m{i}@bücher{i}.example" for i in range(400)]
    text = """
    settings { quarantine_to = "quarantine@solawi.example" }
    stage data { default quarantine }"""
    start = time.thread_time()  # CPU time: other processes' load does not count
    decision = run(text, request("data", sender="a@example.org", to=recipients))
    elapsed = time.thread_time() - start
    assert sent_addresses(decision) == [*recipients, "quarantine@solawi.example"]
    assert elapsed < 1.0, elapsed
