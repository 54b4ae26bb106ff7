"""Syntax error diagnostics: Lark's exceptions in words an operator understands.

Each error names what was expected ("an action", "an expression", not terminal names),
points at the right place (inside the file also for `{…}` template expressions and at
the end of the text for end-of-file errors), and labels the common mistakes: a missing
`when`, an unclosed string or regex, `=` for `==`, a rule without an action, chained
comparisons, an unparenthesised quantifier.
"""

from __future__ import annotations

import re

import lark
from lark import Token, Tree

from .errors import Diagnostic, Related, Severity, Span
from .grammar import lark_parser

MAX_NESTING = 64
"""Deepest expression nesting accepted; deeper input is reported, never a RecursionError."""

ACTION_WORDS = ("accept", "reject", "tempfail", "discard", "quarantine")
MODIFICATION_WORDS = (
    "add_header", "insert_header", "change_header", "delete_header",
    "change_from", "add_recipient", "delete_recipient", "replace_contents",
)

# Words for the named terminals, used in "expected ..." messages.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "STRING": "a string",
    "INT": "a number",
    "IPV4": "an IP address",
    "IPV6": "an IP address",
    "REGEX": "a regex /…/",
    "DURATION": "a duration like 250ms",
    "SIZE": "a size like 10MB",
    "ENHANCED": "an enhanced status code like 5.7.1",
}
_COMPARISON_TOKENS = {"EQ", "NE", "LE", "GE", "LESSTHAN", "MORETHAN",
                      "IN", "MATCHES", "CONTAINS", "STARTS_WITH", "ENDS_WITH"}
_C_OPERATORS = {"&&": "and", "&": "and", "||": "or", "|": "or", "!": "not"}
"""Operators from C-like languages, and the words this language uses instead."""
_EXPRESSION_START = {"NAME", "STRING", "INT", "IPV4", "IPV6", "REGEX", "DURATION", "SIZE"}


def _end_position(text: str, line_base: int, col_base: int) -> tuple[int, int]:
    """Where end-of-input errors point: just after the last non-blank character."""
    stripped = text.rstrip()
    if not stripped:
        return line_base, col_base
    lines = stripped.split("\n")
    line = len(lines)
    column = len(lines[-1]) + 1
    if line == 1:
        return line_base, col_base + column - 1
    return line_base + line - 1, column


def _describe_expected(expected: set[str], end_words: str = "end of file") -> str:
    parser = lark_parser()
    words: list[str] = []
    remaining = set(expected)
    if "$END" in remaining:
        remaining.discard("$END")
        words.append(end_words)
    if len(remaining & _EXPRESSION_START) >= 4:
        words.append("an expression")
        remaining -= _EXPRESSION_START | {"LPAR", "LSQB", "TRUE", "FALSE", "NONE", "NOT",
                                          "ANY", "ALL"}
    upper_actions = {w.upper() for w in ACTION_WORDS}
    if remaining >= upper_actions:
        words.append("an action (accept, reject, tempfail, discard, quarantine)")
        remaining -= upper_actions
    upper_mods = {w.upper() for w in MODIFICATION_WORDS}
    if remaining >= upper_mods:
        words.append("a modification (add_header, …)")
        remaining -= upper_mods
    operators = set()
    for name in remaining:
        if name in _TERMINAL_WORDS:
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            continue
        if pattern.type == "str" and not pattern.value.isidentifier():
            operators.add(name)
    if len(operators) >= 6:
        words.append("an operator")
        remaining -= operators
        remaining -= {"AND", "OR", "IN", "NOT", "MATCHES", "CONTAINS", "STARTS_WITH",
                      "ENDS_WITH"}
    described = set()
    for name in sorted(remaining):
        if name in _TERMINAL_WORDS:
            described.add(_TERMINAL_WORDS[name])
            continue
        try:
            pattern = parser.get_terminal(name).pattern
        except KeyError:
            described.add(name.lower())
            continue
        described.add(f"`{pattern.value}`" if pattern.type == "str" else name.lower())
    words.extend(sorted(described))
    if not words:
        return "something else"
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _precise_expected(exc: lark.exceptions.UnexpectedToken) -> set[str]:
    """What the parser accepts here.  LALR merges look-ahead sets of similar states, so
    `exc.expected` can list tokens that are not valid in this context; trying each
    candidate on the interactive parser gives the exact set."""
    interactive = getattr(exc, "interactive_parser", None)
    if interactive is not None:
        try:
            return set(interactive.accepts())
        except Exception:  # pragma: no cover - fall back to Lark's own set
            pass
    return set(exc.expected)


def _token_words(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    value = str(token.value)
    if token.type == "STRING":
        return f"string {value}"
    if token.type == "NAME":
        return f"name `{value}`"
    return f"`{value}`"


def _enclosing_rule(text: str, pos: int) -> str | None:
    found = None
    for match in re.finditer(r"\brule\s+([A-Za-z_][A-Za-z0-9_]*)", text[:pos]):
        found = match.group(1)
    return found


# A string literal (one line; a raw CR inside one is text, as before) or a lone CR.
_LONE_CR = re.compile(r'"(?:[^"\\\n]|\\.)*+"|\r(?!\n)')


def lone_cr_diagnostic(text: str, path: str) -> Diagnostic | None:
    """E018 at the first carriage return not followed by a line feed, else None.

    Lines end with LF or CRLF (a CR inside a string literal is text).  A file with
    lone-CR line ends (classic Mac OS) would be
    one line to the parser: its first `#` comment would run to the end of the file and
    the error would be a `{` never closed, far from the cause.  Linear in the text."""
    if "\r" not in text:
        return None
    found = next((m for m in _LONE_CR.finditer(text) if m.group() == "\r"), None)
    if found is None:
        return None
    start = found.start()
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    return Diagnostic("E018", Severity.ERROR,
                      "carriage return without a line feed: lines end with LF or CRLF",
                      Span(path, line, column, line, column + 1),
                      "save the file with LF (Unix) or CRLF (Windows) line ends")


def syntax_diagnostic(
    exc: lark.exceptions.UnexpectedInput, text: str, path: str, line_base: int = 1,
    col_base: int = 1, *, embedded: bool = False
) -> Diagnostic:
    """The positioned, worded diagnostic for a Lark error.  `embedded`: `text` is the
    expression inside a string's `{…}`, starting at line_base:col_base of the file."""
    def place(line: int, column: int, width: int = 1) -> Span:
        if embedded:
            line, column = line_base, col_base + column - 1
        return Span(path, line, column, line, column + max(width, 1))

    end_words = "the end of the `{…}` expression" if embedded else "end of file"
    ended = "end of the `{…}` expression" if embedded else "end of file"

    def expected_words(names: set[str]) -> str:
        return _describe_expected(names, end_words) if names else (
            "an operator or `}`" if embedded else "something else")

    def diag(code: str, message: str, span: Span, hint: str | None = None) -> Diagnostic:
        return Diagnostic(code, Severity.ERROR, message, span, hint)

    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        char = exc.char
        span = place(exc.line, exc.column)
        rest_of_line = text[exc.pos_in_stream:].split("\n", 1)[0]
        allowed = set(getattr(exc, "allowed", None) or ())
        if char == '"':
            if _string_closes(rest_of_line):
                return diag("E012", "unbalanced `{` or `}` in string", span,
                            "write `{{` or `}}` for a literal brace; `{expr}` interpolates")
            return diag("E003", "unclosed string", span,
                        'a string must end with `"` on the same line')
        if char == "/":
            return diag("E004", "unclosed regex", span,
                        "a regex is written /pattern/flags on one line; write `\\/` for a "
                        "slash inside it")
        operator = rest_of_line[:2] if rest_of_line[:2] in ("&&", "||") else char
        if operator in _C_OPERATORS and not rest_of_line.startswith("!="):
            word = _C_OPERATORS[operator]
            return diag("E008", f"`{operator}` is not an operator here", place(
                exc.line, exc.column, len(operator)), f"use `{word}`: conditions combine "
                "with `and`, `or` and `not`")
        if char == "=" and not rest_of_line.startswith("==") and allowed & _COMPARISON_TOKENS:
            return diag("E005", "`=` is not a comparison", span, "use `==` to compare values")
        if allowed & _COMPARISON_TOKENS:
            # After an operand, NAME stands for the keywords (`and`, `accept`, …) that the
            # contextual lexer reads as names; a plain name cannot follow here.
            allowed.discard("NAME")
        expected = f"; expected {expected_words(allowed)}" if allowed else ""
        shown = char if char.isprintable() and not char.isspace() else repr(char)
        return diag("E008", f"unexpected character `{shown}`{expected}", span)

    if isinstance(exc, lark.exceptions.UnexpectedEOF):
        line, column = _end_position(text, line_base, col_base)
        return diag("E002", f"unexpected {ended}; expected "
                    f"{expected_words(set(exc.expected))}",
                    Span(path, line, column, line, column + 1))

    assert isinstance(exc, lark.exceptions.UnexpectedToken)
    token: Token = exc.token
    expected = _precise_expected(exc)
    if token.type == "$END":
        line, column = _end_position(text, line_base, col_base)
        span = Span(path, line, column, line, column + 1)
        what = expected_words(expected)
        if not embedded and "RBRACE" in expected and len(expected) <= 6:
            opened = _unclosed_brace(text, len(text), path)
            if opened is not None:
                brace, block = opened
                return Diagnostic("E002", Severity.ERROR,
                                  f"`{{` of {block} is never closed", brace,
                                  f"add `}}` where the block ends (expected {what})",
                                  Related(span, "the file ends here"))
            return diag("E002", "unexpected end of file: a `{` block is not closed", span,
                        f"expected {what}")
        return diag("E002", f"unexpected {ended}; expected {what}", span)
    width = len(str(token.value)) if token.value else 1
    span = place(token.line or 1, token.column or 1, width)
    found = _token_words(token)
    before = text[:token.start_pos or 0]
    if token.type == "EQUAL" and expected & _COMPARISON_TOKENS:
        return diag("E005", "`=` is not a comparison", span, "use `==` to compare values")
    if token.type in _COMPARISON_TOKENS and expected & {"AND", "OR"}:
        return diag("E001", f"unexpected {found}: comparisons do not chain", span,
                    "combine comparisons with `and` / `or`, e.g. `a < b and b < c`")
    if token.type == "NAME" and re.search(r"\b(any|all)\s+$", before):
        return diag("E001", "a quantifier (`any` / `all`) inside `and`, `or`, `not` or a "
                    "comparison must be in parentheses", span,
                    "write `a and (any x in xs: cond)`")
    if "WHEN" in expected:
        return diag("E006", f"missing `when` before {found}", span,
                    "a rule is `rule NAME: when CONDITION ACTION`; write `when true` for a "
                    "rule that always applies")
    if {"ACCEPT", "REJECT", "CONTINUE"} <= expected:
        rule = _enclosing_rule(text, token.start_pos or 0) if not embedded else None
        who = f"rule `{rule}`" if rule else "this rule"
        return diag("E007", f"{who} has no action: expected an action, a modification or "
                    f"`continue`, found {found}", span,
                    'end a rule with an action such as `accept` or `reject 550 5.7.1 "…"`, '
                    "or with `continue` after modifications")
    if (not embedded and "RBRACE" in expected and token.type in ("NAME", "DEF")
            and token.value in _TOP_LEVEL_WORDS
            and (token.value in ("stage", "settings") or token.column == 1)):
        # A block word where a block can only end, at the start of a line (or one that
        # never nests): the `}` before it is missing.
        opened = _unclosed_brace(text, token.start_pos or 0, path)
        if opened is not None:
            brace, block = opened
            return Diagnostic("E002", Severity.ERROR,
                              f"`{{` of {block} is not closed before the next `{token.value}`",
                              brace, "add `}` where the block ends",
                              Related(span, f"`{token.value}` starts here"))
    if expected == {"EQUAL"} and re.search(r"\bdef\s+\w+\s*\([^()]*\)\s*$", before):
        return diag("E001", f"unexpected {found}; expected `=`", span,
                    "a function is one expression: `def NAME(PARAMS) = EXPR`")
    if "STAGE" in expected and token.type == "NAME":
        return diag("E001", f"unexpected {found}; a policy file holds `settings`, `let`, "
                    "`def` and `stage` blocks", span)
    return diag("E001", f"unexpected {found}; expected {expected_words(expected)}", span)


_TOP_LEVEL_WORDS = ("stage", "settings", "let", "def")


def _unclosed_brace(text: str, end: int, path: str) -> tuple[Span, str] | None:
    """The innermost `{` still open at `end` (strings, comments and regexes skipped), and
    the words before it (`stage connect`), or None."""
    stack: list[int] = []
    i = 0
    while i < end:
        char = text[i]
        if char == "#":
            newline = text.find("\n", i)
            i = end if newline < 0 else newline
        elif char == '"':
            i += 1
            while i < end and text[i] not in '"\n':
                i += 2 if text[i] == "\\" else 1
        elif char == "/" and (i == 0 or not text[i - 1].isalnum()):
            match = re.compile(r"/(?:[^/\\\n]|\\.)+/").match(text, i)
            if match:
                i = match.end() - 1
        elif char == "{":
            stack.append(i)
        elif char == "}" and stack:
            stack.pop()
        i += 1
    if not stack:
        return None
    pos = stack[-1]
    line = text.count("\n", 0, pos) + 1
    line_start = text.rfind("\n", 0, pos) + 1
    words = " ".join(text[line_start:pos].split()[-2:])
    block = f"`{words}`" if words else "this block"
    return Span(path, line, pos - line_start + 1, line, pos - line_start + 2), block


def _string_closes(rest: str) -> bool:
    """Does the string starting at rest[0] end on this line (ignoring brace rules)?"""
    i = 1
    while i < len(rest):
        if rest[i] == "\\":
            i += 2
            continue
        if rest[i] == '"':
            return True
        i += 1
    return False


def nesting_diagnostic(tree: Tree, path: str, line_base: int = 1, col_base: int = 1,
              embedded: bool = False) -> Diagnostic | None:
    stack: list[tuple[Tree, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            meta = node.meta
            line = getattr(meta, "line", 1)
            column = getattr(meta, "column", 1)
            if embedded:
                line, column = line_base, col_base + column - 1
            return Diagnostic(
                "E013", Severity.ERROR,
                f"expression nested too deeply (more than {MAX_NESTING} levels)",
                Span(path, line, column, line, column + 1),
                "split the condition with `let` constants or simplify it")
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))
    return None
