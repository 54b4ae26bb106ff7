"""The parser: text → AST, and positioned syntax diagnostics.

Three tables drive most of this file:

* ACCEPTED expressions, rules and whole files, each with the AST it must produce (spans are
  excluded from node equality, so the expected trees are written by hand);
* REJECTED snippets, each with the exact `line:col`, code and a message fragment;
* errors inside `{…}` string templates, which must point into the file, not into the
  embedded expression.

A meta-test checks that the accepted snippets together use every rule and terminal of the
grammar, so a construct added to `policy.lark` without a test here makes the suite fail.
"""

from __future__ import annotations

import inspect
import ipaddress
import re

import pytest
from lark import Token, Tree

from komm_policy import nodes as n
from komm_policy import parser as parser_module
from komm_policy import parser_expressions as parser_expressions_module
from komm_policy import syntax_errors as syntax_errors_module
from komm_policy.errors import Diagnostic, Severity, Span, render
from komm_policy.grammar import lark_parser as _parser
from komm_policy.parser import ParseResult, keywords, parse
from komm_policy.policyset import compile_text
from komm_policy.regex import Regex, compile_regex

# ---------------------------------------------------------------------------------------
# Helpers


def S(value: str) -> n.Literal:
    return n.Literal(kind="string", value=value)


def I(value: int) -> n.Literal:  # noqa: E743 - short names keep the tables readable
    return n.Literal(kind="int", value=value)


def N(name: str) -> n.Name:
    return n.Name(name=name)


def A(obj: n.Expr, name: str) -> n.Attr:
    return n.Attr(obj=obj, name=name)


def Call(func: str, *args: n.Expr) -> n.Call:
    return n.Call(func=func, args=tuple(args))


def Cmp(op: str, left: n.Expr, right: n.Expr) -> n.Compare:
    return n.Compare(op=op, left=left, right=right)  # type: ignore[arg-type]


def And(*operands: n.Expr) -> n.BoolOp:
    return n.BoolOp(op="and", operands=operands)


def Or(*operands: n.Expr) -> n.BoolOp:
    return n.BoolOp(op="or", operands=operands)


def Not(operand: n.Expr) -> n.Not:
    return n.Not(operand=operand)


def L(*items: n.Expr) -> n.ListExpr:
    return n.ListExpr(items=items)


def Ix(obj: n.Expr, index: n.Expr) -> n.Index:
    return n.Index(obj=obj, index=index)


def T(*parts: str | n.Expr) -> n.Template:
    return n.Template(parts=parts)


def Q(kind: str, var: str, iterable: n.Expr, body: n.Expr) -> n.Quantifier:
    return n.Quantifier(kind=kind, var=var, iterable=iterable, body=body)  # type: ignore[arg-type]


def ip(text: str) -> n.Literal:
    return n.Literal(kind="ip", value=ipaddress.ip_address(text))


def net(text: str) -> n.Literal:
    return n.Literal(kind="cidr", value=ipaddress.ip_network(text))


def rx(pattern: str, flags: str = "") -> n.Literal:
    return n.Literal(kind="regex", value=compile_regex(pattern, flags))


def dur(seconds: float) -> n.Literal:
    return n.Literal(kind="duration", value=seconds)


def size(count: int) -> n.Literal:
    return n.Literal(kind="size", value=count)


TRUE = n.Literal(kind="bool", value=True)
FALSE = n.Literal(kind="bool", value=False)
NONE = n.Literal(kind="none", value=None)
ACCEPT = n.Action(kind="accept")


def in_rule(cond: str) -> str:
    """A file whose only rule has condition `cond`, which starts at line 3, column 10."""
    return f"stage data {{\n  rule r:\n    when {cond}\n    accept\n}}\n"


def ok(text: str) -> n.PolicyFile:
    result = parse(text, "t.policy")
    assert result.diagnostics == (), [str(d) for d in result.diagnostics]
    assert result.file is not None
    return result.file


def first_error(text: str) -> Diagnostic:
    result = parse(text, "t.policy")
    errors = [d for d in result.diagnostics if d.is_error]
    assert errors, f"expected a syntax error for {text!r}"
    assert result.file is None
    return errors[0]


def when_of(text: str) -> n.Expr:
    stage = ok(text).items[0]
    assert isinstance(stage, n.StageBlock)
    rule = stage.items[0]
    assert isinstance(rule, n.Rule)
    return rule.when


# ---------------------------------------------------------------------------------------
# Accepted: expressions

EXPRESSIONS: list[tuple[str, n.Expr]] = [
    # names, fields, calls, indexing
    ("sender", N("sender")),
    ("client.ip", A(N("client"), "ip")),
    ("a.b.c", A(A(N("a"), "b"), "c")),
    ("f()", Call("f")),
    ("valid_address(sender)", Call("valid_address", N("sender"))),
    ("subscribed(sender, category(rcpt),)",
     Call("subscribed", N("sender"), Call("category", N("rcpt")))),
    ("category(rcpt).name", A(Call("category", N("rcpt")), "name")),
    ('lookup("t", a = sender, b = 1,).c',
     A(n.Call(func="lookup", args=(S("t"),), kwargs=(n.Keyword(name="a", value=N("sender")),
                                                     n.Keyword(name="b", value=I(1)))),
       "c")),
    ("envelope.to[0]", Ix(A(N("envelope"), "to"), I(0))),
    ("x[0][1]", Ix(Ix(N("x"), I(0)), I(1))),
    ("x[len(y)]", Ix(N("x"), Call("len", N("y")))),
    ("headers(\"To\")[0].name", A(Ix(Call("headers", S("To")), I(0)), "name")),
    # lists
    ("[]", L()),
    ("[1]", L(I(1))),
    ("[1, 2, 3,]", L(I(1), I(2), I(3))),
    ('["a", [], [none],]', L(S("a"), L(), L(NONE))),
    ("[\n  1,\n  2,\n]", L(I(1), I(2))),
    # strings, escapes, templates
    ('"plain"', S("plain")),
    ('""', S("")),
    (r'"q\"b\\s\nn\tt"', S('q"b\\s\nn\tt')),
    ('"{{literal}} braces"', S("{literal} braces")),
    ('"}} and {{"', S("} and {")),
    ('"a # not a comment"', S("a # not a comment")),
    ('"é ✓ 日本"', S("é ✓ 日本")),
    ('"hi {sender}!"', T("hi ", N("sender"), "!")),
    ('"{lower(sender)}"', T(Call("lower", N("sender")))),
    ('"{a}{b.c}"', T(N("a"), A(N("b"), "c"))),
    ('"{{{x}}}"', T("{", N("x"), "}")),
    ('"n={ len(envelope.to) } \\t"', T("n=", Call("len", A(N("envelope"), "to")), " \t")),
    ('"{"inner"}"', T(S("inner"))),
    # numbers and constants
    ("0", I(0)),
    ("42", I(42)),
    ("-7", I(-7)),
    ("true", TRUE),
    ("false", FALSE),
    ("none", NONE),
    # addresses and networks
    ("192.0.2.1", ip("192.0.2.1")),
    ("::1", ip("::1")),
    ("::", ip("::")),
    ("2001:db8::42", ip("2001:db8::42")),
    ("fe80::1:2", ip("fe80::1:2")),
    ("::ffff:1.2.3.4", ip("1.2.3.4")),  # IPv4-mapped: the IPv4 address it denotes
    ("10.0.0.0/8", net("10.0.0.0/8")),
    ("192.0.2.1/32", net("192.0.2.1/32")),
    ("::1/128", net("::1/128")),
    ("2001:db8::/32", net("2001:db8::/32")),
    ("::ffff:10.0.0.0/104", net("10.0.0.0/8")),
    # regexes
    ("/spam/", rx("spam")),
    (r"/a\/b/", rx(r"a\/b")),
    ("/x/i", rx("x", "i")),
    ("/x/imsx", rx("x", "imsx")),
    (r"/(?i)\b(viagra|lottery)\b/", rx(r"(?i)\b(viagra|lottery)\b")),
    (r"/\A\s*\Z/", rx(r"\A\s*\Z")),
    # durations
    ("250ms", dur(0.25)),
    ("2s", dur(2.0)),
    ("5m", dur(300.0)),
    ("1h", dur(3600.0)),
    ("1d", dur(86400.0)),
    # sizes
    ("512B", size(512)),
    ("1b", size(1)),
    ("10KB", size(10_000)),
    ("10MB", size(10_000_000)),
    ("2GB", size(2_000_000_000)),
    ("1KiB", size(1024)),
    ("10MiB", size(10 * 1024**2)),
    ("1GiB", size(1024**3)),
    ("10kb", size(10_000)),
    ("5mib", size(5 * 1024**2)),
    # comparisons, every operator
    ("a == b", Cmp("==", N("a"), N("b"))),
    ("a != b", Cmp("!=", N("a"), N("b"))),
    ("a < b", Cmp("<", N("a"), N("b"))),
    ("a <= b", Cmp("<=", N("a"), N("b"))),
    ("a > b", Cmp(">", N("a"), N("b"))),
    ("a >= b", Cmp(">=", N("a"), N("b"))),
    ("a in b", Cmp("in", N("a"), N("b"))),
    ("a not in b", Cmp("not in", N("a"), N("b"))),
    ("a matches /x/", Cmp("matches", N("a"), rx("x"))),
    ('a contains "b"', Cmp("contains", N("a"), S("b"))),
    ('a starts_with "b"', Cmp("starts_with", N("a"), S("b"))),
    ('a ends_with "b"', Cmp("ends_with", N("a"), S("b"))),
    ("a==b", Cmp("==", N("a"), N("b"))),
    ("x == -1", Cmp("==", N("x"), I(-1))),
    ("message.size > 10MB", Cmp(">", A(N("message"), "size"), size(10_000_000))),
    ("client.ip in [10.0.0.0/8, ::1/128]",
     Cmp("in", A(N("client"), "ip"), L(net("10.0.0.0/8"), net("::1/128")))),
    # boolean structure and precedence
    ("a and b", And(N("a"), N("b"))),
    ("a and b and c", And(N("a"), N("b"), N("c"))),
    ("a or b or c", Or(N("a"), N("b"), N("c"))),
    ("a or b and c", Or(N("a"), And(N("b"), N("c")))),
    ("a and b or c", Or(And(N("a"), N("b")), N("c"))),
    ("(a or b) and c", And(Or(N("a"), N("b")), N("c"))),
    ("not a", Not(N("a"))),
    ("not not a", Not(Not(N("a")))),
    ("not a == b", Not(Cmp("==", N("a"), N("b")))),
    ("not a and b", And(Not(N("a")), N("b"))),
    ("a and not b", And(N("a"), Not(N("b")))),
    ("not (a or b)", Not(Or(N("a"), N("b")))),
    ("((a))", N("a")),
    ("(a == b)", Cmp("==", N("a"), N("b"))),
    ("a\n      and\n      b", And(N("a"), N("b"))),
    # quantifiers
    ("any x in xs: x == 1", Q("any", "x", N("xs"), Cmp("==", N("x"), I(1)))),
    ('all r in envelope.to: domain(r) == "example.org"',
     Q("all", "r", A(N("envelope"), "to"),
       Cmp("==", Call("domain", N("r")), S("example.org")))),
    ("not any x in xs: x", Not(Q("any", "x", N("xs"), N("x")))),
    ("not all x in xs: x", Not(Q("all", "x", N("xs"), N("x")))),
    ("any x in xs: a and b", Q("any", "x", N("xs"), And(N("a"), N("b")))),
    ("any x in a or b: c", Q("any", "x", Or(N("a"), N("b")), N("c"))),
    ("(any x in xs: x) and y", And(Q("any", "x", N("xs"), N("x")), N("y"))),
    ("any x in xs: any y in x: y == 1",
     Q("any", "x", N("xs"), Q("any", "y", N("x"), Cmp("==", N("y"), I(1))))),
    ("any x in [1, 2]: x == 1", Q("any", "x", L(I(1), I(2)), Cmp("==", N("x"), I(1)))),
]


@pytest.mark.parametrize(("source", "expected"), EXPRESSIONS,
                         ids=[s for s, _ in EXPRESSIONS])
def test_accepted_expression(source, expected):
    assert when_of(in_rule(source)) == expected


def test_literal_values_have_the_runtime_types():
    # equality above compares values; pin the exact types too (an integer is not a float, an
    # IPv4-mapped address is the IPv4Address)
    lst = when_of(in_rule('[1, 1s, 1KB, ::ffff:1.2.3.4, 10.0.0.0/8, "s", /r/]'))
    assert isinstance(lst, n.ListExpr)
    values = [item.value for item in lst.items]  # type: ignore[union-attr]
    assert [type(v) for v in values] == [
        int, float, int, ipaddress.IPv4Address, ipaddress.IPv4Network, str, Regex]
    texts = [item.text for item in lst.items]  # type: ignore[union-attr]
    assert texts == ["1", "1s", "1KB", "::ffff:1.2.3.4", "10.0.0.0/8", '"s"', "/r/"]


# ---------------------------------------------------------------------------------------
# Accepted: rules (actions, modifications, statements, continue, dry_run, on error)


def R(final: n.Action | n.Continue, *statements: n.Statement, when: n.Expr = TRUE,
      on_error: n.Action | n.Continue | None = None, dry_run: bool = False,
      name: str = "r") -> n.Rule:
    return n.Rule(name=name, when=when, statements=statements, final=final,
                  on_error=on_error, dry_run=dry_run)


def Act(kind: str, code: int | None = None, enhanced: str | None = None,
        message: n.Literal | n.Template | None = None) -> n.Action:
    return n.Action(kind=kind, code=code, enhanced=enhanced, message=message)  # type: ignore[arg-type]


def Mod(kind: str, header: str | None = None, value: n.Expr | None = None,
        index: int | None = None) -> n.Modification:
    return n.Modification(kind=kind, header=header, value=value, index=index)  # type: ignore[arg-type]


CONT = n.Continue()

_REPLY_VARIANTS = [
    ("", {}),
    (" 550", {"code": 550}),
    (" 5.7.1", {"enhanced": "5.7.1"}),
    (' "go away"', {"message": S("go away")}),
    (" 550 5.7.1", {"code": 550, "enhanced": "5.7.1"}),
    (' 550 "go away"', {"code": 550, "message": S("go away")}),
    (' 5.7.1 "go away"', {"enhanced": "5.7.1", "message": S("go away")}),
    (' 550 5.7.1 "go away"', {"code": 550, "enhanced": "5.7.1", "message": S("go away")}),
]

RULES: list[tuple[str, n.Rule]] = [
    *[(f"rule r: when true {kind}{text}", R(Act(kind, **parts)))
      for kind in ("reject", "tempfail") for text, parts in _REPLY_VARIANTS],
    ("rule r: when true accept", R(ACCEPT)),
    ("rule r: when true discard", R(Act("discard"))),
    ("rule r: when true quarantine", R(Act("quarantine"))),
    ('rule r: when true quarantine "looks like spam"',
     R(Act("quarantine", message=S("looks like spam")))),
    ('rule r: when true quarantine "subject: {subject}"',
     R(Act("quarantine", message=T("subject: ", N("subject"))))),
    ('rule r: when true reject 550 5.7.1 "{sender} may not post to {rcpt}"',
     R(Act("reject", 550, "5.7.1", T(N("sender"), " may not post to ", N("rcpt"))))),
    ('rule r: when true tempfail 451 4.3.0 "Directory unavailable, please retry"',
     R(Act("tempfail", 451, "4.3.0", S("Directory unavailable, please retry")))),
    ("rule r dry_run: when true reject", R(Act("reject"), dry_run=True)),
    ("rule r: when true log sender continue", R(CONT, n.Log(message=N("sender")))),
    ('rule r: when true log "saw {sender}" accept',
     R(ACCEPT, n.Log(message=T("saw ", N("sender"))))),
    ("rule r: when true accept on error accept", R(ACCEPT, on_error=ACCEPT)),
    ('rule r: when true reject on error tempfail 451 4.3.0 "later"',
     R(Act("reject"), on_error=Act("tempfail", 451, "4.3.0", S("later")))),
    ("rule r: when true discard on error continue", R(Act("discard"), on_error=CONT)),
    ("rule r: when true continue on error continue", R(CONT, on_error=CONT)),
    # the eight modifications
    ('rule r: when true add_header "X-Komm" "yes" continue',
     R(CONT, Mod("add_header", "X-Komm", S("yes")))),
    ('rule r: when true add_header "X-Komm-Category" category(envelope.to[0]).name continue',
     R(CONT, Mod("add_header", "X-Komm-Category",
                 A(Call("category", Ix(A(N("envelope"), "to"), I(0))), "name")))),
    ('rule r: when true insert_header "X-A" "v" continue',
     R(CONT, Mod("insert_header", "X-A", S("v")))),
    ('rule r: when true insert_header "X-A" "v" at 0 continue',
     R(CONT, Mod("insert_header", "X-A", S("v"), 0))),
    ('rule r: when true insert_header "X-A" "v {sender}" at 3 continue',
     R(CONT, Mod("insert_header", "X-A", T("v ", N("sender")), 3))),
    ('rule r: when true change_header "Subject" "[list] {subject}" continue',
     R(CONT, Mod("change_header", "Subject", T("[list] ", N("subject"))))),
    ('rule r: when true change_header "Subject" "x" at 2 continue',
     R(CONT, Mod("change_header", "Subject", S("x"), 2))),
    ('rule r: when true delete_header "X-Spam" continue',
     R(CONT, Mod("delete_header", "X-Spam"))),
    ('rule r: when true delete_header "X-Spam" at 1 continue',
     R(CONT, Mod("delete_header", "X-Spam", index=1))),
    ('rule r: when true insert_header "X-A" "v" at -1 continue',
     R(CONT, Mod("insert_header", "X-A", S("v"), -1))),
    ('rule r: when true change_from "bounce@example.org" continue',
     R(CONT, Mod("change_from", value=S("bounce@example.org")))),
    ('rule r: when true add_recipient "archive@example.org" continue',
     R(CONT, Mod("add_recipient", value=S("archive@example.org")))),
    ("rule r: when true delete_recipient rcpt continue",
     R(CONT, Mod("delete_recipient", value=N("rcpt")))),
    ('rule r: when true replace_contents "replaced" accept',
     R(ACCEPT, Mod("replace_contents", value=S("replaced")))),
    # several statements keep their order; a modification may end with a terminal action
    ('rule tag:\n    when subject contains "x"\n    add_header "X-A" "1"\n'
     '    log "tagged"\n    delete_header "X-B"\n    accept\n    on error continue',
     R(ACCEPT, Mod("add_header", "X-A", S("1")), n.Log(message=S("tagged")),
       Mod("delete_header", "X-B"), when=Cmp("contains", N("subject"), S("x")),
       on_error=CONT, name="tag")),
]


@pytest.mark.parametrize(("source", "expected"), RULES, ids=[s for s, _ in RULES])
def test_accepted_rule(source, expected):
    stage = ok(f"stage data {{\n  {source}\n}}\n").items[0]
    assert isinstance(stage, n.StageBlock)
    assert stage.items == (expected,)


# ---------------------------------------------------------------------------------------
# Accepted: whole files (settings, let, stage, default, comments, line endings, BOM)

_POLICY_LF = """\
# a comment on the first line
settings {
    lookup_timeout  = 250ms          # per lookup
    deadline        = 2s
    on_lookup_error = tempfail 451 4.3.0 "Directory unavailable"
    quarantine_to   = "quarantine@example.org"
}

let trusted = [127.0.0.0/8, ::1/128, 10.0.0.0/8]   # trailing comment

stage connect {
    # inside a block
    rule trusted_network:
        when client.ip in trusted   # after a condition
        accept
    default accept
}
# at the end, without a newline"""

_POLICY_AST = (
    n.SettingsBlock(settings=(
        n.Setting(name="lookup_timeout", value=dur(0.25)),
        n.Setting(name="deadline", value=dur(2.0)),
        n.Setting(name="on_lookup_error",
                  value=Act("tempfail", 451, "4.3.0", S("Directory unavailable"))),
        n.Setting(name="quarantine_to", value=S("quarantine@example.org")),
    )),
    n.Let(name="trusted", value=L(net("127.0.0.0/8"), net("::1/128"), net("10.0.0.0/8"))),
    n.StageBlock(name="connect", items=(
        R(ACCEPT, when=Cmp("in", A(N("client"), "ip"), N("trusted")),
          name="trusted_network"),
        n.Default(action=ACCEPT),
    )),
)

FILES: list[tuple[str, str, tuple[n.Item, ...]]] = [
    ("empty", "", ()),
    ("blank", "  \n\n\t \n", ()),
    ("only-comment", "# nothing here\n", ()),
    ("comment-without-newline", "# nothing here", ()),
    ("empty-settings", "settings {}", (n.SettingsBlock(settings=()),)),
    ("settings-action-and-values",
     'settings {\n  on_lookup_error = reject 550 "no"\n  deadline = 2s\n  x = [1, 2]\n}',
     (n.SettingsBlock(settings=(
         n.Setting(name="on_lookup_error", value=Act("reject", 550, message=S("no"))),
         n.Setting(name="deadline", value=dur(2.0)),
         n.Setting(name="x", value=L(I(1), I(2))),
     )),)),
    ("settings-on-one-line", "settings { a = accept b = discard c = quarantine }",
     (n.SettingsBlock(settings=(
         n.Setting(name="a", value=ACCEPT),
         n.Setting(name="b", value=Act("discard")),
         n.Setting(name="c", value=Act("quarantine")),
     )),)),
    ("let", "let x = 1", (n.Let(name="x", value=I(1)),)),
    ("let-regex", "let spam = /(?i)viagra/", (n.Let(name="spam", value=rx("(?i)viagra")),)),
    ("def", "def may_post(addr, list) = is_admin(addr) or list == none",
     (n.FunctionDef(name="may_post", params=("addr", "list"),
                    body=Or(Call("is_admin", N("addr")), Cmp("==", N("list"), NONE))),)),
    ("def-without-parameters", "def two() = 2", (n.FunctionDef(name="two", params=(),
                                                                 body=I(2)),)),
    ("def-trailing-comma-across-lines", "def f(\n  a,\n  b,\n) =\n  a == b",
     (n.FunctionDef(name="f", params=("a", "b"), body=Cmp("==", N("a"), N("b"))),)),
    ("empty-stage", "stage connect {}", (n.StageBlock(name="connect", items=()),)),
    ("default-only", 'stage data {\n  default reject 550 5.7.1 "no"\n}',
     (n.StageBlock(name="data", items=(
         n.Default(action=Act("reject", 550, "5.7.1", S("no"))),)),)),
    ("default-quarantine-reason", 'stage data { default quarantine "held" }',
     (n.StageBlock(name="data", items=(
         n.Default(action=Act("quarantine", message=S("held"))),)),)),
    ("no-whitespace", "stage data{rule r:when true accept default accept}",
     (n.StageBlock(name="data", items=(R(ACCEPT), n.Default(action=ACCEPT))),)),
    ("order-is-kept",
     "let a = 1\nstage ehlo { default accept }\nsettings { deadline = 1s }\nlet b = 2\n"
     "stage mail { default discard }",
     (n.Let(name="a", value=I(1)),
      n.StageBlock(name="ehlo", items=(n.Default(action=ACCEPT),)),
      n.SettingsBlock(settings=(n.Setting(name="deadline", value=dur(1.0)),)),
      n.Let(name="b", value=I(2)),
      n.StageBlock(name="mail", items=(n.Default(action=Act("discard")),)))),
    ("tabs", "stage\tdata\t{\n\trule\tr:\twhen\ttrue\taccept\n}",
     (n.StageBlock(name="data", items=(R(ACCEPT),)),)),
    ("full-lf", _POLICY_LF, _POLICY_AST),
    ("full-crlf", _POLICY_LF.replace("\n", "\r\n"), _POLICY_AST),
    ("full-bom", "\ufeff" + _POLICY_LF, _POLICY_AST),
    ("full-bom-crlf", "\ufeff" + _POLICY_LF.replace("\n", "\r\n"), _POLICY_AST),
]


@pytest.mark.parametrize(("source", "expected"), [(s, e) for _, s, e in FILES],
                         ids=[i for i, _, _ in FILES])
def test_accepted_file(source, expected):
    policy = ok(source)
    assert policy.path == "t.policy"
    assert policy.items == expected


def test_reserved_words_are_keywords_of_the_grammar():
    words = keywords()
    for word in ("settings", "let", "def", "stage", "rule", "when", "default", "on", "error",
                 "accept", "reject", "tempfail", "discard", "quarantine", "continue",
                 "dry_run", "log", "at", "any", "all", "and", "or", "not", "in", "matches",
                 "contains", "starts_with", "ends_with", "true", "false", "none",
                 "add_header", "insert_header", "change_header", "delete_header",
                 "change_from", "add_recipient", "delete_recipient", "replace_contents"):
        assert word in words
    assert "sender" not in words
    assert "lower" not in words


# ---------------------------------------------------------------------------------------
# Coverage of the grammar by the accepted tables


def _all_accepted_sources() -> list[str]:
    return ([in_rule(s) for s, _ in EXPRESSIONS]
            + [f"stage data {{\n  {s}\n}}\n" for s, _ in RULES]
            + [s for _, s, _ in FILES])


def _tree_names_and_tokens(text: str) -> tuple[set[str], set[str]]:
    parser = _parser()
    interactive = parser.parse_interactive(text.removeprefix("\ufeff"), start="start")
    tokens = {token.type for token in interactive.iter_parse()}
    tree = interactive.feed_eof()
    names = {sub.data for sub in tree.iter_subtrees() if isinstance(sub, Tree)}
    return {str(name) for name in names}, tokens


def test_accepted_tables_cover_every_grammar_construct():
    parser = _parser()
    constructs = set()
    for rule in parser.rules:
        if rule.alias:
            constructs.add(rule.alias)
        elif not rule.options.expand1 and not rule.origin.name.startswith("_"):
            constructs.add(rule.origin.name)
    terminals = {t.name for t in parser.terminals} - {"WS", "COMMENT"}
    seen_names: set[str] = set()
    seen_tokens: set[str] = set()
    for source in _all_accepted_sources():
        names, tokens = _tree_names_and_tokens(source)
        seen_names |= names
        seen_tokens |= tokens
    assert constructs - seen_names == set()
    assert terminals - seen_tokens == set()
    # a sanity check that the introspection itself found something
    assert {"quantifier", "compare", "insert_header", "on_error", "size"} <= constructs
    assert {"IPV6", "ENHANCED", "DRY_RUN", "REGEX"} <= terminals


# ---------------------------------------------------------------------------------------
# Spans


def test_spans_of_names_rules_and_actions():
    text = 'stage data {\n  rule tag:\n    when sender == "a"\n    reject 550 5.7.1 "no"\n}\n'
    stage = ok(text).items[0]
    assert isinstance(stage, n.StageBlock)
    assert stage.name_span == Span("t.policy", 1, 7, 1, 11)
    rule = stage.items[0]
    assert isinstance(rule, n.Rule)
    assert rule.name_span == Span("t.policy", 2, 8, 2, 11)
    assert rule.span.line == 2 and rule.span.column == 3
    assert isinstance(rule.when, n.Compare)
    assert rule.when.left.span == Span("t.policy", 3, 10, 3, 16)
    assert rule.when.op_span == Span("t.policy", 3, 17, 3, 19)
    assert rule.when.right.span == Span("t.policy", 3, 20, 3, 23)
    action = rule.final
    assert isinstance(action, n.Action)
    assert action.span.line == 4 and action.span.column == 5
    assert action.code_span == Span("t.policy", 4, 12, 4, 15)
    assert action.enhanced_span == Span("t.policy", 4, 16, 4, 21)


def test_template_expression_spans_point_into_the_file():
    text = 'stage data {\n  rule r:\n    when true\n    reject 550 5.7.1 "hi {client.ip}"\n}\n'
    rule = ok(text).items[0].items[0]  # type: ignore[union-attr]
    template = rule.final.message
    assert isinstance(template, n.Template)
    assert template.span.line == 4 and template.span.column == 22
    embedded = template.parts[1]
    assert isinstance(embedded, n.Attr)
    assert embedded.span == Span("t.policy", 4, 27, 4, 36)
    assert embedded.name_span == Span("t.policy", 4, 34, 4, 36)


@pytest.mark.parametrize("prefix", ["", "\ufeff"], ids=["plain", "bom"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_spans_are_the_same_with_crlf_and_bom(prefix, newline):
    text = prefix + newline.join(["stage data {", "  rule r:", "    when sender", "    accept",
                                  "}"])
    rule = ok(text).items[0].items[0]  # type: ignore[union-attr]
    assert rule.name_span == Span("t.policy", 2, 8, 2, 9)
    assert rule.when.span == Span("t.policy", 3, 10, 3, 16)
    stage = ok(text).items[0]
    assert stage.name_span == Span("t.policy", 1, 7, 1, 11)  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------
# Rejected: every syntax error code, with its exact position

_BAD_REGEX = "stage data {\n  rule r: when x matches /a(b/ accept }"
_BAD_REGEX2 = "stage data {\n  rule r: when x matches /abc)/ accept }"

REJECTED: list[tuple[str, str, str, int, int, str]] = [
    # id, source, code, line, column, message fragment
    # E018 a lone CR: a comment would run to the end of a CR-only file (was accepted
    # inside a comment, which read the rest of that "line" as comment too)
    ("E018-lone-cr-in-a-comment", "# per\rlookup\nstage data { default accept }", "E018",
     1, 6, "carriage return without a line feed"),
    ("E018-cr-only-file", "# head\rstage data {\r  default accept\r}\r", "E018", 1, 7,
     "lines end with LF or CRLF"),
    # E001 generic unexpected token
    ("E001-junk-at-top-level", "foo", "E001", 1, 1,
     "unexpected name `foo`; a policy file holds `settings`, `let`, `def` and `stage` "
     "blocks"),
    ("E001-default-without-action", "stage data {\n  rule r: when x == 1 accept\n  default\n}",
     "E001", 4, 1,
     "unexpected `}`; expected an action (accept, reject, tempfail, discard, quarantine)"),
    ("E001-unclosed-list", "stage data { rule r: when x in [1, 2 accept }", "E001", 1, 38,
     "unexpected `accept`; expected `,` or `]`"),
    ("E001-unclosed-call", "stage data { rule r: when f(1 accept }", "E001", 1, 31,
     "unexpected `accept`; expected `)` or `,`"),
    ("E001-rule-without-colon", "stage data { rule r when true accept }", "E001", 1, 21,
     "unexpected `when`; expected `:` or `dry_run`"),
    ("E001-stage-without-name", "stage {", "E001", 1, 7, "unexpected `{`; expected a name"),
    ("E001-at-needs-a-number",
     'stage data { rule r: when true insert_header "X" "v" at x continue }', "E001", 1, 57,
     "unexpected name `x`; expected a number"),
    ("E001-header-name-must-be-a-string",
     'stage data { rule r: when true add_header x "v" continue }', "E001", 1, 43,
     "unexpected name `x`; expected a string"),
    ("E001-two-messages", 'stage data { rule r: when true reject 550 5.7.1 "a" "b" }',
     "E001", 1, 53, 'unexpected string "b"; expected `default`, `on`, `rule` or `}`'),
    ("E001-let-two-values", "let x = 1 2", "E001", 1, 11, "unexpected `2`"),
    ("E001-bad-stage-item", "stage data {\n  fn f(x): x\n}", "E001", 2, 3,
     "unexpected name `fn`; expected `default`, `rule` or `}`"),
    # E002 unexpected end of file
    ("E002-eof-in-condition", "stage data {\n  rule r:\n    when x ==\n", "E002", 3, 14,
     "unexpected end of file; expected an expression"),
    ("E002-eof-in-condition-crlf", "stage data {\r\n  rule r:\r\n    when x ==\r\n", "E002",
     3, 14, "unexpected end of file; expected an expression"),
    # A missing `}` is reported at the `{` it leaves open (the end of file is related).
    ("E002-unclosed-stage", "stage data {\n  rule r: when x == 1 accept\n", "E002", 1, 12,
     "`{` of `stage data` is never closed"),
    ("E002-unclosed-stage-trailing-blank-lines",
     "stage data {\n  rule r: when true accept\n\n\n   \n", "E002", 1, 12,
     "`{` of `stage data` is never closed"),
    ("E002-unclosed-stage-one-line", "stage data {", "E002", 1, 12,
     "`{` of `stage data` is never closed"),
    ("E002-unclosed-settings", "settings {\n  deadline = 2s\n", "E002", 1, 10,
     "`{` of `settings` is never closed"),
    ("E002-unclosed-stage-before-next", "stage connect {\n  default accept\n"
     "stage mail { default accept }\n", "E002", 1, 15,
     "`{` of `stage connect` is not closed before the next `stage`"),
    ("E002-unclosed-stage-before-def", "stage connect {\n  default accept\ndef f(x) = x\n",
     "E002", 1, 15, "`{` of `stage connect` is not closed before the next `def`"),
    ("E002-unclosed-stage-braces-in-comment-string-regex",
     'stage data {\n  # }\n  rule r: when subject() matches /a{2}/ and subject() == "}}"'
     ' accept\n', "E002", 1, 12, "`{` of `stage data` is never closed"),
    ("E002-let-without-value", "let x =", "E002", 1, 8,
     "unexpected end of file; expected an expression"),
    # E003 unclosed string
    ("E003-unclosed-string", 'stage data {\n  rule r: when x == "abc\n accept }', "E003", 2, 21,
     "unclosed string"),
    ("E003-unclosed-reply", 'stage data {\n  rule r: when true\n    reject 550 "no end\n}',
     "E003", 3, 16, "unclosed string"),
    # E004 unclosed regex
    ("E004-unclosed-regex", "stage data {\n  rule r: when x matches /abc\n accept }", "E004",
     2, 26, "unclosed regex"),
    ("E004-empty-regex", "stage data { rule r: when x matches // accept }", "E004", 1, 37,
     "unclosed regex"),
    # E005 `=` for `==`
    ("E005-assign-for-compare", in_rule("x = 1"), "E005", 3, 12, "`=` is not a comparison"),
    ("E005-in-parentheses", in_rule("(x = 1)"), "E005", 3, 13, "`=` is not a comparison"),
    # E006 missing when
    ("E006-missing-when", "stage data {\n  rule r:\n    x == 1 accept\n}", "E006", 3, 5,
     "missing `when` before name `x`"),
    ("E006-missing-when-literal", "stage data {\n  rule r: true accept\n}", "E006", 2, 11,
     "missing `when` before `true`"),
    # E007 rule without action
    ("E007-next-is-default", "stage data {\n  rule r: when x == 1\n  default accept\n}",
     "E007", 3, 3, "rule `r` has no action: expected an action, a modification or "
     "`continue`, found name `default`"),
    ("E007-block-ends", "stage data {\n  rule r: when x == 1\n}", "E007", 3, 1,
     "rule `r` has no action"),
    ("E007-typo-in-action", "stage data {\n  rule r: when x == 1 accepts }", "E007", 2, 23,
     "rule `r` has no action: expected an action, a modification or `continue`, "
     "found name `accepts`"),
    ("E007-modification-without-final",
     'stage data {\n  rule tag: when true\n    add_header "X-A" "b"\n}', "E007", 4, 1,
     "rule `tag` has no action"),
    ("E007-on-error-without-action", "stage data { rule r: when x == 1 accept on error }",
     "E007", 1, 50, "has no action"),
    # E008 unexpected character
    ("E008-dollar", "stage data {\n  rule r: when x == 1 $ accept }", "E008", 2, 23,
     "unexpected character `$`"),
    ("E008-non-ascii-in-expression", "stage data { rule r: when x == é accept }", "E008", 1,
     32, "unexpected character `é`; expected an expression"),
    ("E008-semicolon", "stage data { rule r: when x == 1 accept ; }", "E008", 1, 41,
     "unexpected character `;`"),
    # E009 invalid IP / CIDR
    ("E009-host-bits-v4", "stage data {\n  rule r: when x in [10.0.0.1/8] accept }", "E009",
     2, 22, "invalid IP address or network `10.0.0.1/8`"),
    ("E009-host-bits-v6", "stage data { rule r: when 2001:db8::1/32 accept }", "E009", 1, 27,
     "invalid IP address or network `2001:db8::1/32`"),
    ("E009-octet-too-big", "stage data {\n  rule r: when x == 300.1.1.1 accept }", "E009", 2,
     21, "invalid IP address or network `300.1.1.1`"),
    ("E009-prefix-too-long", "stage data { rule r: when x == 10.0.0.0/33 accept }", "E009",
     1, 32, "invalid IP address or network `10.0.0.0/33`"),
    ("E009-too-many-colons", "stage data { rule r: when ::: accept }", "E009", 1, 27,
     "invalid IP address or network `:::`"),
    # E017 an integer beyond 64 bits
    ("E017-integer-too-big", "stage data {\n  rule r: when x == 9223372036854775808 accept }",
     "E017", 2, 21, "integer `9223372036854775808` is outside the 64-bit integers"),
    ("E017-size-too-big", "stage data { rule r: when x > 9999999999999999999gib accept }",
     "E017", 1, 31, "size `9999999999999999999gib` is outside the 64-bit integers"),
    # E011 invalid regex, unknown flag
    ("E011-invalid-regex-points-inside", _BAD_REGEX, "E011", 2, 28,
     "invalid regex: "),
    ("E011-invalid-regex-points-inside-2", _BAD_REGEX2, "E011", 2, 30,
     "invalid regex: "),
    ("E011-unknown-flag", "stage data {\n  rule r: when x matches /ab/q accept }", "E011", 2,
     26, "unknown regex flag `q`"),
    # E012 string problems
    ("E012-unknown-escape", 'stage data {\n  rule r: when x == "a\\qb" accept }', "E012", 2,
     23, "unknown escape `\\q` in string"),
    ("E012-unicode-escape-not-supported",
     'stage data { rule r: when x == "\\u00e9" accept }', "E012", 1, 33,
     "unknown escape `\\u` in string"),
    ("E012-empty-interpolation", 'stage data {\n  rule r: when x == "a{}b" accept }', "E012",
     2, 23, "empty `{}` in string"),
    ("E012-unbalanced-open", 'stage data {\n  rule r: when x == "a{b" accept }', "E012", 2,
     21, "unbalanced `{` or `}` in string"),
    ("E012-unbalanced-close", 'stage data {\n  rule r: when x == "a}b" accept }', "E012", 2,
     21, "unbalanced `{` or `}` in string"),
    ("E012-interpolated-header-name",
     'stage data {\n  rule r: when true add_header "X-{a}" "v" continue }', "E012", 2, 32,
     "a header name cannot interpolate `{…}`"),
    # E013 nesting too deep (the position is inside the condition, checked below)
    # E014 reserved words
    ("E014-rule-name", "stage data {\n  rule accept: when true accept }", "E014", 2, 8,
     "`accept` is a reserved word and cannot be used as a rule name"),
    ("E014-rule-name-any", "stage data { rule any: when true accept }", "E014", 1, 19,
     "`any` is a reserved word and cannot be used as a rule name"),
    ("E014-let-name", "let stage = 1", "E014", 1, 5,
     "`stage` is a reserved word and cannot be used as a constant name"),
    ("E014-setting-name", "settings { stage = 1 }", "E014", 1, 12,
     "`stage` is a reserved word and cannot be used as a setting name"),
    ("E014-variable-name", "stage data { rule r: when any accept in xs: true accept }",
     "E014", 1, 31, "`accept` is a reserved word and cannot be used as a variable name"),
]


@pytest.mark.parametrize(("source", "code", "line", "column", "fragment"),
                         [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_rejected(source, code, line, column, fragment):
    diagnostic = first_error(source)
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == (
        code, line, column), str(diagnostic)
    assert fragment in diagnostic.message
    assert diagnostic.severity is Severity.ERROR
    assert diagnostic.span.file == "t.policy"


def test_every_syntax_error_code_is_in_the_table():
    emitted = set(re.findall(r'"(E0[0-9]{2})"', inspect.getsource(parser_module)
                             + inspect.getsource(parser_expressions_module)
                             + inspect.getsource(syntax_errors_module)))
    assert emitted == {f"E0{i:02d}" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 17, 18)}
    tested = {r[2] for r in REJECTED} | {"E013"}  # E013 has its own tests below
    assert emitted <= tested


@pytest.mark.parametrize(("text", "hint"), [
    ("stage data { rule r: when x in [10.0.0.1/8] accept }", "did you mean 10.0.0.0/8?"),
    ("stage data { rule r: when x in [192.168.1.77/24] accept }",
     "did you mean 192.168.1.0/24?"),
    ("stage data { rule r: when 2001:db8::1/32 accept }", "did you mean 2001:db8::/32?"),
])
def test_host_bits_set_suggests_the_network(text, hint):
    diagnostic = first_error(text)
    assert diagnostic.code == "E009"
    assert "host bits set" in diagnostic.message
    assert diagnostic.hint == hint


def test_invalid_ip_without_host_bits_has_no_network_hint():
    diagnostic = first_error("stage data { rule r: when x == 300.1.1.1 accept }")
    assert diagnostic.code == "E009"
    assert diagnostic.hint is None or "did you mean" not in diagnostic.hint


@pytest.mark.parametrize(("source", "char"), [(_BAD_REGEX, "("), (_BAD_REGEX2, ")")])
def test_invalid_regex_position_is_the_offending_character(source, char):
    diagnostic = first_error(source)
    line = source.split("\n")[diagnostic.span.line - 1]
    regex_start = line.index("/")
    assert diagnostic.span.column - 1 > regex_start  # inside the regex, not at its start
    assert line[diagnostic.span.column - 1] == char


def test_several_literal_errors_are_all_reported():
    text = 'stage data {\n  rule r: when x in [10.0.0.1/8, 300.0.0.1] and y == "\\q" accept\n}'
    result = parse(text, "t.policy")
    assert result.file is None
    line = text.split("\n")[1]
    assert [(d.code, d.span.line, d.span.column) for d in result.diagnostics] == [
        ("E009", 2, line.index("10.0.0.1") + 1),
        ("E009", 2, line.index("300.0.0.1") + 1),
        ("E012", 2, line.index("\\q") + 1),
    ]


def test_errors_carry_the_path_they_were_parsed_with():
    result = parse("stage {", "policies/10-x.policy")
    assert result.diagnostics[0].span.file == "policies/10-x.policy"


# ---------------------------------------------------------------------------------------
# E013: nesting limits


@pytest.mark.parametrize("cond", [
    "not " * 70 + "x",
    "[" * 70 + "]" * 70,
    "x" + ".a" * 70,
    "x" + "[0]" * 70,
    "any a in b: " * 70 + "x",
    "not " * 5000 + "x",
], ids=["not", "lists", "attributes", "indexes", "quantifiers", "not-5000"])
def test_nesting_too_deep(cond):
    text = in_rule(cond)
    diagnostic = first_error(text)
    assert diagnostic.code == "E013"
    assert "nested too deeply" in diagnostic.message
    assert diagnostic.span.line == 3
    assert 10 <= diagnostic.span.column < 10 + len(cond)


def test_nesting_just_within_the_limit_is_fine():
    assert when_of(in_rule("not " * 60 + "x")) is not None
    # parentheses alone do not nest the tree
    assert when_of(in_rule("(" * 500 + "x" + ")" * 500)) == N("x")


def test_nesting_too_deep_inside_a_template_points_into_the_string():
    # Fix: the E013 position of an embedded `{…}` expression is not mapped into the file
    # (it is reported at line 1 with the column inside the embedded text).
    text = 'stage data {\n  rule r: when true reject "hi {' + "not " * 70 + 'x}" }'
    diagnostic = first_error(text)
    assert diagnostic.code == "E013"
    line = text.split("\n")[1]
    assert diagnostic.span.line == 2, str(diagnostic)
    assert line.index('"') < diagnostic.span.column - 1 < line.rindex('"'), str(diagnostic)


# ---------------------------------------------------------------------------------------
# Errors inside `{…}` templates are positioned in the file

TEMPLATE_ERRORS: list[tuple[str, str, str, int, int, str]] = [
    ("E005", 'stage data {\n  rule r: when true reject "hi {x = 1}" }', "E005", 2, 35,
     "`=` is not a comparison"),
    ("E005-tab-indented", 'stage data {\n\trule r: when true reject "{x = 1}" }', "E005", 2, 31,
     "`=` is not a comparison"),
    ("E005-in-log-line-4",
     'stage data {\n  rule r:\n    when true\n      log "a {x = 1}"\n      continue\n}',
     "E005", 4, 17, "`=` is not a comparison"),
    ("E008", 'stage data {\n  rule r: when true reject "x {a $}" }', "E008", 2, 34,
     "unexpected character `$`"),
    ("E003", 'stage data {\n  rule r: when true reject "x {"}" }', "E003", 2, 32,
     "unclosed string"),
    ("E009", 'stage data {\n  rule r: when true reject "x {10.0.0.1/8}" }', "E009", 2, 32,
     "invalid IP address or network `10.0.0.1/8`"),
    ("E011", 'stage data {\n  rule r: when true reject "x {a matches /a(b/}" }', "E011", 2,
     44, "invalid regex"),
    ("E014", 'stage data {\n  rule r: when true reject "{any accept in xs: true}" }', "E014",
     2, 34, "`accept` is a reserved word"),
]


@pytest.mark.parametrize(("source", "code", "line", "column", "fragment"),
                         [r[1:] for r in TEMPLATE_ERRORS], ids=[r[0] for r in TEMPLATE_ERRORS])
def test_error_inside_template_is_positioned_in_the_file(source, code, line, column, fragment):
    diagnostic = first_error(source)
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == (
        code, line, column), str(diagnostic)
    assert fragment in diagnostic.message


def test_checker_error_inside_template_is_positioned_in_the_file():
    text = ('stage data {\n  rule r:\n    when true\n    reject 550 5.7.1 "hi {unknown_thing}"\n'
            "  default accept\n}\n")
    result = compile_text(text, "t.policy")
    assert result.policy_set is None
    (error,) = result.errors
    assert (error.code, error.span.line, error.span.column) == ("E102", 4, 27)
    assert error.span.end_column == 27 + len("unknown_thing")


@pytest.mark.parametrize(("source", "column", "fragment"), [
    ('stage data {\n  rule r: when true reject "x {(a}" }', 34, "`)`"),
    ('stage data {\n  rule r: when true reject "hi {x ==}" }', 37, "an expression"),
    ('stage data {\n  rule r: when true reject "x {a.}" }', 34, "a name"),
], ids=["unclosed-paren", "missing-operand", "missing-field"])
def test_template_error_does_not_claim_the_file_ended(source, column, fragment):
    # Fix: a `{…}` expression that stops early is reported as "unexpected end of file",
    # although the file goes on; the position (the closing `}`) is right.
    diagnostic = first_error(source)
    assert (diagnostic.span.line, diagnostic.span.column) == (2, column), str(diagnostic)
    assert fragment in diagnostic.message
    assert "end of file" not in diagnostic.message, diagnostic.message


def test_template_error_names_what_was_expected():
    # Fix: `{a b}` is reported as "unexpected name `b`; expected something else".
    text = 'stage data {\n  rule r: when true reject "x {a b}" }'
    diagnostic = first_error(text)
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == ("E001", 2, 34)
    assert "unexpected name `b`" in diagnostic.message
    assert "something else" not in diagnostic.message, diagnostic.message


# ---------------------------------------------------------------------------------------
# Message wording: what was expected, in words


_TERMINAL_NAMES = sorted({t.name for t in _parser().terminals} | {"RBRACE", "LPAR"})
_LARK_NAME = re.compile(r"__ANON|\$END|\b(?:" + "|".join(map(re.escape, _TERMINAL_NAMES))
                        + r")\b")
_LARK_INTERNAL = re.compile(r"__ANON|\$END|\bRBRACE\b|\bLPAR\b|\bRSQB\b")


def _no_lark_names(diagnostic: Diagnostic) -> None:
    """The message never names a Lark terminal; the hint may use upper-case placeholders
    (`rule NAME: when CONDITION ACTION`) but no Lark-internal names."""
    assert not _LARK_NAME.search(diagnostic.message), diagnostic.message
    assert not _LARK_INTERNAL.search(diagnostic.hint or ""), diagnostic.hint

EXPECTED_WORDS: list[tuple[str, str]] = [
    ("stage data {\n  rule r: when x == 1 accept\n  default\n}", "an action"),
    ("stage data {\n  rule r:\n    when x ==\n", "an expression"),
    ("let x =", "an expression"),
    ("stage data {\n  rule r: when x == 1\n}", "an action"),
    ("stage {", "a name"),
    ('stage data { rule r: when true insert_header "X" "v" at x continue }', "a number"),
    ('stage data { rule r: when true add_header x "v" continue }', "a string"),
    ("stage data { rule r: when x in [1, 2 accept }", "`]`"),
    ("stage data {\n  rule r: when x == 1 accept\n", "`}`"),
    ("settings {\n  deadline = \n}", "an action"),
    ("settings {\n  deadline = \n}", "an expression"),
    ("stage data { rule r: when x == 1 accept on error }", "an action"),
    ("stage data { rule r: when x == @ accept }", "an expression"),
]


@pytest.mark.parametrize(("source", "words"), EXPECTED_WORDS,
                         ids=[f"{i}-{w}" for i, (_, w) in enumerate(EXPECTED_WORDS)])
def test_expected_is_said_in_words(source, words):
    diagnostic = first_error(source)
    text = " ".join(filter(None, [diagnostic.message, diagnostic.hint]))
    assert words in text
    _no_lark_names(diagnostic)


def test_no_message_uses_lark_terminal_names():
    sources = [r[1] for r in REJECTED] + [r[1] for r in TEMPLATE_ERRORS] + [
        s for s, _ in EXPECTED_WORDS]
    for source in sources:
        for diagnostic in parse(source, "t.policy").diagnostics:
            _no_lark_names(diagnostic)


def test_unexpected_character_after_an_operand_does_not_ask_for_a_name():
    # Fix: after an operand, the E008 message says "expected an operator or a name"; no
    # name can follow `a` here (the words Lark lexes as names are keywords such as `and`).
    diagnostic = first_error(in_rule("a + 1 == 2"))
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == ("E008", 3, 12)
    assert diagnostic.message.startswith("unexpected character `+`")
    assert "a name" not in diagnostic.message, diagnostic.message


@pytest.mark.parametrize(("source", "positions", "fragment"), [
    ("let = 5", {(1, 5)}, "a name"),
    ("stage data = {}", {(1, 12)}, "`{`"),
    ("stage data { rule r = when true accept }", {(1, 21)}, "`:`"),
    ("let x == 1", {(1, 7), (1, 8)}, "`=`"),
], ids=["let-without-name", "stage-with-equals", "rule-with-equals", "let-with-double-equals"])
def test_misplaced_equals_outside_a_condition_is_not_called_a_comparison(
        source, positions, fragment):
    # Fix: any `=` the parser does not expect becomes E005 "`=` is not a comparison / use
    # `==`", even where no comparison is possible: a missing `let` name, `stage data = {`,
    # and even `let x == 1`, where the advice is the opposite of the fix.
    diagnostic = first_error(source)
    assert (diagnostic.span.line, diagnostic.span.column) in positions, str(diagnostic)
    assert diagnostic.code != "E005", str(diagnostic)
    assert "not a comparison" not in diagnostic.message
    assert fragment in diagnostic.message


def test_unclosed_string_with_escaped_quote_is_an_unclosed_string():
    # Fix: the E003/E012 choice looks for braces anywhere on the rest of the line, so the
    # stage's closing `}` after an unclosed string turns E003 into "unbalanced `{` or `}`".
    diagnostic = first_error('stage data { rule r: when x == "a\\" accept }')
    assert (diagnostic.span.line, diagnostic.span.column) == (1, 32)
    assert diagnostic.code == "E003", str(diagnostic)


# ---------------------------------------------------------------------------------------
# render()


def test_render_header_source_line_and_caret():
    text = in_rule("x = 1")
    diagnostic = first_error(text)
    assert render(diagnostic, text).split("\n") == [
        "t.policy:3:12: error E005: `=` is not a comparison",
        " 3 |     when x = 1",
        "   |            ^",
        "  = help: use `==` to compare values",
    ]


def test_render_underlines_the_whole_token():
    text = "stage data {\n  rule r: when x in [10.0.0.1/8] accept }"
    rendered = render(first_error(text), text).split("\n")
    assert rendered[0].startswith("t.policy:2:22: error E009: invalid IP address or network")
    assert rendered[1] == " 2 |   rule r: when x in [10.0.0.1/8] accept }"
    assert rendered[2] == "   | " + " " * 21 + "^" + "~" * 9
    assert rendered[3] == "  = help: did you mean 10.0.0.0/8?"


def test_render_line_number_gutter_grows_with_the_line_number():
    text = "\n" * 11 + "let x = 1 2"
    rendered = render(first_error(text), text).split("\n")
    assert rendered[0].startswith("t.policy:12:11: error E001:")
    assert rendered[1] == " 12 | let x = 1 2"
    assert rendered[2] == "    |           ^"


def test_render_crlf_and_tabs_keep_the_caret_under_the_token():
    text = "stage data {\r\n\trule r:\r\n\t\twhen x = 1 accept }"
    diagnostic = first_error(text)
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.column) == ("E005", 3, 10)
    rendered = render(diagnostic, text).split("\n")
    assert "\r" not in rendered[1]
    source_line, caret_line = rendered[1], rendered[2]
    assert caret_line.index("^") == source_line.index("=")


def test_render_end_of_file_caret_after_the_last_character():
    text = "stage data {\n  rule r:\n    when x =="
    rendered = render(first_error(text), text).split("\n")
    assert rendered[0] == ("t.policy:3:14: error E002: unexpected end of file; expected an "
                           "expression")
    assert rendered[1] == " 3 |     when x =="
    assert rendered[2] == "   |              ^"


def test_render_without_text_is_the_header_and_hint_only():
    diagnostic = first_error(in_rule("x = 1"))
    assert render(diagnostic, None) == (
        "t.policy:3:12: error E005: `=` is not a comparison\n"
        "  = help: use `==` to compare values")


def test_render_of_a_checker_error():
    text = 'stage data {\n  rule r: when subject matches "viagra"\n    reject\n}'
    result = compile_text(text, "t.policy")
    (error,) = result.errors
    assert render(error, text).split("\n")[:3] == [
        "t.policy:2:24: error E105: `matches` cannot combine text? and text",
        " 2 |   rule r: when subject matches \"viagra\"",
        "   |                        ^~~~~~~",
    ]


# ---------------------------------------------------------------------------------------
# parse() contract


def test_parse_returns_no_tree_on_error_and_a_tree_otherwise():
    bad = parse("stage {", "t.policy")
    assert isinstance(bad, ParseResult)
    assert bad.file is None and len(bad.diagnostics) == 1
    good = parse("stage data { default accept }", "t.policy")
    assert good.diagnostics == ()
    assert isinstance(good.file, n.PolicyFile)


def test_lark_tokens_never_leak_into_the_ast():
    policy = ok(_POLICY_LF)
    for node in n.walk(policy):
        for field_name in getattr(node, "__dataclass_fields__", {}):
            value = getattr(node, field_name)
            assert not isinstance(value, Token | Tree), (node, field_name)
            if isinstance(value, str):
                assert type(value) is str, (node, field_name)


@pytest.mark.parametrize(("operator", "word"), [
    ("&&", "and"), ("||", "or"), ("&", "and"), ("|", "or")])
def test_c_style_binary_operators_suggest_the_word(operator: str, word: str) -> None:
    source = f"stage connect {{ rule r: when true {operator} false accept default accept }}"
    diagnostic = first_error(source)
    assert diagnostic.code == "E008"
    assert diagnostic.message == f"`{operator}` is not an operator here"
    assert diagnostic.span.column == source.index(operator) + 1
    assert diagnostic.span.end_column - diagnostic.span.column == len(operator)
    assert diagnostic.hint is not None and diagnostic.hint.startswith(f"use `{word}`")


def test_c_style_not_suggests_not_and_leaves_not_equal_alone() -> None:
    source = "stage connect { rule r: when !(client.ip == 1.2.3.4) accept default accept }"
    diagnostic = first_error(source)
    assert (diagnostic.code, diagnostic.span.column) == ("E008", source.index("!") + 1)
    assert diagnostic.hint is not None and diagnostic.hint.startswith("use `not`")
    result = parse("stage connect { rule r: when client.ip != 1.2.3.4 accept default accept }",
                   "t.policy")
    assert not [d for d in result.diagnostics if d.is_error]


def test_unclosed_brace_points_back_to_where_the_file_ends() -> None:
    source = "stage data {\n  rule r: when true accept\n"
    diagnostic = first_error(source)
    assert diagnostic.related is not None
    assert (diagnostic.related.span.line, diagnostic.related.message) == (
        2, "the file ends here")
