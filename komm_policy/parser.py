"""Text → AST.  Parses with the shared Lark parser and turns its tree into `nodes`.

Syntax errors never escape as Lark exceptions: they become positioned diagnostics
(`syntax_errors`).  Expressions, and the literal values in them (IP addresses, CIDRs,
regexes, durations, sizes, string templates), are built and validated once per load by
`parser_expressions`; this module builds the file-level constructs around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import lark
from lark import Token, Tree

from . import nodes as n
from .errors import Diagnostic
from .grammar import keywords, lark_parser
from .parser_expressions import ExpressionBuilder
from .release import release_tree
from .syntax_errors import (
    ACTION_WORDS,
    lone_cr_diagnostic,
    nesting_diagnostic,
    syntax_diagnostic,
)

__all__ = ["ParseResult", "keywords", "parse"]

RELEASE_MIN_CHARS = 64 * 1024
"""Files at least this long have their Lark tree freed in slices (`release_tree`): at
about 12 tree objects per term, a 20,000-term condition's tree took 150 ms to free in one
go, holding the interpreter lock."""


@dataclass(frozen=True, slots=True)
class ParseResult:
    file: n.PolicyFile | None
    diagnostics: tuple[Diagnostic, ...]


def parse(text: str, path: str = "<policy>") -> ParseResult:
    """Parse one policy file.  Returns the AST (None on a syntax error) and diagnostics."""
    text = text.removeprefix("\ufeff")
    lone_cr = lone_cr_diagnostic(text, path)
    if lone_cr is not None:
        return ParseResult(None, (lone_cr,))
    try:
        tree = lark_parser().parse(text, start="start")
    except lark.exceptions.UnexpectedInput as exc:
        return ParseResult(None, (syntax_diagnostic(exc, text, path),))
    result = build(tree, text, path)
    if len(text) >= RELEASE_MIN_CHARS:  # one cascade of frees would hold the GIL
        box = [tree]
        del tree
        release_tree(box, Tree)
    return result


def build(tree: Tree, text: str, path: str = "<policy>") -> ParseResult:
    """The AST of `text` from the shared parser's tree of it (`parse`, or
    `both_trees.parse_both`)."""
    deep = nesting_diagnostic(tree, path)
    if deep is not None:
        return ParseResult(None, (deep,))
    builder = _Builder(path, text)
    policy = builder.policy_file(tree)
    errors = tuple(builder.diagnostics)
    return ParseResult(None if any(d.is_error for d in errors) else policy, errors)


# ---------------------------------------------------------------------------------------
# Lark tree → AST


class _Builder(ExpressionBuilder):
    """Builds the file-level `nodes` (settings, `let`, `def`, stages, rules, actions,
    statements); the expressions inside them come from `ExpressionBuilder`."""

    # -- file level -----------------------------------------------------------------------

    def policy_file(self, tree: Tree) -> n.PolicyFile:
        items = tuple(self.item(child) for child in tree.children)
        return n.PolicyFile(path=self.path, items=items, span=self.span(tree))

    def item(self, tree: Tree) -> n.Item:
        if tree.data == "settings":
            settings = tuple(
                n.Setting(name=self.name(s.children[0], "a setting name"),
                          value=self.value_or_action(s.children[1]),
                          name_span=self.span(s.children[0]), span=self.span(s))
                for s in tree.children
            )
            return n.SettingsBlock(settings=settings, span=self.span(tree))
        if tree.data == "let_decl":
            name_tok, value = tree.children
            return n.Let(name=self.name(name_tok, "a constant name"), value=self.expr(value),
                         name_span=self.span(name_tok), span=self.span(tree))
        if tree.data == "def_decl":
            return self.function_def(tree)
        assert tree.data == "stage", tree.data
        name_tok, *items = tree.children
        return n.StageBlock(
            name=str(name_tok),
            items=tuple(self.rule(i) if i.data == "rule" else self.default(i) for i in items),
            name_span=self.span(name_tok),
            span=self.span(tree),
        )

    def function_def(self, tree: Tree) -> n.FunctionDef:
        """def_decl: "def" NAME "(" [NAME ("," NAME)*] ")" "=" expr"""
        name_tok, *param_toks, body = tree.children
        params = [tok for tok in param_toks if tok is not None]
        return n.FunctionDef(
            name=self.name(name_tok, "a function name"),
            params=tuple(self.name(tok, "a parameter name") for tok in params),
            body=self.expr(body),
            param_spans=tuple(self.span(tok) for tok in params),
            name_span=self.span(name_tok),
            span=self.span(tree),
        )

    def value_or_action(self, tree: Tree | Token) -> n.Expr | n.Action:
        if isinstance(tree, Tree) and tree.data in ACTION_WORDS:
            return self.action(tree)
        return self.expr(tree)

    def default(self, tree: Tree) -> n.Default:
        return n.Default(action=self.action(tree.children[0]), span=self.span(tree))

    def rule(self, tree: Tree) -> n.Rule:
        name_tok, dry_run, when, *rest = tree.children
        *statements, final, on_error = rest
        return n.Rule(
            name=self.name(name_tok, "a rule name"),
            when=self.expr(when),
            statements=tuple(self.statement(s) for s in statements),
            final=self.final(final.children[0]),
            on_error=self.final(on_error.children[0]) if on_error is not None else None,
            dry_run=dry_run is not None,
            name_span=self.span(name_tok),
            span=self.span(tree),
        )

    def final(self, item: Tree | Token) -> n.Action | n.Continue:
        if isinstance(item, Token):
            return n.Continue(span=self.span(item))
        return self.action(item)

    def action(self, tree: Tree) -> n.Action:
        kind = tree.data
        span = self.span(tree)
        if kind in ("accept", "discard"):
            return n.Action(kind=kind, span=span)
        if kind == "quarantine":
            (reason,) = tree.children
            return n.Action(kind=kind, message=self.string(reason) if reason else None,
                            span=span)
        code, enhanced, message = tree.children
        return n.Action(
            kind=kind,
            code=int(code) if code is not None else None,
            enhanced=str(enhanced) if enhanced is not None else None,
            message=self.string(message) if message is not None else None,
            code_span=self.span(code) if code is not None else None,
            enhanced_span=self.span(enhanced) if enhanced is not None else None,
            span=span,
        )

    def statement(self, tree: Tree) -> n.Statement:
        span = self.span(tree)
        if tree.data == "log_stmt":
            return n.Log(message=self.expr(tree.children[0]), span=span)
        kind = tree.data
        children = tree.children
        if kind in ("add_header", "insert_header", "change_header", "delete_header"):
            header_tok = children[0]
            header = self.plain_string(header_tok, "a header name")
            value = None
            index = None
            if kind == "delete_header":
                index = children[1]
            elif kind == "add_header":
                value = self.expr(children[1])
            else:
                value, index = self.expr(children[1]), children[2]
            if index is not None:
                index = self.integer(int(index.children[0]), str(index.children[0]),
                                     self.span(index.children[0]), "header position")
            return n.Modification(kind=kind, header=header, value=value, index=index,
                                  header_span=self.span(header_tok), span=span)
        return n.Modification(kind=kind, value=self.expr(children[0]), span=span)
