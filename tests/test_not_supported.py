"""What the policy language deliberately does not have, and the diagnostic each gets.

komm-policy is a small, checked, non-Turing-complete rule language: conditions compare
request fields, literals and lookup results, and rules pick one of a fixed set of SMTP
actions.  This file documents its deliberate limits: there is no arithmetic, no assignment
outside `let`, no chained comparisons, one kind of string literal (double-quoted, one line,
no `+` concatenation), functions only as one expression (`def f(x) = …`, no statements, no
recursion), no `if`/`else` expressions, no map or set
literals, no methods, regexes only as `/…/` literals, no quarantine or message
modifications before the data stage, no ESMTP parameters on recipient/sender changes, and
no `disconnect` action.

Each case pins the diagnostic code and, where it is meaningful, the exact `line:col`, so a
change to what the language accepts (or to how it explains a refusal) is a visible,
deliberate decision rather than an accident.
"""

from __future__ import annotations

import pytest

from komm_policy.errors import Diagnostic
from komm_policy.parser import parse
from komm_policy.policyset import compile_text


def in_rule(cond: str) -> str:
    """A file whose only rule has condition `cond`, starting at line 3, column 10."""
    return f"stage data {{\n  rule r:\n    when {cond}\n    accept\n  default accept\n}}\n"


def syntax_error(text: str) -> Diagnostic:
    result = parse(text, "t.policy")
    assert result.file is None, f"{text!r} was accepted"
    return result.diagnostics[0]


def check_error(text: str) -> Diagnostic:
    """The first error of a text that parses but fails the checker."""
    assert parse(text, "t.policy").diagnostics == (), "expected valid syntax"
    result = compile_text(text, "t.policy")
    assert result.policy_set is None
    return result.errors[0]


def where(diagnostic: Diagnostic) -> tuple[str, int, int]:
    return diagnostic.code, diagnostic.span.line, diagnostic.span.column


# ---------------------------------------------------------------------------------------
# Syntax: refused by the grammar

SYNTAX: list[tuple[str, str, tuple[str, int, int], str]] = [
    # arithmetic: values are compared, never computed
    ("addition", in_rule("a + 1 == 2"), ("E008", 3, 12), "unexpected character `+`"),
    ("subtraction", in_rule("x - 1 == 0"), ("E008", 3, 12), "unexpected character `-`"),
    ("multiplication", in_rule("x * 2"), ("E008", 3, 12), "unexpected character `*`"),
    ("unary-minus-on-a-name", in_rule("-x == 1"), ("E008", 3, 10),
     "unexpected character `-`; expected an expression"),
    ("arithmetic-in-let", "let x = 1\nlet y = x + 1", ("E008", 2, 11),
     "unexpected character `+`"),
    # assignment: only `let` binds a name, and never inside a condition
    ("assignment-in-condition", in_rule("x = 1"), ("E005", 3, 12), "`=` is not a comparison"),
    ("assignment-in-parentheses", in_rule("(x = 1)"), ("E005", 3, 13),
     "`=` is not a comparison"),
    ("assignment-statement", "let x = 1\nx = 2", ("E001", 2, 1),
     "a policy file holds `settings`, `let`, `def` and `stage` blocks"),
    # comparisons do not chain
    ("chained-less-than", in_rule("a < b < c"), ("E001", 3, 16),
     "unexpected `<`: comparisons do not chain"),
    ("chained-equality", in_rule("a == b == c"), ("E001", 3, 17),
     "unexpected `==`: comparisons do not chain"),
    # strings: double quotes, one line, no concatenation
    ("single-quoted-string", in_rule("x == 'abc'"), ("E008", 3, 15),
     "unexpected character `'`"),
    ("multi-line-string", in_rule('x == "abc\n def"'), ("E003", 3, 15), "unclosed string"),
    ("string-concatenation", in_rule('x == "a" + "b"'), ("E008", 3, 19),
     "unexpected character `+`"),
    ("triple-quoted-string", in_rule('x == """abc"""'), ("E007", 3, 17), "has no action"),
    # functions are one expression, `def f(x) = expr`: no statements, no blocks, no lambdas
    ("def-with-statements", "def f(x):\n  return x\n", ("E001", 1, 9),
     "unexpected `:`; expected `=`"),
    ("def-with-braces", "def f(x) { x }\n", ("E001", 1, 10), "unexpected `{`; expected `=`"),
    ("function-keyword", "function f(x) { }", ("E001", 1, 1), "unexpected name `function`"),
    ("def-inside-stage", "stage data {\n  def f(x) = x\n}", ("E001", 2, 3),
     "unexpected `def`; expected `default`, `rule` or `}`"),
    ("lambda-in-let", "let f = def(x) = x", ("E005", 1, 16), "`=` is not a comparison"),
    ("typed-parameter", "def f(x: int) = x", ("E001", 1, 8), "unexpected `:`"),
    # no if/else expressions
    ("if-then-else", in_rule("if x then y else z"), ("E007", 3, 13),
     "has no action: expected an action, a modification or `continue`, found name `x`"),
    ("python-conditional", in_rule("x == 1 if y else 2"), ("E007", 3, 17),
     "found name `if`"),
    # no map, dict or set literals: `{` only opens blocks (and interpolations in strings)
    ("dict-literal", in_rule('x in {"a": 1}'), ("E001", 3, 15),
     "unexpected `{`; expected an expression"),
    ("empty-braces", in_rule("{}"), ("E001", 3, 10), "unexpected `{`; expected an expression"),
    ("set-literal", in_rule("x in {1, 2}"), ("E001", 3, 15), "unexpected `{`"),
    # no methods: functions are called with the value as an argument, `lower(sender)`
    ("method-call", in_rule('sender.lower() == "a"'), ("E007", 3, 22), "found `(`"),
    # no slices
    ("slice", in_rule("x[1:2]"), ("E001", 3, 13), "unexpected `:`; expected `]`"),
    # other languages' operators
    ("is-operator", in_rule("x is none"), ("E007", 3, 12), "found name `is`"),
    ("double-ampersand", in_rule("x && y"), ("E008", 3, 12), "`&&` is not an operator here"),
    ("double-pipe", in_rule("x || y"), ("E008", 3, 12), "`||` is not an operator here"),
    ("bang-not", in_rule("!x"), ("E008", 3, 10), "`!` is not an operator here"),
    # ESMTP parameters on change_from / add_recipient are not part of the language
    ("change-from-parameters-word",
     'stage data {\n  rule r: when true change_from "a@b" parameters "x" continue\n}',
     ("E007", 2, 39), "found name `parameters`"),
    ("change-from-call-syntax",
     'stage data {\n  rule r: when true change_from("a@b", "NOTIFY=NEVER") continue\n}',
     ("E001", 2, 38), "unexpected `,`; expected `)`"),
    ("change-from-second-argument",
     'stage data {\n  rule r: when true change_from "a@b", "NOTIFY=NEVER" continue\n}',
     ("E007", 2, 38), "found `,`"),
    ("add-recipient-second-string",
     'stage data {\n  rule r: when true add_recipient "a@b" "NOTIFY=NEVER" continue\n}',
     ("E007", 2, 41), 'found string "NOTIFY=NEVER"'),
    ("add-recipient-parameter-map",
     'stage data {\n  rule r: when true add_recipient "a@b", {notify: "x"} continue\n}',
     ("E007", 2, 40), "found `,`"),
    # no `disconnect`: the actions are accept, reject, tempfail, discard and quarantine
    ("disconnect-as-action", "stage connect {\n  rule r: when true disconnect\n}",
     ("E007", 2, 21), "found name `disconnect`"),
    ("disconnect-as-default", "stage connect {\n  default disconnect\n}", ("E001", 2, 11),
     "unexpected name `disconnect`; expected an action (accept, reject, tempfail, discard, "
     "quarantine)"),
    ("disconnect-after-reply", 'stage connect {\n  rule r: when true reject 550 "x" disconnect\n}',
     ("E001", 2, 36), "unexpected name `disconnect`"),
]


@pytest.mark.parametrize(("source", "expected", "fragment"), [c[1:] for c in SYNTAX],
                         ids=[c[0] for c in SYNTAX])
def test_refused_by_the_grammar(source, expected, fragment):
    diagnostic = syntax_error(source)
    assert where(diagnostic) == expected, str(diagnostic)
    assert fragment in diagnostic.message
    # compile_text reports the same thing and produces no policy set
    result = compile_text(source, "t.policy")
    assert result.policy_set is None
    assert where(result.errors[0]) == expected


def test_negative_numbers_are_literals_not_arithmetic():
    # `-1` is an int literal; `- 1` (with a space) would be arithmetic and is refused
    assert parse(in_rule("x == -1"), "t.policy").diagnostics == ()
    assert where(syntax_error(in_rule("x == - 1"))) == ("E008", 3, 15)


def test_hints_for_common_refusals():
    assert "`==`" in (syntax_error(in_rule("x = 1")).hint or "")
    assert "and` / `or`" in (syntax_error(in_rule("a < b < c")).hint or "")
    assert '`"`' in (syntax_error(in_rule('x == "abc\n def"')).hint or "")


# ---------------------------------------------------------------------------------------
# Checker: valid syntax, refused by `check`


def test_regex_as_a_plain_string_is_refused():
    diagnostic = check_error(in_rule('subject matches "viagra"'))
    assert where(diagnostic) == ("E105", 3, 18)
    assert "`matches`" in diagnostic.message
    assert diagnostic.hint is not None and "/…/" in diagnostic.hint
    # the same comparison with a regex literal is fine
    assert compile_text(in_rule("subject matches /viagra/"), "t.policy").errors == ()


def test_undefined_functions_are_unknown():
    diagnostic = check_error(in_rule("my_func(sender)"))
    assert where(diagnostic) == ("E101", 3, 10)
    assert diagnostic.message == "unknown function `my_func`"


def test_a_function_body_is_one_expression_with_a_hint():
    diagnostic = syntax_error("def f(x):\n  return x\n")
    assert diagnostic.hint == "a function is one expression: `def NAME(PARAMS) = EXPR`"


def test_functions_cannot_recurse():
    diagnostic = check_error("def f(x) = f(x)\n" + in_rule("f(1)"))
    assert where(diagnostic) == ("E152", 1, 12)


def test_attribute_is_not_a_method():
    # `sender.lower` parses (field access) but an address has no fields
    diagnostic = check_error(in_rule('sender.lower == "a"'))
    assert where(diagnostic) == ("E105", 3, 17)
    assert "`.lower`" in diagnostic.message


def test_python_booleans_are_unknown_names():
    diagnostic = check_error(in_rule("subject == True"))
    assert where(diagnostic) == ("E102", 3, 21)
    assert "`True`" in diagnostic.message


@pytest.mark.parametrize("stage", ["connect", "ehlo", "mail", "rcpt"])
def test_quarantine_outside_data_is_refused(stage):
    text = ('settings { quarantine_to = "q@example.org" }\n'
            f'stage {stage} {{\n  rule r: when true\n    quarantine "x"\n  default accept\n}}\n')
    diagnostic = check_error(text)
    assert where(diagnostic) == ("E115", 4, 5)
    assert f"stage `{stage}`" in diagnostic.message


def test_quarantine_as_default_outside_data_is_refused():
    text = ('settings { quarantine_to = "q@example.org" }\n'
            "stage connect {\n  default quarantine\n}\n")
    assert where(check_error(text)) == ("E115", 3, 11)


def test_quarantine_at_data_is_allowed():
    text = ('settings { quarantine_to = "q@example.org" }\n'
            'stage data {\n  rule r: when true\n    quarantine "x"\n  default accept\n}\n')
    result = compile_text(text, "t.policy")
    assert result.errors == ()
    assert result.policy_set is not None


MODIFICATIONS = [
    'add_header "X-A" "b"',
    'insert_header "X-A" "b" at 1',
    'change_header "Subject" "b"',
    'delete_header "X-A"',
    'change_from "a@example.org"',
    'add_recipient "a@example.org"',
    'delete_recipient "a@example.org"',
    'replace_contents "b"',
]


@pytest.mark.parametrize("stage", ["connect", "ehlo", "mail", "rcpt"])
@pytest.mark.parametrize("modification", MODIFICATIONS, ids=[m.split()[0] for m in MODIFICATIONS])
def test_modification_outside_data_is_refused(stage, modification):
    text = (f"stage {stage} {{\n  rule r:\n    when true\n    {modification}\n    continue\n"
            "  default accept\n}\n")
    diagnostic = check_error(text)
    assert where(diagnostic) == ("E114", 4, 5)
    kind = modification.split()[0]
    assert diagnostic.message.startswith(f"`{kind}` at stage `{stage}`")


@pytest.mark.parametrize("modification", MODIFICATIONS, ids=[m.split()[0] for m in MODIFICATIONS])
def test_modification_at_data_is_allowed(modification):
    text = (f"stage data {{\n  rule r:\n    when true\n    {modification}\n    continue\n"
            "  default accept\n}\n")
    result = compile_text(text, "t.policy")
    assert result.errors == (), [str(d) for d in result.errors]
