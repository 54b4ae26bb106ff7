"""`komm-policy fmt`: the one canonical layout of a policy file.

The layout is computed from Lark's concrete tree (every token kept, including parentheses),
so nothing the author wrote is dropped: only whitespace changes.  Comments are not in the
tree; they are found in the gaps between tokens (a gap holds only whitespace and comments)
and put back next to the token they followed (trailing comment) or preceded (own-line).

The layout, in short (docs/tooling.md, "The layout"):

- top-level items at column 0, one blank line between them (consecutive `let`s keep the
  author's choice of zero or one blank line); block contents indented 4 spaces;
- a rule is `rule NAME:` then, indented 4, `when …`, each statement and the final action on
  their own lines, and `on error …`; rules and `default` are separated by one blank line;
- inside a line, one space between tokens except after `(`/`[`/`.`, before `)`/`]`/`,`/`:`/
  `.`, and before the `(` of a call or the `[` of an index;
- a line break the author put inside an expression is kept (as gofmt does; lines are never
  joined or split); the next line continues just after the innermost `(`/`[` still open
  if more followed it on its line, else 4 spaces deeper than the line that opened it (a
  closing bracket starting a line goes back to that line's indent); inside a quantifier
  (`any x in xs:` and its body) 4 deeper than where its own line continues; with nothing
  open, 4 deeper than the statement's first line (`_Open`); a trailing comment also ends
  its line there;
- own-line comments stay above the token they preceded, at that line's indentation, with
  at most one blank line before them (kept from the source).

Only the layout of blocks and rules is named here; everything else (expressions, actions,
statements, new built-ins) is laid out token by token, so grammar additions format without
changes to this module.  `format_text` re-parses its output and refuses (FormatError) if the
AST or the comments differ from the input's: meaning never changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import lark
from lark import Token, Tree

from .both_trees import parse_both
from .errors import Diagnostic
from .nodes import PolicyFile
from .parser import build, parse
from .syntax_errors import lone_cr_diagnostic

INDENT = "    "

_COMMENT = re.compile(r"#[^\n]*")
_NO_SPACE_AFTER = {"LPAR", "LSQB", "DOT"}
_NO_SPACE_BEFORE = {"RPAR", "RSQB", "COMMA", "COLON", "DOT"}
# Tokens that end a value: a `(` or `[` right after one is a call or an index.
_VALUE_END = {"NAME", "STRING", "INT", "REGEX", "IPV4", "IPV6", "DURATION", "SIZE",
              "ENHANCED", "RPAR", "RSQB", "TRUE", "FALSE", "NONE"}
_OPENING = {"LPAR", "LSQB"}
_CLOSING = {"RPAR", "RSQB"}
_QUANTIFIERS = {"ANY", "ALL"}
_BLOCKS_WITH_BLANK_LINES = {"stage"}
"""Blocks whose items (rules, `default`) are separated by one blank line."""

Blank = Literal["always", "keep", "never"]


class FormatError(Exception):
    """The text cannot be formatted: `diagnostics` holds its syntax errors, or, if the
    formatter itself went wrong, the message says what differed (a bug, never written)."""

    def __init__(self, message: str, diagnostics: tuple[Diagnostic, ...] = ()) -> None:
        super().__init__(message)
        self.diagnostics = diagnostics




@dataclass(slots=True)
class _Comment:
    text: str
    line: int
    trailing: bool  # code precedes it on its line: it follows token `before`
    before: int  # index of the next code token (len(tokens) at the end of the file)


@dataclass(slots=True)
class _Line:
    """One logical line: the tokens `first`..`last` (indexes), at `indent` levels."""

    indent: int
    first: int
    last: int
    blank: Blank
    comment_indent: int
    block_start: bool = False  # first in its block or file: no blank line above
    closing: bool = False  # a block's `}`: never a blank line right above it


def format_text(text: str, path: str = "<policy>") -> str:
    """The canonical layout of one policy file.

    Raises FormatError when the text does not parse (its diagnostics attached), or when the
    result would not parse to the same AST with the same comments (a formatter bug).
    """
    text = text.removeprefix("\ufeff")
    before, tree = _parse(text, path)
    tokens = _leaves(tree)
    comments = _comments(text, tokens)
    lines = _Layout(tokens).start(tree)
    result = _Renderer(tokens, comments).render(lines)
    if result == text:
        # Already canonical (what `fmt --check` of a kept set meets): the output is the
        # input, so its AST and comments are the input's; parsing it twice more would
        # make `fmt --check` cost three times `check`'s parse.
        return result
    try:
        after, tree_after = _parse(result, path)
    except FormatError:
        after = None
    if after is None or after != before:
        raise FormatError(f"{path}: formatting would change the policy's meaning "
                          "(a formatter bug; the file was left as it is)")
    tokens_after = _leaves(tree_after)
    if [c.text for c in _comments(result, tokens_after)] != [c.text for c in comments]:
        raise FormatError(f"{path}: formatting would lose or move a comment "
                          "(a formatter bug; the file was left as it is)")
    return result


def _parse(text: str, path: str) -> tuple[PolicyFile, Tree]:
    """The AST and the concrete tree of `text`, from one Lark parse (`both_trees`);
    FormatError with the diagnostics when it does not parse."""
    lone_cr = lone_cr_diagnostic(text, path)
    if lone_cr is not None:
        raise FormatError(f"{path}: does not parse", (lone_cr,))
    try:
        shared, concrete = parse_both(text)
    except lark.exceptions.UnexpectedInput:
        result = parse(text, path)  # its syntax diagnostic (no tree: nothing to format)
    else:
        result = build(shared, text, path)
    if result.file is None:
        raise FormatError(f"{path}: does not parse", result.diagnostics)
    return result.file, concrete


def _comments(text: str, tokens: list[Token]) -> list[_Comment]:
    """Comments in the gaps between tokens (the grammar ignores only whitespace and these)."""
    found: list[_Comment] = []
    previous_end = 0
    line, counted = 1, 0  # the line number at offset `counted`, advanced, never recounted
    for index in range(len(tokens) + 1):
        start = tokens[index].start_pos if index < len(tokens) else len(text)
        gap = text[previous_end:start]
        for match in _COMMENT.finditer(gap):
            position = previous_end + match.start()
            trailing = index > 0 and "\n" not in text[previous_end:position]
            line += text.count("\n", counted, position)
            counted = position
            found.append(_Comment(match.group().rstrip(), line, trailing, index))
        if index < len(tokens):
            previous_end = tokens[index].end_pos
    return found


class _Layout:
    """Concrete tree → logical lines.  Only blocks and rules have a named shape."""

    def __init__(self, tokens: list[Token]) -> None:
        self.index = {id(t): i for i, t in enumerate(tokens)}

    def span(self, items: list[Tree | Token]) -> tuple[int, int]:
        leaves = [self.index[id(t)] for item in items for t in _leaves(item)]
        return leaves[0], leaves[-1]

    def start(self, tree: Tree) -> list[_Line]:
        lines: list[_Line] = []
        previous: str | None = None
        for item in _present(tree.children):
            kind = item.data if isinstance(item, Tree) else "token"
            if previous is None:
                blank: Blank = "keep"
            elif kind == previous == "let_decl":
                blank = "keep"
            else:
                blank = "always"
            lines += self.item(item, 0, blank, block_start=previous is None)
            previous = kind
        return lines

    def item(self, item: Tree | Token, indent: int, blank: Blank, *, block_start: bool
             ) -> list[_Line]:
        children = _present(item.children) if isinstance(item, Tree) else [item]
        braces = [i for i, c in enumerate(children)
                  if isinstance(c, Token) and c.type in ("LBRACE", "RBRACE")]
        if isinstance(item, Tree) and len(braces) == 2:
            return self.block(item, children, braces, indent, blank, block_start)
        if isinstance(item, Tree) and item.data == "rule":
            return self.rule(children, indent, blank, block_start)
        first, last = self.span(children)
        return [_Line(indent, first, last, blank, indent, block_start)]

    def block(self, tree: Tree, children: list[Tree | Token], braces: list[int],
              indent: int, blank: Blank, block_start: bool) -> list[_Line]:
        open_at, close_at = braces
        first, last = self.span(children[:open_at + 1])
        lines = [_Line(indent, first, last, blank, indent, block_start)]
        inner = children[open_at + 1:close_at]
        spaced = tree.data in _BLOCKS_WITH_BLANK_LINES
        for position, child in enumerate(inner):
            child_blank: Blank = "always" if spaced and position > 0 else "keep"
            lines += self.item(child, indent + 1, child_blank, block_start=position == 0)
        close = self.index[id(children[close_at])]
        lines.append(_Line(indent, close, close, "keep", indent + 1, block_start=not inner,
                           closing=True))
        return lines

    def rule(self, children: list[Tree | Token], indent: int, blank: Blank,
             block_start: bool) -> list[_Line]:
        when = next(i for i, c in enumerate(children)
                    if isinstance(c, Token) and c.type == "WHEN")
        first, last = self.span(children[:when])
        lines = [_Line(indent, first, last, blank, indent, block_start)]
        condition = self.span(children[when:when + 2])
        lines.append(_Line(indent + 1, *condition, "never", indent + 1))
        for child in children[when + 2:]:
            lines.append(_Line(indent + 1, *self.span([child]), "never", indent + 1))
        return lines


def _present(children: list[object]) -> list[Tree | Token]:
    return [c for c in children if c is not None]  # type: ignore[misc]


def _leaves(item: Tree | Token) -> list[Token]:
    """The tokens under `item`, in source order.  An explicit stack, not Lark's recursive
    `scan_values`: parentheses are kept in the concrete tree, and 1,000 nested ones (which
    the AST does not see, so E013 does not refuse them) must format, not overflow."""
    found: list[Token] = []
    stack: list[object] = [item]
    while stack:
        current = stack.pop()
        if isinstance(current, Token):
            found.append(current)
        elif isinstance(current, Tree):
            stack.extend(reversed(current.children))
    return found


class _Renderer:
    def __init__(self, tokens: list[Token], comments: list[_Comment]) -> None:
        self.tokens = tokens
        self.own: dict[int, list[_Comment]] = {}
        self.trailing: dict[int, _Comment] = {}
        for comment in comments:
            if comment.trailing:
                self.trailing[comment.before - 1] = comment
            else:
                self.own.setdefault(comment.before, []).append(comment)
        self.out: list[str] = []
        self.last_line = 0  # source line of the last token or comment written

    def render(self, lines: list[_Line]) -> str:
        for line in lines:
            self.line(line)
        end = _Line(0, len(self.tokens), len(self.tokens) - 1, "keep", 0)
        self.comments_before(end)
        return "\n".join(self.out) + "\n" if self.out else ""

    def comments_before(self, line: _Line) -> None:
        """Own-line comments above `line`, and the blank lines the layout allows."""
        comments = self.own.get(line.first, [])
        if line.blank == "always" and self.out:
            self.out.append("")
        for position, comment in enumerate(comments):
            gap = comment.line - self.last_line > 1
            if (gap and line.blank != "never" and not (position == 0 and line.block_start)
                    and self.out and self.out[-1] != ""):
                self.out.append("")
            self.out.append(INDENT * line.comment_indent + comment.text)
            self.last_line = comment.line
        if line.first < len(self.tokens) and not line.closing and line.blank != "never":
            gap = self.tokens[line.first].line - self.last_line > 1
            if (gap and self.out and self.out[-1] != ""
                    and not (line.block_start and not comments)):
                self.out.append("")

    def line(self, line: _Line) -> None:
        self.comments_before(line)
        current = INDENT * line.indent
        previous: Token | None = None
        nesting: list[_Open] = []  # brackets and quantifiers open here, innermost last

        def continued(token: Token) -> str:
            if token.type in _CLOSING:
                bracket = next((o for o in reversed(nesting) if o.kind == "("), None)
                if bracket is not None:
                    return " " * bracket.indent
            column = nesting[-1].column if nesting else len(INDENT) * (line.indent + 1)
            return " " * column

        for index in range(line.first, line.last + 1):
            token = self.tokens[index]
            inner = self.own.get(index, []) if index != line.first else []
            if inner:
                if previous is not None:
                    self.out.append(current)
                for comment in inner:
                    self.out.append(continued(token) + comment.text)
                current, previous = continued(token), None
            elif previous is not None and token.line > (previous.end_line or previous.line):
                self.out.append(current)
                current, previous = continued(token), None
            elif previous is not None:
                current += _space(previous, token)
            column = len(current)
            current += str(token)
            previous = token
            self.open(nesting, index, column, len(current) - len(current.lstrip(" ")))
            self.last_line = token.end_line or token.line or self.last_line
            comment = self.trailing.get(index)
            if comment is not None:
                self.out.append(f"{current}  {comment.text}")
                self.last_line = comment.line
                current, previous = "", None
                if index < line.last:
                    current = continued(self.tokens[index + 1])
        if previous is not None:
            self.out.append(current)

    def open(self, nesting: list[_Open], index: int, column: int, indent: int) -> None:
        """Track what a continuation line is inside of (see `_Open`); `column` is where
        token `index` starts on its output line, `indent` that line's indentation."""
        token = self.tokens[index]
        if token.type in _OPENING:
            if self.line_goes_on(index):  # `f(a,` / `    b)`: aligned with `a`
                nesting.append(_Open("(", column + 1, indent))
            else:  # `f(` at the end of its line: the arguments 4 deeper than that line
                nesting.append(_Open("(", indent + len(INDENT), indent))
        elif token.type in _CLOSING:
            while nesting and nesting.pop().kind != "(":
                pass
        elif token.type in _QUANTIFIERS:
            base = nesting[-1].column if nesting else indent
            nesting.append(_Open("any", base + len(INDENT), indent))

    def line_goes_on(self, index: int) -> bool:
        """Whether the output line goes on after token `index` (the next token follows on
        its source line, with no comment between them)."""
        if index + 1 >= len(self.tokens) or index in self.trailing or self.own.get(index + 1):
            return False
        token = self.tokens[index]
        return self.tokens[index + 1].line == (token.end_line or token.line)


@dataclass(slots=True)
class _Open:
    """An open bracket or quantifier on a logical line, and where a line break inside it
    continues: inside `(`/`[` followed by more on its line, aligned just after the bracket;
    inside a bracket that ends its line, 4 spaces deeper than that line (and its closing
    bracket, if it starts a line, at that line's indentation); inside a quantifier
    (`any x in xs:` and its body, up to the bracket that encloses it), 4 spaces deeper
    than where the quantifier's own line would continue: the enclosing bracket's or
    quantifier's column, or the indentation of the line it starts on."""

    kind: Literal["(", "any"]
    column: int
    indent: int


def _space(previous: Token, token: Token) -> str:
    if previous.type in _NO_SPACE_AFTER or token.type in _NO_SPACE_BEFORE:
        return ""
    if token.type in ("LPAR", "LSQB") and previous.type in _VALUE_END:
        return ""
    return " "
