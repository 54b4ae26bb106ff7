"""The compiler's closures: every operator (with none, addresses, IPs), quantifiers,
indexing, header decoding, built-ins, constant folding and rule fusion.

Each condition is compiled into a one-rule probe policy and judged against a Stalwart-shaped
request (helpers from `test_runtime`); fusion is checked against the unfused rules that
`decide(..., trace=True)` walks, by example and as a hypothesis property.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from komm_policy.policyset import compile_text
from komm_policy.runtime import decide
from komm_policy.wire import decode_request

from .sent import read_back
from .test_runtime import DEMO, CountingDirectory, policy, request, run, summary

PROBE = 'stage {stage} {{ rule probe: when {condition} reject 550 5.7.1 "probe" default accept }}'

DEFAULTS: dict[str, dict[str, Any]] = {
    "connect": {},
    "ehlo": {},
    "mail": {"sender": "alice@example.org"},
    "rcpt": {"sender": "alice@example.org", "to": ["info@solawi.example"]},
    "data": {
        "sender": "alice@example.org",
        "to": ["info@solawi.example", "gemuese@solawi.example"],
        "headers": [("Subject", "Hello World"), ("X-Tag", "a"), ("x-tag", "b"),
                    ("Received", "first"), ("Received", "second")],
        "size": 5000,
    },
}


def holds(condition: str, stage: str = "data", lets: str = "", directory: Any = None,
          **overrides: Any) -> bool:
    """Does `condition` hold for a request of `stage` (DEFAULTS, with overrides)?"""
    text = lets + "\n" + PROBE.format(stage=stage, condition=condition)
    decision = run(text, request(stage, **{**DEFAULTS[stage], **overrides}), directory)
    assert decision.fallback is False, decision.cause
    assert decision.errors == ()
    return decision.action == "reject"


# ---------------------------------------------------------------------------------------
# Comparison operators


@pytest.mark.parametrize(("condition", "expected"), [
    ('subject == "Hello World"', True),
    ('subject == "hello world"', False),  # plain text is case-sensitive
    ('subject != "Hello World"', False),
    ('subject != "Hello"', True),
    ("client.port == 1234", True),
    ("client.port != 1234", False),
    ("client.port < 1235", True),
    ("client.port < 1234", False),
    ("client.port <= 1234", True),
    ("client.port <= 1233", False),
    ("client.port > 1233", True),
    ("client.port > 1234", False),
    ("client.port >= 1234", True),
    ("client.port >= 1235", False),
    ("message.size > 4KB", True),
    ("message.size < 1MB", True),
    ("message.size >= 5001", False),
    ("len(envelope.to) == 2", True),
    ("len(envelope.to) > 2", False),
    ('subject in ["x", "Hello World"]', True),
    ('subject in ["x", "hello world"]', False),
    ('subject not in ["Hello World"]', False),
    ('subject not in ["x"]', True),
    ("client.port in [25, 1234]", True),
    ("client.port not in [25, 587]", True),
    ('"a" in []', False),
    ("subject matches /^Hello/", True),
    ("subject matches /^World/", False),
    ("subject matches /(?i)hello WORLD/", True),
    ("not (subject matches /^World/)", True),
    ('subject contains "lo Wo"', True),
    ('subject contains "xyz"', False),
    ('not (subject contains "xyz")', True),
    ('subject starts_with "Hell"', True),
    ('subject starts_with "World"', False),
    ('subject ends_with "World"', True),
    ('subject ends_with "Hello"', False),
    ('headers("X-Tag") contains "b"', True),
    ('headers("X-Tag") contains "c"', False),
    ('queue.id == "482806d63a41001"', True),
    ('message.body == ""', True),
    ('stage == "data"', True),
    ('server.name starts_with "Stalwart v"', True),
    ("tls.version == none and sasl.login == none", True),
])
def test_comparison_operators(condition, expected):
    assert holds(condition) is expected


@pytest.mark.parametrize(("condition", "expected"), [
    ("subject == none", True),
    ("subject != none", False),
    ('subject == "x"', False),
    ('subject != "x"', True),
    ("subject matches /.*/", False),
    ('subject contains ""', False),
    ('subject starts_with ""', False),
    ('subject ends_with ""', False),
    ('subject in ["x", ""]', False),
    ("len(subject) == 0", True),
    ("lower(subject) == none", True),
    ('valid_address(header("Reply-To"))', False),
    ('header("X-Missing") == none', True),
    ('len(headers("X-Missing")) == 0', True),
    ("category(header(\"X-List\")) == none", True),
])
def test_an_absent_optional_value_makes_comparisons_false(condition, expected):
    assert holds(condition, headers=[("X-Other", "1")]) is expected


@pytest.mark.parametrize(("condition", "expected"), [
    ("category(rcpt).id > 0", False),
    ("category(rcpt).id <= 100", False),
    ('category(rcpt).name == "Info"', False),
    ('category(rcpt).name starts_with "I"', False),
    ("category(rcpt) == none", True),
])
def test_none_from_a_lookup_record(condition, expected):
    assert holds(condition, stage="rcpt", to=["nope@solawi.example"]) is expected
    # and the same conditions on a known list
    if condition != "category(rcpt) == none":
        assert holds(condition, stage="rcpt", to=["info@solawi.example"]) is True


@pytest.mark.parametrize(("condition", "expected"), [
    ('sender == "Alice@Example.ORG"', True),
    ('"ALICE@example.org" == sender', True),
    ('sender != "Alice@Example.ORG"', False),
    ('envelope.from == "ALICE@EXAMPLE.ORG"', True),
    ('rcpt == "Info@Solawi.Example"', True),
    ('rcpt in ["INFO@SOLAWI.EXAMPLE"]', True),
    ('rcpt not in ["INFO@SOLAWI.EXAMPLE"]', False),
    ('sender ends_with "@EXAMPLE.ORG"', True),
    ('sender starts_with "ALICE@"', True),
    ('sender contains "@Example"', True),
    ('domain(sender) == "EXAMPLE.ORG"', True),
    ('domain(rcpt) in ["Solawi.Example"]', True),
    ('"INFO@SOLAWI.EXAMPLE" in envelope.to', True),
    ('any r in envelope.to: r == "INFO@SOLAWI.EXAMPLE"', True),
    ('category(rcpt).email_address == "Info@Solawi.Example"', True),
    ('envelope.to contains "INFO@SOLAWI.EXAMPLE"', True),
])
def test_address_comparisons_are_case_insensitive(condition, expected):
    assert holds(condition, stage="rcpt") is expected


def test_address_comparisons_with_a_let_list():
    lets = 'let lists = ["INFO@Solawi.Example", "gemuese@solawi.example"]'
    assert holds("rcpt in lists", stage="rcpt", lets=lets) is True
    assert holds("rcpt in lists", stage="rcpt", lets=lets,
                 to=["buchhaltung@solawi.example"]) is False


def test_mixed_case_envelope_addresses_are_lower_cased():
    assert holds('sender == "alice@example.org" and rcpt == "info@solawi.example"',
                 stage="rcpt", sender="Alice@Example.ORG", to=["INFO@Solawi.example"])


def test_addresses_against_header_text_are_case_insensitive():
    headers = [("Reply-To", "Alice@Example.ORG"), ("X-Lists", "INFO@SOLAWI.EXAMPLE")]
    assert holds('sender == header("Reply-To")', headers=headers)
    assert holds('any t in envelope.to: t in headers("X-Lists")', headers=headers)
    assert not holds('sender == header("X-Lists")', headers=headers)


@pytest.mark.parametrize(("condition", "overrides"), [
    ('envelope.to == ["info@solawi.example"]', {"stage": "rcpt"}),
    ('envelope.to == ["INFO@SOLAWI.EXAMPLE"]', {"stage": "rcpt"}),
    ('headers("X-Tag") == ["a", "b"]', {}),
    ('headers("X-Missing") == []', {}),
])
def test_list_equality_with_a_list_literal(condition, overrides):
    assert holds(condition, **overrides) is True
    assert holds(f"not ({condition})", **overrides) is False


# ---------------------------------------------------------------------------------------
# IP addresses and networks


@pytest.mark.parametrize(("ip", "condition", "expected"), [
    ("10.1.2.3", "client.ip in [10.0.0.0/8, 2001:db8::/32]", True),
    ("2001:db8::5", "client.ip in [10.0.0.0/8, 2001:db8::/32]", True),
    ("2001:db9::5", "client.ip in [10.0.0.0/8, 2001:db8::/32]", False),
    ("11.0.0.1", "client.ip in [10.0.0.0/8, 2001:db8::/32]", False),
    ("::ffff:10.1.2.3", "client.ip in [10.0.0.0/8]", True),
    ("10.1.2.3", "client.ip in ::ffff:10.0.0.0/104", True),
    ("10.1.2.3", "client.ip in 10.0.0.0/8", True),
    ("11.1.2.3", "client.ip in 10.0.0.0/8", False),
    ("11.1.2.3", "client.ip not in [10.0.0.0/8]", True),
    ("10.1.2.3", "client.ip not in [10.0.0.0/8]", False),
    ("2001:0DB8:0:0::1", "client.ip == 2001:db8::1", True),
    ("2001:db8::2", "client.ip == 2001:db8::1", False),
    ("192.0.2.10", "client.ip == ::ffff:192.0.2.10", True),
    ("::ffff:192.0.2.10", "client.ip == 192.0.2.10", True),
    ("192.0.2.10", "client.ip != 192.0.2.10", False),
    ("192.0.2.10", "client.ip in [192.0.2.10, 198.51.100.0/24]", True),
    ("198.51.100.99", "client.ip in [192.0.2.10, 198.51.100.0/24]", True),
    ("198.51.101.1", "client.ip in [192.0.2.10, 198.51.100.0/24]", False),
    ("::1", "client.ip in [127.0.0.0/8, ::1/128]", True),
    ("127.8.9.10", "client.ip in [127.0.0.0/8, ::1/128]", True),
    ("2001:db8::1", "client.ip in [0.0.0.0/0]", False),
    ("192.0.2.10", "server.ip in [203.0.113.0/24]", True),
    ("192.0.2.10", "ip_blocked(client.ip)", False),
    ("::ffff:192.0.2.66", "ip_blocked(client.ip)", True),
    ("2001:db8:4860::1", "ip_blocked(client.ip)", True),
])
def test_ip_membership(ip, condition, expected):
    assert holds(condition, stage="connect", ip=ip) is expected


def test_ip_membership_with_a_let():
    lets = "let trusted = [127.0.0.0/8, ::1/128, 10.0.0.0/8]"
    assert holds("client.ip in trusted", stage="connect", ip="10.9.8.7", lets=lets)
    assert not holds("client.ip in trusted", stage="connect", ip="192.0.2.1", lets=lets)


# ---------------------------------------------------------------------------------------
# Quantifiers and indexing


@pytest.mark.parametrize(("condition", "expected"), [
    ("any x in []: true", False),
    ("all x in []: false", True),
    ('any x in headers("X-Missing"): true', False),
    ('all x in headers("X-Missing"): false', True),
    ('any r in envelope.to: r ends_with "@solawi.example"', True),
    ('all r in envelope.to: r ends_with "@solawi.example"', True),
    ('all r in envelope.to: r starts_with "info@"', False),
    ('any r in envelope.to: r == "nobody@solawi.example"', False),
    ('not any h in headers("X-Tag"): h == "c"', True),
    ('any a in envelope.to: any b in ["x", "GEMUESE@solawi.example"]: a == b', True),
    ('all a in envelope.to: any b in ["x", "GEMUESE@solawi.example"]: a == b', False),
    ('all a in envelope.to: any b in ["info@solawi.example", "gemuese@solawi.example"]: '
     'a == b', True),
    # the outer variable keeps its value while an inner quantifier runs
    ('any a in envelope.to: (any b in ["p", "q"]: b == "q") and a == "gemuese@solawi.example"',
     True),
    ('any a in envelope.to: (all b in headers("X-Tag"): b != a) and a == "info@solawi.example"',
     True),
    ("any r in envelope.to: category(r).name == \"Gemuese\"", True),
    ("all r in envelope.to: category(r) != none", True),
])
def test_quantifiers(condition, expected):
    assert holds(condition) is expected


def test_a_let_quantifier_does_not_disturb_a_rule_quantifier():
    lets = 'let has_c = any y in ["b", "c"]: y == "c"'
    assert holds("has_c", lets=lets)
    assert holds('any x in envelope.to: has_c and x == "info@solawi.example"', lets=lets)
    assert holds('any x in envelope.to: x == "gemuese@solawi.example" and has_c', lets=lets)


@pytest.mark.parametrize(("condition", "expected"), [
    ('envelope.to[0] == "a@example.org"', True),
    ('envelope.to[1] == "b@example.org"', True),
    ('envelope.to[-1] == "c@example.org"', True),
    ('envelope.to[-3] == "a@example.org"', True),
    ("envelope.to[-4] == none", True),
    ("envelope.to[3] == none", True),
    ("envelope.to[99] == none", True),
    ("category(envelope.to[5]) == none", True),
    ('["x", "y"][-1] == "y"', True),
    ('["x"][1] == none', True),
])
def test_indexing(condition, expected):
    assert holds(condition, stage="rcpt",
                 to=["a@example.org", "b@example.org", "c@example.org"]) is expected


def test_indexing_headers():
    assert holds('headers("Received")[0] == "first"')
    assert holds('headers("Received")[-1] == "second"')
    assert holds('headers("Received")[2] == none')
    assert holds('headers("X-Missing")[0] == none')


# ---------------------------------------------------------------------------------------
# Header decoding


def test_subject_of_a_stalwart_payload_is_unfolded_and_decoded(stalwart_fixtures):
    req = decode_request(stalwart_fixtures["derived-data-4"])
    text = """
    stage data {
        rule show:
            when true
            add_header "X-Subject" subject
            add_header "X-From" header("FROM")
            add_header "X-Type" header("content-type")
            continue
        default accept
    }
    """
    decision = decide(policy(text), req, DEMO)
    subject, from_, content_type = (m.value for m in decision.modifications)
    assert read_back(subject) == "Beleg für die Vorauszahlung (August)"
    # fields come back as sent, unfolded, encoded words decoded in the phrase only
    assert "Peter Schmidt" in from_ and from_.endswith("<peter.schmidt@web.example>")
    assert content_type.startswith("text/plain;") and "utf-8" in content_type
    assert "\r" not in from_ + content_type and "\n" not in from_ + content_type


HEADERS = [
    ("Subject", " =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus\r\n =?utf-8?b?S8O2bG4=?=\r\n"),
    ("X-Folded", " first\r\n\tsecond\r\n third\r\n"),
    ("X-Bare-LF", " one\n two\n"),
    ("X-Multi", " one\r\n"),
    ("x-multi", "  two  \r\n"),
    ("X-MULTI", " =?iso-8859-1?q?dr=E8i?=\r\n"),
    ("From", " =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\n"),
    ("X-Empty", " \r\n"),
    ("X-Spam-Flag", " YES\r\n"),
]


@pytest.mark.parametrize(("condition", "expected"), [
    ('subject == "Grüße aus Köln"', True),
    ('header("SUBJECT") == "Grüße aus Köln"', True),
    ('header("x-folded") == "first second third"', True),  # a fold reads as one space
    ('header("X-Bare-LF") == "one two"', True),
    ('header("x-multi") == "one"', True),
    ('headers("X-Multi")[1] == "two"', True),
    ('len(headers("x-MULTI")) == 3', True),
    ('headers("x-multi")[2] == "drèi"', True),
    ('header("From") == "Jürgen <j@example.org>"', True),
    ('header("X-Empty") == ""', True),
    ('header("X-Empty") != none', True),
    ('header("X-Spam-Flag") matches /(?i)\\A\\s*yes/', True),
    ('header("X-Absent") == none', True),
    ('subject contains "\r"', False),
])
def test_header_decoding(condition, expected):
    assert holds(condition, headers=HEADERS) is expected


# ---------------------------------------------------------------------------------------
# Built-in functions


@pytest.mark.parametrize("condition", [
    'len("abc") == 3',
    'len("") == 0',
    "len(envelope.to) == 2",
    'len(headers("X-Tag")) == 2',
    "len(subject) == 11",
    'len(header("X-Missing")) == 0',
    'domain(sender) == "example.org"',
    'domain("Bob@Sub.Example.NET") == "sub.example.net"',
    'domain("a@b@Example.net") == "example.net"',
    'domain("no-at-sign") == ""',
    'local_part(sender) == "alice"',
    'local_part("First.Last@example.org") == "First.Last"',
    'local_part("a@b@example.org") == "a@b"',
    'local_part("no-at-sign") == "no-at-sign"',
    "valid_address(sender)",
    'valid_address("user@[192.0.2.1]")',
    'valid_address("o\'brien+tag@sub.example.co")',
    'not valid_address("no-at-sign")',
    'not valid_address("a@b")',
    'valid_address("a b@example.org")',  # dequoted "a b"@example.org, as Stalwart sends it
    'not valid_address("")',
    'not valid_address("@example.org")',
    'lower("ÄBC Def") == "äbc def"',
    'upper(subject) == "HELLO WORLD"',
    'lower(subject) == "hello world"',
    'upper(header("X-Missing")) == none',
])
def test_builtins(condition):
    assert holds(condition) is True
    assert holds(f"not ({condition})") is False


# ---------------------------------------------------------------------------------------
# Constant folding


def test_constant_condition_is_always_true():
    text = 'stage mail { rule always: when 1 == 1 reject 550 5.7.1 "always" default accept }'
    for sender in ("a@example.org", "", "x@y.example"):
        assert summary(run(text, request("mail", sender=sender))) == (
            "reject", "550 5.7.1 always", "always")
    never = 'stage mail { rule never: when 1 == 2 reject default discard }'
    assert summary(run(never, request("mail", sender="a@example.org")))[2] == "default"


@pytest.mark.parametrize(("condition", "expected"), [
    ("is_admin(sender) or 1 == 1", True),
    ("is_admin(sender) and 1 == 2", False),
    ("is_admin(sender) or true", True),
    ("is_admin(sender) and not true", False),
    ('is_admin(sender) or lower("ABC") == "abc"', True),
    ('is_admin(sender) and len(["a", "b"]) == 3', False),
    ('is_admin(sender) or "b" in ["a", "b"]', True),
    ('account(sender) != none and domain("x@EXAMPLE.org") == "example.com"', False),
])
def test_constant_sides_are_folded_away(condition, expected):
    # the lookup is never made, so a failing directory does not matter
    directory = CountingDirectory(fail={"is_admin", "account"})
    assert holds(condition, stage="rcpt", directory=directory) is expected
    assert directory.calls == []


def test_let_constants_are_folded():
    lets = ('let lists = ["info@solawi.example", "gemuese@solawi.example"]\n'
            'let limit = 10\n'
            'let spam = /(?i)lottery/')
    directory = CountingDirectory()
    assert holds('"info@solawi.example" in lists or is_admin(sender)', stage="rcpt",
                 lets=lets, directory=directory)
    assert holds("rcpt in lists and len(lists) < limit", stage="rcpt", lets=lets)
    assert holds('subject matches spam', lets=lets, headers=[("Subject", "LOTTERY winner")])
    assert directory.calls == []


# ---------------------------------------------------------------------------------------
# Rule fusion

FUSED = """
stage rcpt {
    rule from_example: when sender ends_with "@example.org" reject 550 5.7.1 "example"
    rule from_org: when sender ends_with ".org" reject 550 5.7.1 "org"
    rule from_sub: when sender ends_with "@sub.example.org" tempfail 451 4.7.1 "sub"
    rule barrier: when sender contains "zz" discard
    rule to_info: when rcpt in ["p@solawi.example", "INFO@solawi.example"] reject "info"
    rule to_info_again: when rcpt == "info@solawi.example" tempfail
    rule to_q: when rcpt == "Q@Solawi.Example" discard
    rule to_r: when rcpt in ["r@solawi.example"] accept
    default accept
}
"""


def test_consecutive_simple_rules_are_fused():
    stage = policy(FUSED).stages["rcpt"]
    assert [r.name for r in stage.rules] == [
        "from_example", "from_org", "from_sub", "barrier", "to_info", "to_info_again",
        "to_q", "to_r"]
    assert len(stage.steps) == 3
    groups = [[m.name for m in (rule.members or (rule,))] for _, rule in stage.steps]
    assert groups == [["from_example", "from_org", "from_sub"], ["barrier"],
                      ["to_info", "to_info_again", "to_q", "to_r"]]


@pytest.mark.parametrize(("sender", "rcpt", "expected"), [
    # several members match: the first one decides
    ("u@example.org", "x@solawi.example", ("reject", "550 5.7.1 example", "from_example")),
    ("u@sub.example.org", "x@solawi.example", ("reject", "550 5.7.1 org", "from_org")),
    ("u@other.org", "x@solawi.example", ("reject", "550 5.7.1 org", "from_org")),
    ("zz@x.net", "info@solawi.example", ("discard", "250 2.0.0 Message queued for delivery",
                                         "barrier")),
    ("u@x.net", "info@solawi.example", ("reject", "550 5.7.1 info", "to_info")),
    ("u@x.net", "Info@Solawi.Example", ("reject", "550 5.7.1 info", "to_info")),
    ("u@x.net", "q@solawi.example", ("discard", "250 2.0.0 Message queued for delivery",
                                     "to_q")),
    ("u@x.net", "r@solawi.example", ("accept", None, "to_r")),
    ("u@x.net", "s@solawi.example", ("accept", None, "default")),
])
def test_fused_rules_decide_like_the_unfused_rules(sender, rcpt, expected):
    req = request("rcpt", sender=sender, to=[rcpt])
    fused = run(FUSED, req)
    unfused = run(FUSED, req, trace=True)
    assert summary(fused) == expected
    assert summary(unfused) == expected
    assert fused.reply == unfused.reply


def test_fused_list_equality_rules_decide_like_the_unfused_rules():
    text = """
    stage rcpt {
        rule only_info: when envelope.to == ["info@solawi.example"] reject "only info"
        rule only_q: when envelope.to == ["q@solawi.example"] reject "only q"
        default accept
    }
    """
    for to in (["info@solawi.example"], ["x@solawi.example"]):
        req = request("rcpt", sender="a@example.org", to=to)
        fused = run(text, req)
        unfused = run(text, req, trace=True)
        assert fused.fallback is False, fused.cause
        assert summary(fused) == summary(unfused)


# -- property: fusion never changes a decision ------------------------------------------

LOCALS = ("alice", "Bob", "carol", "x")
DOMAINS = ("example.org", "Example.ORG", "sub.example.org", "example.net", "ORG", "test")
ACTIONS = ("reject", "tempfail", "discard", "accept", 'reject 554 5.7.9 "no {i}"',
           'tempfail 452 "later {i}"', 'reject "r{i}"')

addresses = st.builds(lambda local, dom: f"{local}@{dom}", st.sampled_from(LOCALS),
                      st.sampled_from(DOMAINS))
suffixes = st.builds(lambda a, n: a[-n:], addresses, st.integers(1, 14))
prefixes = st.builds(lambda a, n: a[:n], addresses, st.integers(1, 8))

conditions = st.one_of(
    st.tuples(st.just("sender"), st.just("=="), addresses),
    st.tuples(st.just("sender"), st.just("in"), st.lists(addresses, max_size=3)),
    st.tuples(st.just("sender"), st.just("ends_with"), suffixes),
    st.tuples(st.just("sender"), st.just("starts_with"), prefixes),
    st.tuples(st.just("rcpt"), st.just("=="), addresses),
    st.tuples(st.just("rcpt"), st.just("in"), st.lists(addresses, max_size=3)),
    st.tuples(st.just("rcpt"), st.just("ends_with"), suffixes),
    # not fusable: they end a run
    st.tuples(st.just("sender"), st.just("contains"), suffixes),
    st.tuples(st.just("sender"), st.just("!="), addresses),
)


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return f'"{value}"'


def _holds(op: str, left: str, right: Any) -> bool:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if op == "in":
        return left in right
    if op == "ends_with":
        return left.endswith(right)
    if op == "starts_with":
        return left.startswith(right)
    assert op == "contains"
    return right in left


def _model(rules: list[tuple[str, str, Any]], sender: str, rcpt: str) -> int | None:
    """The reference semantics: first match, addresses compared case-insensitively."""
    values = {"sender": sender.lower(), "rcpt": rcpt.lower()}
    for position, (field, op, const) in enumerate(rules):
        left = values[field]
        right = [c.lower() for c in const] if isinstance(const, list) else const.lower()
        hit = _holds(op, left, right)
        if hit:
            return position
    return None


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=st.lists(st.tuples(conditions, st.sampled_from(ACTIONS)), min_size=1, max_size=9),
    senders=st.lists(addresses, min_size=1, max_size=4),
    rcpt=addresses,
)
def test_fusion_never_changes_a_decision(rules, senders, rcpt):
    lines = [f"    rule r{i}: when {field} {op} {_literal(const)} {action.format(i=i)}"
             for i, ((field, op, const), action) in enumerate(rules)]
    text = "stage rcpt {\n" + "\n".join(lines) + "\n    default tempfail 450 \"dflt\"\n}\n"
    result = compile_text(text)
    assert result.policy_set is not None, result.diagnostics
    for sender in senders:
        req = request("rcpt", sender=sender, to=[rcpt])
        fused = decide(result.policy_set, req, DEMO)
        unfused = decide(result.policy_set, req, DEMO, trace=True)
        assert summary(fused) == summary(unfused), text
        assert fused.fallback is False
        expected = _model([cond for cond, _ in rules], sender, rcpt)
        assert summary(fused)[2] == ("default" if expected is None else f"r{expected}"), text
