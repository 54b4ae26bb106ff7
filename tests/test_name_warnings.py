"""Warnings about function and local names: W212 (a function of a rules file that nothing
calls, directly or through called functions; a library file's functions may go unused)
and W213 (a parameter or `any`/`all` variable that shadows an enclosing variable, a
request field, a built-in — the table lookups among them — or a policy-defined function),
each with its code, position and caret; `check --strict` on the shipped directory file
with rules that call only part of it stays clean (a real `komm-policy` process)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from komm_policy.errors import Severity, render

from .conftest import POLICIES
from .test_checker import FILE, a_rule, codes, diagnostics, diagnostics_of, locate, where


def found(text: str, code: str) -> list:
    return [d for d in diagnostics(text) if d.code == code]


# -- W212: functions nothing calls -------------------------------------------------------

def test_an_uncalled_function_in_a_rules_file_is_w212_at_its_name() -> None:
    text = 'def unused(x) = x == ""\n' + a_rule("sender == \"\"")
    (d,) = found(text, "W212")
    assert d.severity is Severity.WARNING
    assert d.span.file == FILE and where(d) == locate(text, "unused")
    assert d.message == "function `unused` is never called"
    shown = render(d, text)
    assert shown.startswith(f"{FILE}:1:5: warning W212: function `unused` is never called")
    assert "def unused(x)" in shown and "    ^~~~~~" in shown
    assert codes(diagnostics(text)) == ["W212"]


def test_functions_reached_through_called_functions_are_used() -> None:
    text = ('def inner(x) = x == ""\n'
            'def outer(x) = inner(x) or inner(lower(x))\n'
            'def via_let(x) = x != ""\n'
            'let kept = via_let("a")\n'
            + a_rule("outer(sender) and kept"))
    assert codes(diagnostics(text)) == []


def test_functions_called_only_by_uncalled_functions_are_reported_too() -> None:
    text = ('def leaf(x) = x == ""\n'
            'def middle(x) = leaf(x)\n'
            'def top(x) = middle(x) and leaf(x)\n'
            + a_rule("true"))
    by_name = {d.message.split("`")[1]: d for d in found(text, "W212")}
    assert set(by_name) == {"leaf", "middle", "top"}
    assert by_name["top"].message == "function `top` is never called"
    assert by_name["leaf"].message == ("function `leaf` is only called by functions that "
                                       "are never called (`middle`, `top`)")
    assert where(by_name["middle"]) == locate(text, "middle")


def test_a_library_file_may_leave_functions_unused() -> None:
    library = 'def unused_helper(x) = x == ""\ndef used_helper(x) = x != ""\n'
    rules = a_rule('used_helper(sender)')
    assert codes(diagnostics_of({"10-library.policy": library,
                                 "20-rules.policy": rules})) == []
    # the same function in the rules' own file is dead code there
    together = diagnostics_of({"20-rules.policy": library + rules})
    assert codes(together) == ["W212"]
    assert together[0].message == "function `unused_helper` is never called"


def test_a_function_used_only_in_an_unused_let_is_not_reported_twice() -> None:
    text = 'def helper(x) = x == ""\nlet spare = helper("")\n' + a_rule("true")
    assert codes(diagnostics(text)) == ["W204"]


# -- W213: names that shadow others ------------------------------------------------------

SHADOWING = {
    "parameter shadows a function": (
        'def check(address) = address != ""\n'
        'def f(check) = check == ""\n', "check", "after:def f(",
        "parameter `check` of `f` shadows the function `check()`"),
    "parameter shadows a built-in": (
        'def f(lower) = lower == ""\n', "lower", None,
        "parameter `lower` of `f` shadows the built-in `lower()`"),
    "parameter shadows a table lookup": (
        'def f(lookup) = lookup == ""\n', "lookup", None,
        "parameter `lookup` of `f` shadows the table lookup `lookup()`"),
    "parameter shadows a request field": (
        'def f(sender) = sender == ""\n', "sender", None,
        "parameter `sender` of `f` shadows the request field `sender`"),
    "parameter shadows a field namespace": (
        'def f(client) = client == ""\n', "client", None,
        "parameter `client` of `f` shadows the request fields `client.…`"),
    "parameter shadows its own function": (
        'def f(f) = f == ""\n', "f", "after:def f(",
        "parameter `f` of `f` shadows the function `f()`"),
    "quantifier variable shadows a parameter": (
        'def f(x) = any x in envelope.to: x == ""\n', "x", "after:any ",
        "variable `x` of `any` shadows the enclosing variable `x`"),
    "nested quantifier shadows the outer variable": (
        'def f(y) = y == "" or (any r in envelope.to: all r in envelope.to: r == y)\n',
        "r", "after:all ", "variable `r` of `all` shadows the enclosing variable `r`"),
    "quantifier variable shadows a table lookup": (
        'def f(y) = any exists in envelope.to: exists == y\n', "exists", "after:any ",
        "variable `exists` of `any` shadows the table lookup `exists()`"),
    "quantifier variable shadows a shipped function": (
        'def f(y) = any category in envelope.to: category == y\n', "category",
        "after:any ", "variable `category` of `any` shadows the function `category()`"),
}


@pytest.mark.parametrize("name", SHADOWING)
def test_a_shadowing_name_is_w213_at_the_name(name: str) -> None:
    definition, needle, after, message = SHADOWING[name]
    call = "f(sender)" if "def f(" in definition else ""
    text = definition + a_rule(f'{call} == true' if call else "true", stage="rcpt")
    (d,) = found(text, "W213")
    assert d.severity is Severity.WARNING
    assert d.message == message
    assert where(d) == locate(text, needle, after=after[len("after:"):] if after else None)
    shown = render(d, text)
    assert shown.startswith(f"{FILE}:{d.span.line}:{d.span.column}: warning W213: ")
    assert "^" in shown and "choose another name" in shown


def test_a_variable_in_a_rule_shadowing_a_field_is_w213() -> None:
    text = a_rule("any sender in envelope.to: sender == \"a@example.org\"", stage="rcpt")
    (d,) = found(text, "W213")
    assert d.message == "variable `sender` of `any` shadows the request field `sender`"
    assert where(d) == locate(text, "sender")


def test_a_body_called_several_times_is_reported_once() -> None:
    text = ('def f(y) = any lower in envelope.to: lower == y\n'
            + a_rule('f(sender) or f(rcpt) or f("x")', stage="rcpt"))
    assert codes(diagnostics(text)) == ["W213"]


def test_names_that_hide_nothing_and_let_constants_are_quiet() -> None:
    text = ('let r = "a@example.org"\n'
            'def f(address, list_row) = any r in envelope.to: r == address or '
            'list_row == none\n' + a_rule('f(sender, category(rcpt)) and r != ""',
                                          stage="rcpt"))
    assert codes(diagnostics(text)) == []


# -- the shipped directory file in CI --------------------------------------------------

def run_check(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "komm_policy", "check", "--strict",
                           str(directory)], capture_output=True, text=True, timeout=120)


def test_check_strict_with_rules_calling_part_of_the_directory_file(tmp_path: Path) -> None:
    """Only `ip_blocked` is called: the other shipped functions go unused, in their
    library file, and `check --strict` passes; a helper left uncalled in the rules file
    fails it, with position and caret."""
    for name in ("00-directory.policy", "schema.toml"):
        shutil.copy(POLICIES / name, tmp_path / name)
    rules = ("stage connect {\n    rule blocked:\n        when ip_blocked(client.ip)\n"
             "        reject 554 5.7.1 \"blocked\"\n\n    default accept\n}\n")
    (tmp_path / "10-rules.policy").write_text(rules)
    clean = run_check(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 errors, 0 warnings" in clean.stdout + clean.stderr
    (tmp_path / "10-rules.policy").write_text('def spare(x) = x == ""\n\n' + rules)
    failed = run_check(tmp_path)
    assert failed.returncode == 1
    out = failed.stdout + failed.stderr
    assert (f"{tmp_path / '10-rules.policy'}:1:5: warning W212: function `spare` is never "
            "called") in out
    assert " 1 | def spare(x) = x == \"\"" in out and "^~~~~" in out
