"""The checker: one test (or parametrized case) per diagnostic code, asserting the exact code,
severity, span and, where the checker offers one, the did-you-mean hint.

Spans are asserted against the position of a needle in the policy text (`locate`), so every
expectation is exact: line, column and the exclusive end column.  Multi-file checks go
through `compile_sources`, the way a policy directory is loaded.
"""

from __future__ import annotations

import pytest

from komm_policy.errors import Diagnostic, Severity
from komm_policy.policyset import Source, compile_sources, load_path

from .conftest import POLICIES
from .shipped import DIRECTORY_SOURCES, SCHEMA, compile_with_directory

FILE = "test.policy"

# ---------------------------------------------------------------------------------------
# helpers


def diagnostics(text: str) -> list[Diagnostic]:
    """Check a snippet after the shipped directory file (the helpers), against the shipped
    schema file."""
    return list(compile_with_directory(text, FILE).diagnostics)


def diagnostics_of(files: dict[str, str]) -> list[Diagnostic]:
    """Check several files as one set, in the given order (the load order), after the
    shipped directory file."""
    result = compile_sources([*DIRECTORY_SOURCES,
                              *(Source(name, text) for name, text in files.items())],
                             schema=SCHEMA)
    return list(result.diagnostics)


def codes(found: list[Diagnostic]) -> list[str]:
    return [d.code for d in found]


def single(found: list[Diagnostic], code: str) -> Diagnostic:
    """The one diagnostic found; fails unless it is exactly one with this code."""
    assert codes(found) == [code], [str(d) for d in found]
    return found[0]


def locate(text: str, needle: str, nth: int = 0, after: str | None = None
           ) -> tuple[int, int, int, int]:
    """(line, column, end_line, end_column) of the nth occurrence of a one-line needle
    (counted from the end of `after`, if given), 1-based with an exclusive end, like `Span`."""
    assert "\n" not in needle
    index = text.index(after) + len(after) - 1 if after is not None else -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column, line, column + len(needle)


def where(d: Diagnostic) -> tuple[int, int, int, int]:
    s = d.span
    return s.line, s.column, s.end_line, s.end_column


def related_at(d: Diagnostic) -> tuple[str, int, int, int]:
    assert d.related is not None, str(d)
    s = d.related.span
    return s.file, s.line, s.column, s.end_column


def a_rule(cond: str, stage: str = "data", action: str = "accept") -> str:
    """One rule in one stage, with a default so that W202 stays quiet."""
    return (
        f"stage {stage} {{\n"
        f"    rule r:\n"
        f"        when {cond}\n"
        f"        {action}\n"
        f"    default accept\n"
        f"}}\n"
    )


def settings(*lines: str) -> str:
    """A settings block with these lines, and a stage so that the set is complete."""
    body = "".join(f"    {line}\n" for line in lines)
    return f"settings {{\n{body}}}\nstage data {{\n    default accept\n}}\n"


def assert_error(d: Diagnostic, code: str) -> None:
    assert d.code == code
    assert d.severity is Severity.ERROR
    assert d.is_error


def assert_warning(d: Diagnostic, code: str) -> None:
    assert d.code == code
    assert d.severity is Severity.WARNING
    assert not d.is_error


# ---------------------------------------------------------------------------------------
# E101 unknown function


def test_e101_unknown_function_with_did_you_mean():
    text = a_rule("ip_blockd(client.ip)", stage="connect")
    d = single(diagnostics(text), "E101")
    assert_error(d, "E101")
    assert where(d) == locate(text, "ip_blockd")
    assert d.span.file == FILE
    assert d.message == "unknown function `ip_blockd`"
    assert d.hint == "did you mean `ip_blocked`?"


def test_e101_unknown_function_without_close_match_lists_the_available_ones():
    text = a_rule('frobnicate(sender) == "x"', stage="mail")
    d = single(diagnostics(text), "E101")
    assert where(d) == locate(text, "frobnicate")
    assert d.hint is not None and d.hint.startswith("available functions: ")
    listed = d.hint.removeprefix("available functions: ").split(", ")
    assert listed == sorted(listed)
    assert {"category", "is_admin", "subscribed", "lower", "len"} <= set(listed)


# ---------------------------------------------------------------------------------------
# E102 unknown name


@pytest.mark.parametrize(
    ("cond", "stage", "needle", "message", "hint"),
    [
        pytest.param('sendr == "x"', "mail", "sendr", "unknown name `sendr`",
                     "did you mean `sender`?", id="did-you-mean-field"),
        pytest.param("zzzz == 1", "mail", "zzzz", "unknown name `zzzz`", None,
                     id="no-close-match"),
        pytest.param("client == 1", "connect", "client", "`client` is not a value by itself",
                     "use one of its fields: client.helo, client.ip, client.port, client.ptr",
                     id="namespace-as-value"),
        pytest.param("ip_blocked", "connect", "ip_blocked", "`ip_blocked` is a function",
                     "call it: `ip_blocked(ip)`", id="function-without-call"),
    ],
)
def test_e102_unknown_name(cond, stage, needle, message, hint):
    text = a_rule(cond, stage=stage)
    d = single(diagnostics(text), "E102")
    assert_error(d, "E102")
    assert where(d) == locate(text, needle)
    assert d.message == message
    assert d.hint == hint


def test_e102_misspelt_let_suggests_the_let():
    # Fix: the candidates for did-you-mean are quantifier variables, fields and namespaces;
    # `let` constants are left out, so the most likely typo gets no hint.
    text = (
        "let trusted_networks = [127.0.0.0/8]\n"
        "stage connect {\n"
        "    rule trusted:\n"
        "        when client.ip in trusted_networks\n"
        "        accept\n"
        "    rule typo:\n"
        "        when client.ip in trusted_netwroks\n"
        "        accept\n"
        "    default accept\n"
        "}\n"
    )
    d = single(diagnostics(text), "E102")
    assert where(d) == locate(text, "trusted_netwroks")
    assert d.hint == "did you mean `trusted_networks`?"


# ---------------------------------------------------------------------------------------
# E103 field not available at a stage


@pytest.mark.parametrize(
    ("stage", "cond", "needle", "message", "hint"),
    [
        pytest.param("connect", 'client.helo == "x"', "client.helo",
                     "`client.helo` is not available at stage `connect`",
                     "Stalwart sends it at: ehlo, auth, mail, rcpt, data", id="helo-at-connect"),
        pytest.param("data", 'rcpt == "a@example.org"', "rcpt",
                     "`rcpt` is not available at stage `data`",
                     "Stalwart sends it at: rcpt", id="rcpt-at-data"),
        pytest.param("mail", 'envelope.to contains "a@example.org"', "envelope.to",
                     "`envelope.to` is not available at stage `mail`",
                     "Stalwart sends it at: rcpt, data", id="envelope-to-at-mail"),
        pytest.param("ehlo", "sasl.login != none", "sasl.login",
                     "`sasl.login` is not available at stage `ehlo`",
                     "Stalwart sends it at: auth, mail, rcpt, data", id="sasl-at-ehlo"),
        pytest.param("rcpt", 'subject == "x"', "subject",
                     "`subject` is not available at stage `rcpt`",
                     "Stalwart sends it at: data", id="subject-at-rcpt"),
        pytest.param("rcpt", 'header("X-Flag") == "yes"', "header",
                     "`header()` is not available at stage `rcpt`",
                     "it reads the message, which exists only at: data", id="header-at-rcpt"),
    ],
)
def test_e103_field_not_available_at_stage(stage, cond, needle, message, hint):
    text = a_rule(cond, stage=stage)
    d = single(diagnostics(text), "E103")
    assert_error(d, "E103")
    assert where(d) == locate(text, needle)
    assert d.message == message
    assert d.hint == hint


def test_e103_inside_a_reply_template():
    text = a_rule("true", stage="connect", action='reject 550 5.7.1 "Go away {sender}"')
    d = single(diagnostics(text), "E103")
    assert where(d) == locate(text, "sender")
    assert "`connect`" in d.message


# ---------------------------------------------------------------------------------------
# E104 wrong number of arguments


@pytest.mark.parametrize(
    ("cond", "needle", "message", "hint"),
    [
        pytest.param('lower(sender, "x") == "y"', 'lower(sender, "x")',
                     "`lower()` takes 1 argument, got 2",
                     "signature: lower(text: address or text) -> text", id="too-many"),
        pytest.param("subscribed(sender)", "subscribed(sender)",
                     "`subscribed()` takes 2 arguments, got 1",
                     "signature: subscribed(address, list_category)", id="too-few"),
        pytest.param("len() == 0", "len()", "`len()` takes 1 argument, got 0",
                     "signature: len(value: address or list or text) -> integer", id="none"),
    ],
)
def test_e104_wrong_number_of_arguments(cond, needle, message, hint):
    text = a_rule(cond, stage="mail")
    d = single(diagnostics(text), "E104")
    assert_error(d, "E104")
    assert where(d) == locate(text, needle)
    assert d.message == message
    assert d.hint == hint


# ---------------------------------------------------------------------------------------
# E105 type mismatches


@pytest.mark.parametrize(
    ("cond", "needle", "message", "hint"),
    [
        pytest.param("lower(client.port) == \"x\"", "client.port",
                     "argument 1 (`text`) of `lower()` must be address or text, but this is "
                     "integer", "signature: lower(text: address or text) -> text",
                     id="call-argument"),
        # a row-typed parameter: `subscribed` reads `category.id`, so it needs a row
        pytest.param('subscribed(sender, "news@example.org")',
                     'subscribed(sender, "news@example.org")',
                     "in `subscribed()` called here: `.id` needs a table row, but this is "
                     "text", None, id="call-second-argument"),
        pytest.param("subscribed(sender, ip_blocked(client.ip))",
                     "subscribed(sender, ip_blocked(client.ip))",
                     "in `subscribed()` called here: `.id` needs a table row, but this is "
                     "bool", None, id="call-row-argument-of-another-type"),
        pytest.param('client.port == "25"', "==", "`==` cannot combine integer and text", None,
                     id="eq"),
        pytest.param("client.ip != 25", "!=", "`!=` cannot combine ip and integer", None,
                     id="ne"),
        pytest.param('sender < "b"', "<", "`<` cannot combine address and text", None,
                     id="lt-on-text"),
        pytest.param('subject <= "b"', "<=", "`<=` cannot combine text? and text", None,
                     id="le-on-text"),
        pytest.param("message.size > 1s", ">", "`>` cannot combine size and duration", None,
                     id="gt-size-duration"),
        pytest.param("1s >= 2", ">=", "`>=` cannot combine duration and integer", None,
                     id="ge-duration-int"),
        pytest.param('sender in "example.org"', "in", "`in` cannot combine address and text",
                     "use `contains` to look for text inside text", id="in-text"),
        pytest.param("client.ip in 10.0.0.1", "in", "`in` cannot combine ip and ip", None,
                     id="in-non-list"),
        pytest.param("client.port not in 25", "not in",
                     "`not in` cannot combine integer and integer", None, id="not-in-non-list"),
        pytest.param('sender in [1, 2]', "in", "`in` cannot combine address and list[integer]",
                     None, id="in-list-of-other-type"),
        pytest.param('subject matches "viagra"', "matches",
                     "`matches` cannot combine text? and text",
                     "write the pattern as a regex: /…/", id="matches-string-pattern"),
        pytest.param("client.port matches /25/", "matches",
                     "`matches` cannot combine integer and regex", None, id="matches-non-text"),
        pytest.param("client.port contains 2", "contains",
                     "`contains` cannot combine integer and integer", None, id="contains-non-text"),
        pytest.param("envelope.to contains 1", "contains",
                     "`contains` cannot combine list[address] and integer", None,
                     id="contains-list-other-type"),
        pytest.param('client.port starts_with "2"', "starts_with",
                     "`starts_with` cannot combine integer and text", None, id="starts-with"),
        pytest.param("sender ends_with 1", "ends_with",
                     "`ends_with` cannot combine address and integer", None, id="ends-with"),
        pytest.param('sender[0] == "a"', "sender",
                     "only lists can be indexed, but this is address", None, id="index-non-list"),
        pytest.param('envelope.to["x"] == "a"', '"x"',
                     "a list index must be an integer, but this is text", None,
                     id="non-int-index"),
        pytest.param('sender.name == "a"', "name",
                     "`.name` needs a table row, but this is address", None,
                     id="field-of-non-record"),
        pytest.param('client.port in [25, "smtp"]', '[25, "smtp"]',
                     "list items must have one type, found integer, text", None,
                     id="mixed-list"),
        pytest.param('any r in sender: r == "x"', "sender",
                     "`any … in` needs a list, but this is address", None,
                     id="quantifier-over-non-list"),
    ],
)
def test_e105_type_mismatch_in_condition(cond, needle, message, hint):
    text = a_rule(cond)
    d = single(diagnostics(text), "E105")
    assert_error(d, "E105")
    assert where(d) == locate(text, needle)
    assert d.message == message
    assert d.hint == hint


@pytest.mark.parametrize(
    ("stage", "body", "needle", "message", "hint"),
    [
        pytest.param("data", 'add_header "X-Category" category(sender)\n        continue',
                     "category(sender)",
                     "cannot write a row of message_categories? value into a header",
                     "pick a field, e.g. `.name`", id="record-into-header"),
        pytest.param("data", 'add_header "X-Pattern" /x/\n        continue', "/x/",
                     "cannot write a regex value into a header", None, id="regex-into-header"),
        pytest.param("rcpt", 'reject 550 5.1.1 "No list {category(rcpt)}"', "category(rcpt)",
                     "cannot write a row of message_categories? value into text",
                     "pick a field, e.g. `.name`", id="record-into-template"),
        pytest.param("data", "change_from 1\n        continue", "1",
                     "`change_from` needs text, but this is integer", None,
                     id="change-from-integer"),
    ],
)
def test_e105_type_mismatch_in_statement_or_action(stage, body, needle, message, hint):
    text = a_rule("true", stage=stage, action=body)
    d = single(diagnostics(text), "E105")
    assert_error(d, "E105")
    assert where(d) == locate(text, needle, after="when true")
    assert d.message == message
    assert d.hint == hint


# ---------------------------------------------------------------------------------------
# E106 non-bool condition


@pytest.mark.parametrize(
    ("cond", "needle", "message", "hint"),
    [
        pytest.param("client.port", "client.port",
                     "a rule's `when` condition must be true or false, but this is integer", None,
                     id="int"),
        pytest.param('header("X-Flag")', 'header("X-Flag")',
                     "a rule's `when` condition must be true or false, but this is text?",
                     "compare with none explicitly, e.g. `x != none`", id="optional-value"),
        pytest.param("category(sender)", "category(sender)",
                     "a rule's `when` condition must be true or false, but this is row of "
                     "message_categories?",
                     "compare with none explicitly, e.g. `x != none`", id="optional-record"),
        pytest.param("not sender", "sender",
                     "the operand of `not` must be true or false, but this is address", None,
                     id="not"),
        pytest.param("valid_address(sender) and 1", "1",
                     "each side of `and` must be true or false, but this is integer", None,
                     id="and"),
        pytest.param("any rr in envelope.to: lower(rr)", "lower(rr)",
                     "the condition of `any` must be true or false, but this is text", None,
                     id="quantifier-body"),
    ],
)
def test_e106_non_bool_condition(cond, needle, message, hint):
    text = a_rule(cond)
    d = single(diagnostics(text), "E106")
    assert_error(d, "E106")
    assert where(d) == locate(text, needle)
    assert d.message == message
    assert d.hint == hint


# ---------------------------------------------------------------------------------------
# E107 unknown request field / record field


@pytest.mark.parametrize(
    ("stage", "cond", "needle", "message", "hint"),
    [
        pytest.param("ehlo", 'client.hello == "x"', "hello",
                     "unknown request field `client.hello`", "did you mean `client.helo`?",
                     id="request-field"),
        pytest.param("rcpt", 'category(rcpt).nam == "x"', "nam",
                     "a row of `message_categories` has no field `nam`", "did you mean `name`?",
                     id="record-field"),
        pytest.param("rcpt", 'account(sender).emial == "x"', "emial",
                     "a row of `account` has no field `emial`", "did you mean `email`?",
                     id="account-field"),
    ],
)
def test_e107_unknown_field(stage, cond, needle, message, hint):
    text = a_rule(cond, stage=stage)
    d = single(diagnostics(text), "E107")
    assert_error(d, "E107")
    assert where(d) == locate(text, needle)
    assert d.message == message
    assert d.hint == hint


def test_e107_unknown_request_field_without_a_close_member_lists_the_members():
    # Fix: the did-you-mean compares whole dotted paths, and the shared `client.` prefix
    # alone nearly reaches difflib's 0.6 cutoff, so almost any unknown member gets a
    # nonsense suggestion (`client.country` -> `client.ptr`, `client.name` -> `client.helo`,
    # `client.asn` -> `client.ip`) and the "`client` has: ..." list is never shown.
    text = a_rule('client.country == "de"', stage="ehlo")
    d = single(diagnostics(text), "E107")
    assert where(d) == locate(text, "country")
    assert d.message == "unknown request field `client.country`"
    assert d.hint == "`client` has: client.helo, client.ip, client.port, client.ptr"


def test_field_access_on_a_list_field_is_a_type_error_not_an_unknown_field():
    # Fix: `envelope.to` is a known field; `.name` applied to it is a type mismatch (E105),
    # but the checker reports "unknown request field `envelope.to.name`, did you mean
    # `envelope.to`?" (E107), which points the operator at the wrong mistake.
    text = a_rule('envelope.to.name == "x"', stage="rcpt")
    d = single(diagnostics(text), "E105")
    assert where(d) == locate(text, "name")
    assert d.message == "`.name` needs a table row, but this is list[address]"


# ---------------------------------------------------------------------------------------
# E108 lookup where no lookup may run


def test_e108_lookup_in_let():
    text = (
        'let admins = category("admins@example.org")\n'
        + a_rule("admins != none", stage="mail")
    )
    d = single(diagnostics(text), "E108")
    assert_error(d, "E108")
    assert where(d) == locate(text, 'category("admins@example.org")')
    assert d.message == ("in `category()` called here: a `let` cannot call the lookup "
                         "`lookup()`")
    assert d.hint == ("lookups run only in rule conditions, statements and the rule's own "
                      "action")


def test_e108_lookup_in_on_error_action():
    text = (
        "stage rcpt {\n"
        "    rule r:\n"
        "        when is_admin(sender)\n"
        "        accept\n"
        '        on error reject 550 "{category(rcpt).name}"\n'
        "    default accept\n"
        "}\n"
    )
    d = single(diagnostics(text), "E108")
    assert where(d) == locate(text, "category(rcpt)")
    assert d.message == ("in `category()` called here: an `on error` action cannot call "
                         "the lookup `lookup()`")


def test_e108_lookup_in_default():
    text = 'stage rcpt {\n    default reject 550 "{account(rcpt).name}"\n}\n'
    d = single(diagnostics(text), "E108")
    assert where(d) == locate(text, "account(rcpt)")
    assert d.message == ("in `account()` called here: a `default` cannot call the lookup "
                         "`lookup()`")


def test_e108_lookup_in_settings():
    text = settings('on_lookup_error = tempfail 451 "Blocked: {ip_blocked(10.0.0.1)}"')
    d = single(diagnostics(text), "E108")
    assert where(d) == locate(text, "ip_blocked(10.0.0.1)")
    assert d.message == ("in `ip_blocked()` called here: settings cannot call the lookup "
                         "`exists()`")


# ---------------------------------------------------------------------------------------
# E109 request field in let / settings


def test_e109_request_field_in_let():
    text = "let me = sender\n" + a_rule('me == "x"', stage="mail")
    d = single(diagnostics(text), "E109")
    assert_error(d, "E109")
    assert where(d) == locate(text, "sender")
    assert d.message == "a `let` cannot use the request field `sender`"
    assert d.hint == "`let` constants and settings are fixed when the policy loads"


def test_e109_request_function_in_let():
    text = 'let flag = header("X-Flag")\n' + a_rule('flag == "yes"')
    d = single(diagnostics(text), "E109")
    assert where(d) == locate(text, 'header("X-Flag")')
    assert d.message == "a `let` cannot read the message with `header()`"


def test_e109_request_field_in_settings_action():
    text = ('settings {\n    on_lookup_error = tempfail 451 "Sorry {sender}"\n}\n'
            "stage data {\n    default accept\n}\n")
    d = single(diagnostics(text), "E109")
    assert where(d) == locate(text, "sender")
    assert d.message == "settings cannot use the request field `sender`"


def test_e109_request_field_as_setting_value_is_reported_once():
    # Fixed cascade: the value in error has type `any`, but `_check_settings` still reports
    # E131 "must be a positive duration" at the very same span.
    text = "settings {\n    deadline = client.port\n}\nstage data {\n    default accept\n}\n"
    d = single(diagnostics(text), "E109")
    assert where(d) == locate(text, "client.port")


# ---------------------------------------------------------------------------------------
# E110 let cycle


def test_e110_let_refers_to_itself():
    text = "let a = a\n" + a_rule("true")
    d = single(diagnostics(text), "E110")
    assert_error(d, "E110")
    assert where(d) == (1, 9, 1, 10)
    assert d.message == "`let a` refers to itself"
    assert d.hint == "a constant cannot depend on its own value"


def test_e110_let_cycle_through_two_lets():
    text = "let a = b\nlet b = a\n" + a_rule("true")
    d = single(diagnostics(text), "E110")
    assert where(d) == (2, 9, 2, 10)
    assert "`let a`" in d.message


def test_e110_self_reference_through_a_field_access_is_reported_once():
    # Fixed cascade: `Inference._Attr` probes whether the root `x` is a `let` by calling
    # the `let_type` callback, which already reports E110; it then infers `x` again and
    # reports the same E110 a second time (once for `x.name`, once for `x`).
    text = "let x = x.name\n" + a_rule("true")
    d = single(diagnostics(text), "E110")
    assert (d.span.line, d.span.column) == (1, 9)


def test_e110_let_cycle_used_in_a_condition_does_not_crash():
    # Fix: `_Checker._constant` follows `let` names without a cycle guard; the W201 check
    # calls it on every terminal rule's condition, so this raises RecursionError.
    text = "let a = b\nlet b = a\n" + a_rule("a")
    d = single(diagnostics(text), "E110")
    assert where(d) == (2, 9, 2, 10)


def test_e110_let_cycle_used_in_settings_does_not_crash():
    # Fix: same unguarded recursion, reached from `_check_settings`.
    text = ("let t = t\nsettings {\n    deadline = t\n}\n"
            "stage data {\n    default accept\n}\n")
    d = single(diagnostics(text), "E110")
    assert where(d) == (1, 9, 1, 10)


# ---------------------------------------------------------------------------------------
# E111 duplicate let / let hiding a name


def test_e111_duplicate_let_across_files_points_at_the_first():
    first = "let limit = 10MB\n"
    second = "let limit = 20MB\n" + a_rule("message.size > limit")
    found = diagnostics_of({"10-a.policy": first, "20-b.policy": second})
    d = single(found, "E111")
    assert_error(d, "E111")
    assert d.span.file == "20-b.policy"
    assert where(d) == locate(second, "limit")
    assert d.message == "`let limit` is defined twice"
    assert related_at(d) == ("10-a.policy", 1, 5, 10)
    assert d.related is not None and d.related.message == "first defined here"


@pytest.mark.parametrize(
    ("name", "what"),
    [
        pytest.param("sender", "a request field", id="field"),
        pytest.param("client", "a request field", id="namespace"),
        pytest.param("lower", "a built-in function", id="builtin"),
        pytest.param("category", "a function", id="directory-function"),
    ],
)
def test_e111_let_hiding_a_field_or_builtin(name, what):
    text = f'let {name} = "x"\nstage data {{\n    default accept\n}}\n'
    d = single(diagnostics(text), "E111")
    assert where(d) == locate(text, name)
    assert d.message == f"`let {name}` would hide {what} of the same name"
    assert d.hint == "choose another name"


# ---------------------------------------------------------------------------------------
# E112 duplicate rule name, E113 two defaults


def test_e112_duplicate_rule_name_across_files():
    first = a_rule("true", stage="connect")
    second = a_rule('sender == ""', stage="mail")
    found = diagnostics_of({"10-a.policy": first, "20-b.policy": second})
    d = single(found, "E112")
    assert_error(d, "E112")
    assert d.span.file == "20-b.policy"
    assert where(d) == (2, 10, 2, 11)
    assert d.message == "rule name `r` is used twice"
    assert related_at(d) == ("10-a.policy", 2, 10, 11)
    assert d.related is not None and d.related.message == "first used here"


def test_e113_two_defaults_in_one_stage_across_files():
    first = "stage rcpt {\n    default accept\n}\n"
    second = 'stage rcpt {\n    default reject 550 5.1.1 "No"\n}\n'
    found = diagnostics_of({"10-a.policy": first, "20-b.policy": second})
    d = single(found, "E113")
    assert_error(d, "E113")
    assert d.span.file == "20-b.policy"
    assert where(d) == locate(second, 'default reject 550 5.1.1 "No"')
    assert d.message == "stage `rcpt` has two `default` actions"
    assert related_at(d) == ("10-a.policy", 2, 5, 19)
    assert d.related is not None and d.related.message == "the first default"


def test_defaults_in_different_stages_are_fine():
    text = "stage mail {\n    default accept\n}\nstage rcpt {\n    default accept\n}\n"
    assert diagnostics(text) == []


# ---------------------------------------------------------------------------------------
# E114 modification outside data, E115 quarantine outside data, E116 no quarantine_to

QUARANTINE_SETTINGS = 'settings {\n    quarantine_to = "quarantine@example.org"\n}\n'


def test_e114_modification_outside_data():
    text = a_rule("true", stage="mail", action='add_header "X-Seen" "yes"\n        continue')
    d = single(diagnostics(text), "E114")
    assert_error(d, "E114")
    assert where(d) == locate(text, 'add_header "X-Seen" "yes"')
    assert d.message == ("`add_header` at stage `mail`: Stalwart applies modifications only at "
                         "the data stage")
    assert d.hint == "move this rule to `stage data`"


def test_e115_quarantine_outside_data():
    text = QUARANTINE_SETTINGS + a_rule('sender == ""', stage="rcpt",
                                        action='quarantine "suspicious"')
    d = single(diagnostics(text), "E115")
    assert_error(d, "E115")
    assert where(d) == locate(text, 'quarantine "suspicious"')
    assert "`quarantine` at stage `rcpt`" in d.message


def test_e115_quarantine_default_outside_data():
    text = QUARANTINE_SETTINGS + "stage mail {\n    default quarantine\n}\n"
    d = single(diagnostics(text), "E115")
    assert where(d) == locate(text, "quarantine", after="default ")


def test_e116_quarantine_without_quarantine_to_is_reported_once():
    text = (
        "stage data {\n"
        "    rule spam:\n"
        '        when subject matches /viagra/\n'
        '        quarantine "spam"\n'
        "    rule more_spam:\n"
        '        when subject matches /lottery/\n'
        '        quarantine "spam"\n'
        "    default accept\n"
        "}\n"
    )
    d = single(diagnostics(text), "E116")
    assert_error(d, "E116")
    assert where(d) == locate(text, 'quarantine "spam"')
    assert d.message == "`quarantine` needs `quarantine_to` in `settings`"


def test_quarantine_at_data_with_quarantine_to_is_fine():
    text = QUARANTINE_SETTINGS + a_rule("subject matches /viagra/", action="quarantine")
    assert diagnostics(text) == []


# ---------------------------------------------------------------------------------------
# E117 unknown stage


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        pytest.param("conect", "did you mean `connect`?", id="did-you-mean"),
        pytest.param("RCPT", "did you mean `rcpt`?", id="case"),
        pytest.param("banana", "the stages are: connect, ehlo, auth, mail, rcpt, data",
                     id="list"),
    ],
)
def test_e117_unknown_stage(name, hint):
    text = f"stage {name} {{\n    default accept\n}}\n"
    d = single(diagnostics(text), "E117")
    assert_error(d, "E117")
    assert where(d) == locate(text, name)
    assert d.message == f"unknown stage `{name}`"
    assert d.hint == hint


# ---------------------------------------------------------------------------------------
# E120-E124 replies and modifications


@pytest.mark.parametrize(
    ("action", "needle", "message", "hint"),
    [
        pytest.param('reject 451 "x"', "451", "`reject` needs a 5xx reply code, got 451",
                     "use `tempfail` for 4xx codes", id="reject-4xx"),
        pytest.param('tempfail 550 "x"', "550", "`tempfail` needs a 4xx reply code, got 550",
                     "use `reject` for 5xx codes", id="tempfail-5xx"),
        pytest.param("reject 250", "250", "`reject` needs a 5xx reply code, got 250",
                     "use `tempfail` for 4xx codes", id="reject-2xx"),
    ],
)
def test_e120_reply_code_class(action, needle, message, hint):
    text = a_rule('sender == "a@example.org"', stage="mail", action=action)
    d = single(diagnostics(text), "E120")
    assert_error(d, "E120")
    assert where(d) == locate(text, needle)
    assert d.message == message
    assert d.hint == hint


@pytest.mark.parametrize(
    ("action", "needle", "message"),
    [
        pytest.param('reject 550 3.7.1 "x"', "3.7.1", "`3.7.1` is not an enhanced status code",
                     id="malformed"),
        pytest.param('reject 550 4.7.1 "x"', "4.7.1",
                     "enhanced code 4.7.1 does not match `reject` (5.x.x expected)",
                     id="reject-class"),
        pytest.param('tempfail 451 5.7.1 "x"', "5.7.1",
                     "enhanced code 5.7.1 does not match `tempfail` (4.x.x expected)",
                     id="tempfail-class"),
    ],
)
def test_e121_enhanced_code(action, needle, message):
    text = a_rule('sender == "a@example.org"', stage="mail", action=action)
    d = single(diagnostics(text), "E121")
    assert_error(d, "E121")
    assert where(d) == locate(text, needle)
    assert d.message == message


def test_e121_malformed_has_a_hint():
    text = a_rule("true", stage="mail", action="reject 9.1.1")
    d = single(diagnostics(text), "E121")
    assert d.hint == "the form is class.subject.detail, e.g. 5.7.1 (RFC 3463)"


@pytest.mark.parametrize(
    ("reply", "bad"),
    [
        pytest.param('"Gehen Sie weg, café"', "'é'", id="non-ascii"),
        pytest.param('"two\\nlines"', "'\\n'", id="newline"),
        pytest.param('"a\\ttab"', "'\\t'", id="tab"),
        pytest.param('"{sender} — no"', "'—'", id="non-ascii-in-template"),
    ],
)
def test_e122_non_printable_reply_text(reply, bad):
    text = a_rule("true", stage="mail", action=f"reject 550 5.7.1 {reply}")
    d = single(diagnostics(text), "E122")
    assert_error(d, "E122")
    assert where(d) == locate(text, reply)
    assert d.message == (f"reply text contains {bad}: SMTP replies must be printable ASCII on "
                         "one line")


def test_e122_over_long_reply_text():
    reply = '"' + "x" * 401 + '"'
    text = a_rule("true", stage="mail", action=f"reject 550 5.7.1 {reply}")
    d = single(diagnostics(text), "E122")
    assert where(d) == locate(text, reply)
    assert d.message == ("reply text is 401 characters long; at most 400 fit in an SMTP "
                         "reply line")


def test_reply_text_of_400_characters_is_fine():
    text = a_rule("true", stage="mail", action=f'reject 550 5.7.1 "{"x" * 400}"')
    assert diagnostics(text) == []


@pytest.mark.parametrize("header", ['"X Spam"', '"X-Spam:"', '""', '"X-Späm"'])
def test_e123_invalid_header_name(header):
    text = a_rule("true", action=f'add_header {header} "yes"\n        continue')
    d = single(diagnostics(text), "E123")
    assert_error(d, "E123")
    assert where(d) == locate(text, header)
    assert d.message == f"`{header[1:-1]}` is not a valid header name"
    assert d.hint == "header names are printable ASCII without spaces or `:`"


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        pytest.param('change_header "X-A" "b" at 0',
                     "`change_header` position must be at least 1", id="change"),
        pytest.param('delete_header "X-A" at 0',
                     "`delete_header` position must be at least 1", id="delete"),
        pytest.param('insert_header "X-A" "b" at -1',
                     "`insert_header` position must be at least 0", id="insert"),
    ],
)
def test_e124_header_index_too_small(statement, message):
    text = a_rule("true", action=f"{statement}\n        continue")
    d = single(diagnostics(text), "E124")
    assert_error(d, "E124")
    assert where(d) == locate(text, statement)
    assert d.message == message


def test_lowest_header_indexes_are_fine():
    text = a_rule("true", action='insert_header "X-A" "b" at 0\n'
                  '        change_header "X-B" "c" at 1\n        continue')
    assert diagnostics(text) == []


# ---------------------------------------------------------------------------------------
# E130-E133 settings


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        pytest.param("on_lookup_eror", "did you mean `on_lookup_error`?", id="did-you-mean"),
        pytest.param("colour", "the settings are: lookup_timeout, deadline, on_lookup_error, "
                     "quarantine_to", id="list"),
    ],
)
def test_e130_unknown_setting(name, hint):
    text = settings(f"{name} = accept")
    d = single(diagnostics(text), "E130")
    assert_error(d, "E130")
    assert where(d) == locate(text, name)
    assert d.message == f"unknown setting `{name}`"
    assert d.hint == hint


@pytest.mark.parametrize(
    ("line", "needle", "message"),
    [
        pytest.param("lookup_timeout = 5", "5",
                     "`lookup_timeout` must be a positive duration like 250ms or 2s",
                     id="non-duration"),
        pytest.param("deadline = 0ms", "0ms",
                     "`deadline` must be a positive duration like 250ms or 2s", id="zero"),
        pytest.param("deadline = accept", "accept",
                     "`deadline` must be a duration, not an action", id="action-for-value"),
        pytest.param("on_lookup_error = 5s", "on_lookup_error = 5s",
                     "`on_lookup_error` must be an action (the fallback when a lookup fails or "
                     "the deadline passes)", id="value-for-action"),
        pytest.param('quarantine_to = "quarantine"', '"quarantine"',
                     "`quarantine_to` must be a mail address in quotes", id="bad-address"),
        pytest.param("quarantine_to = 25", "25",
                     "`quarantine_to` must be a mail address in quotes", id="not-text"),
    ],
)
def test_e131_bad_setting_value(line, needle, message):
    text = settings(line)
    d = single(diagnostics(text), "E131")
    assert_error(d, "E131")
    assert where(d) == locate(text, needle)
    assert d.message == message


def test_e131_lookup_timeout_longer_than_deadline():
    text = settings("lookup_timeout = 5s", "deadline = 2s")
    d = single(diagnostics(text), "E131")
    assert where(d) == locate(text, "lookup_timeout = 5s")
    assert d.message == "`lookup_timeout` is longer than the whole `deadline`"
    assert d.related is not None
    assert (d.related.span.line, d.related.span.column) == locate(text, "deadline = 2s")[:2]


def test_settings_through_lets_are_fine():
    text = ('let box = "quarantine@example.org"\nlet slow = 2s\n'
            + settings("deadline = slow", "lookup_timeout = 250ms", "quarantine_to = box",
                       'on_lookup_error = tempfail 451 4.3.0 "Try again"'))
    assert diagnostics(text) == []


def test_e132_setting_given_twice():
    text = settings("deadline = 2s", "deadline = 3s")
    d = single(diagnostics(text), "E132")
    assert_error(d, "E132")
    assert where(d) == locate(text, "deadline", nth=1)
    assert d.message == "`deadline` is set twice"
    assert d.related is not None
    assert (d.related.span.line, d.related.span.column) == locate(text, "deadline")[:2]
    assert d.related.message == "first set here"


def test_e133_two_settings_blocks_across_files():
    first = "settings {\n    deadline = 2s\n}\n"
    second = "settings {\n    lookup_timeout = 250ms\n}\nstage data {\n    default accept\n}\n"
    found = diagnostics_of({"00-a.policy": first, "10-b.policy": second})
    d = single(found, "E133")
    assert_error(d, "E133")
    assert d.span.file == "10-b.policy"
    assert (d.span.line, d.span.column, d.span.end_line, d.span.end_column) == (1, 1, 3, 2)
    assert d.message == "a policy set has only one `settings` block"
    assert d.hint == "merge the two blocks"
    assert d.related is not None
    assert (d.related.span.file, d.related.span.line, d.related.span.column) == (
        "00-a.policy", 1, 1)


def test_e133_does_not_cascade_into_missing_quarantine_to():
    # Fixed cascade: the second block is dropped entirely, so its `quarantine_to` is not
    # seen and every quarantine also gets E116 ("needs `quarantine_to`"), although the
    # operator did set it.  One mistake, one diagnostic.
    first = "settings {\n    deadline = 2s\n}\n"
    second = QUARANTINE_SETTINGS + a_rule("subject matches /viagra/", action="quarantine")
    found = diagnostics_of({"00-a.policy": first, "10-b.policy": second})
    assert codes(found) == ["E133"], [str(d) for d in found]


# ---------------------------------------------------------------------------------------
# W201-W206 warnings


def test_w201_unreachable_after_unconditional_rule():
    text = (
        "stage mail {\n"
        "    rule always:\n"
        "        when true\n"
        "        accept\n"
        "    rule never:\n"
        '        when sender == ""\n'
        "        reject 550\n"
        "    default accept\n"
        "}\n"
    )
    d = single(diagnostics(text), "W201")
    assert_warning(d, "W201")
    assert where(d) == locate(text, "never")
    assert d.message == "rule `never` can never run"
    assert d.hint == "an earlier rule always decides first"
    assert d.related is not None
    assert (d.related.span.line, d.related.span.column) == locate(text, "always")[:2]
    assert d.related.message == "`always` always matches"


def test_w201_via_a_let_that_is_true_and_across_files():
    first = "let enabled = not false\n" + (
        "stage rcpt {\n    rule gate:\n        when enabled\n        accept\n}\n")
    second = a_rule('rcpt == "a@example.org"', stage="rcpt", action="reject 550")
    found = diagnostics_of({"10-a.policy": first, "20-b.policy": second})
    d = single(found, "W201")
    assert d.span.file == "20-b.policy"
    assert where(d) == (2, 10, 2, 11)
    assert d.related is not None
    assert (d.related.span.file, d.related.span.line, d.related.span.column) == (
        "10-a.policy", 3, 10)


@pytest.mark.parametrize(
    "first",
    [
        pytest.param("rule first dry_run:\n        when true\n        accept", id="dry-run"),
        pytest.param("rule first:\n        when true\n        log \"x\"\n        continue",
                     id="continue"),
        pytest.param("rule first:\n        when false\n        accept", id="false"),
    ],
)
def test_no_w201_after_a_rule_that_does_not_always_decide(first):
    text = f"stage mail {{\n    {first}\n    rule second:\n        when true\n" \
           "        accept\n    default accept\n}\n"
    assert diagnostics(text) == []


def test_w202_missing_default():
    text = "stage mail {\n    rule r:\n        when true\n        accept\n}\n"
    d = single(diagnostics(text), "W202")
    assert_warning(d, "W202")
    assert where(d) == locate(text, "mail")
    assert d.message == "stage `mail` has no `default`"


def test_w202_reported_once_for_a_stage_split_over_files():
    first = 'stage rcpt {\n    rule a:\n        when rcpt == "x@example.org"\n        accept\n}\n'
    second = 'stage rcpt {\n    rule b:\n        when rcpt == "y@example.org"\n        accept\n}\n'
    found = diagnostics_of({"10-a.policy": first, "20-b.policy": second})
    d = single(found, "W202")
    assert d.span.file == "10-a.policy"
    assert where(d) == (1, 7, 1, 11)


@pytest.mark.parametrize(("op", "always"), [("==", "false"), ("!=", "true")])
def test_w203_compare_never_none_value_with_none(op, always):
    # Fix: `comparable(address, none)` is false, so every W203 also comes with an E105 on
    # the same operator: the mistake is reported twice, once as an error.
    cond = f"sender {op} none"
    text = a_rule(cond, stage="mail")
    d = single(diagnostics(text), "W203")
    assert_warning(d, "W203")
    assert where(d) == locate(text, cond)
    assert d.message == f"`{op} none` is always {always}: this value is never none"


def test_no_w203_for_optional_values():
    text = a_rule("client.helo == none or none != tls.version", stage="ehlo")
    assert diagnostics(text) == []


def test_w204_unused_let():
    text = "let unused = 42\nstage data {\n    default accept\n}\n"
    d = single(diagnostics(text), "W204")
    assert_warning(d, "W204")
    assert where(d) == locate(text, "unused")
    assert d.message == "`let unused` is never used"


def test_w205_continue_rule_without_effect():
    text = a_rule('sender == ""', stage="mail", action="continue")
    d = single(diagnostics(text), "W205")
    assert_warning(d, "W205")
    assert where(d) == (2, 10, 2, 11)
    assert d.message == "rule `r` has no effect"


def test_no_w205_for_dry_run_or_log():
    text = (
        "stage mail {\n"
        "    rule a dry_run:\n        when true\n        continue\n"
        '    rule b:\n        when true\n        log "seen {sender}"\n        continue\n'
        "    default accept\n}\n"
    )
    assert diagnostics(text) == []


def test_w206_auth_stage_is_never_called():
    text = "stage auth {\n    default accept\n}\n"
    d = single(diagnostics(text), "W206")
    assert_warning(d, "W206")
    assert where(d) == locate(text, "auth")
    assert d.message == "Stalwart never calls hooks at the `auth` stage"


# ---------------------------------------------------------------------------------------
# whole sets


def test_shipped_policies_are_clean():
    result = load_path(POLICIES)
    assert result.diagnostics == ()
    assert result.policy_set is not None


DESIGN_EXAMPLE_CONNECTION = """\
settings {
    lookup_timeout  = 250ms
    deadline        = 2s
    on_lookup_error = tempfail 451 4.3.0 "Directory unavailable, please retry"
    quarantine_to   = "quarantine@solawi.example"
}

let trusted      = [127.0.0.0/8, ::1/128, 10.0.0.0/8]
let spam_subject = /(?i)\\b(viagra|lottery|crypto giveaway)\\b/

stage connect {
    rule trusted_network:
        when client.ip in trusted
        accept

    rule blocked_ip:
        when ip_blocked(client.ip)
        reject 550 5.7.1 "Your IP {client.ip} is blocked"

    default accept
}

stage ehlo {
    rule empty_helo:
        when client.helo == none or client.helo == ""
        reject 501 5.5.2 "Invalid EHLO/HELO argument"
    default accept
}
"""

DESIGN_EXAMPLE_LISTS = """\
stage mail {
    rule bad_sender:
        when sender != "" and not valid_address(sender)
        reject 553 5.1.7 "Invalid sender address"
    default accept
}

stage rcpt {
    rule unknown_list:
        when category(rcpt) == none
        reject 550 5.1.1 "No such mailing list: {rcpt}"

    rule may_not_post:
        when not (is_admin(sender) or subscribed(sender, category(rcpt)))
        reject 550 5.7.1 "{sender} may not post to {rcpt}"

    default accept
}

stage data {
    rule looping:
        when header("X-BeenThere") != none
        discard

    rule spam:
        when subject matches spam_subject
        quarantine "subject looks like spam"

    rule tag:
        when any r in envelope.to: category(r) != none
        add_header "X-Komm-Category" category(envelope.to[0]).name
        continue

    default accept
}
"""


def test_design_example_is_clean():
    result = compile_sources([*DIRECTORY_SOURCES,
                              Source("10-connection.policy", DESIGN_EXAMPLE_CONNECTION),
                              Source("20-lists.policy", DESIGN_EXAMPLE_LISTS)], schema=SCHEMA)
    assert result.diagnostics == ()
    assert result.policy_set is not None


def test_errors_from_every_rule_are_reported():
    text = (
        "stage rcpt {\n"
        "    rule one:\n        when ip_blockd(client.ip)\n        accept\n"
        '    rule two:\n        when sendr == "x"\n        accept\n'
        '    rule three:\n        when client.port == "25"\n        reject 451\n'
        "    default accept\n"
        "}\n"
    )
    found = diagnostics(text)
    assert codes(found) == ["E101", "E102", "E105", "E120"]
    assert [d.span.line for d in found] == [3, 6, 9, 10]


@pytest.mark.parametrize(
    ("stage", "cond", "code"),
    [
        pytest.param("mail", 'sendr == "x"', "E102", id="unknown-name-in-comparison"),
        pytest.param("mail", "not sendr", "E102", id="unknown-name-as-condition"),
        pytest.param("mail", "len(sendr) > 1", "E102", id="unknown-name-as-argument"),
        pytest.param("connect", "ip_blockd(client.ip) and true", "E101",
                     id="unknown-function-in-and"),
        pytest.param("connect", "client.helo", "E103", id="unavailable-field-as-condition"),
        pytest.param("connect", 'client.helo starts_with "x"', "E103",
                     id="unavailable-field-in-comparison"),
        pytest.param("mail", 'lower(sender, 1) == 1', "E104", id="arity-in-comparison"),
        pytest.param("rcpt", 'category(rcpt).nam == 1', "E107", id="record-field-compared"),
        pytest.param("ehlo", "client.hello matches /x/", "E107", id="request-field-matched"),
        pytest.param("data", '[1, "a"][0] == 1', "E105", id="mixed-list-indexed"),
        pytest.param("data", 'any x in sender: x == 1', "E105", id="quantifier-variable"),
    ],
)
def test_an_erroneous_expression_is_reported_once(stage, cond, code):
    text = a_rule(cond, stage=stage)
    assert codes(diagnostics(text)) == [code]


def test_diagnostics_are_sorted_by_file_line_column():
    # Generated out of order: settings before stages, W204 last, E111 while collecting.
    first = (
        "let unused = 1\n"
        + a_rule("zzzz", stage="mail")
        + "settings {\n    colour = 1\n}\n"
    )
    second = ('stage rcpt {\n    rule a:\n        when ip_blockd(client.ip)\n'
              '        accept\n    default accept\n}\nlet unused = 2\n')
    found = diagnostics_of({"10-a.policy": first, "20-b.policy": second})
    keys = [(d.span.file, d.span.line, d.span.column) for d in found]
    assert keys == sorted(keys)
    assert codes(found) == ["W204", "E102", "E130", "E101", "E111"]
