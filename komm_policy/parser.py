"""Text → AST.  Parses with the shared Lark parser and turns its tree into `nodes`.

Syntax errors never escape as Lark exceptions: they become positioned diagnostics
(`syntax_errors`).  Literal values (IP addresses, CIDRs, regexes, durations, sizes,
string templates) are validated and built here, once per load.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import lark
from lark import Token, Tree

from . import nodes as n
from .errors import Diagnostic, Severity, Span
from .grammar import keywords, lark_parser
from .ipset import normalize_network
from .regex import RegexError, compile_regex
from .syntax_errors import ACTION_WORDS, nesting_diagnostic, syntax_diagnostic

__all__ = ["ParseResult", "keywords", "parse"]

_DOTTED_NAME = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z_][A-Za-z0-9_]*)*[ \t]*")
"""`{sender}` / `{client.ip}`: the common template parts, built without a Lark parse."""

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


@dataclass(frozen=True, slots=True)
class ParseResult:
    file: n.PolicyFile | None
    diagnostics: tuple[Diagnostic, ...]


def parse(text: str, path: str = "<policy>") -> ParseResult:
    """Parse one policy file.  Returns the AST (None on a syntax error) and diagnostics."""
    text = text.removeprefix("\ufeff")
    try:
        tree = lark_parser().parse(text, start="start")
    except lark.exceptions.UnexpectedInput as exc:
        return ParseResult(None, (syntax_diagnostic(exc, text, path),))
    deep = nesting_diagnostic(tree, path)
    if deep is not None:
        return ParseResult(None, (deep,))
    builder = _Builder(path, text)
    policy = builder.policy_file(tree)
    errors = tuple(builder.diagnostics)
    return ParseResult(None if any(d.is_error for d in errors) else policy, errors)


# ---------------------------------------------------------------------------------------
# Lark tree → AST


class _Builder:
    """Walks Lark's tree (top-down, explicitly) and builds `nodes`; collects literal errors."""

    def __init__(self, path: str, text: str, line_base: int = 1, col_base: int = 1) -> None:
        self.path = path
        self.text = text
        self.line_base = line_base
        self.col_base = col_base
        self.diagnostics: list[Diagnostic] = []

    # -- positions ------------------------------------------------------------------------

    def _pos(self, line: int, column: int) -> tuple[int, int]:
        if self.line_base == 1 and self.col_base == 1:
            return line, column
        return self.line_base, self.col_base + column - 1

    def span(self, item: Tree | Token) -> Span:
        if isinstance(item, Token):
            line, col = self._pos(item.line or 1, item.column or 1)
            end_line, end_col = self._pos(item.end_line or item.line or 1,
                                          item.end_column or (item.column or 1) + 1)
            return Span(self.path, line, col, end_line, end_col)
        meta = item.meta
        if getattr(meta, "empty", True):
            return Span(self.path, self.line_base, self.col_base, self.line_base,
                        self.col_base + 1)
        line, col = self._pos(meta.line, meta.column)
        end_line, end_col = self._pos(meta.end_line, meta.end_column)
        return Span(self.path, line, col, end_line, end_col)

    def error(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, Severity.ERROR, message, span, hint))

    def name(self, token: Token, what: str) -> str:
        value = str(token)
        if value in keywords():
            self.error("E014", f"`{value}` is a reserved word and cannot be used as {what}",
                       self.span(token), "choose another name")
        return value

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
            return n.Modification(kind=kind, header=header, value=value,
                                  index=int(index.children[0]) if index is not None else None,
                                  header_span=self.span(header_tok), span=span)
        return n.Modification(kind=kind, value=self.expr(children[0]), span=span)

    # -- expressions ----------------------------------------------------------------------

    def expr(self, item: Tree | Token) -> n.Expr:
        if isinstance(item, Token):  # pragma: no cover - every token is wrapped by a rule
            raise AssertionError(f"bare token {item!r}")
        method = getattr(self, f"x_{item.data}")
        return method(item)

    def x_string(self, tree: Tree) -> n.Expr:
        return self.string(tree.children[0])

    def x_int(self, tree: Tree) -> n.Expr:
        tok = tree.children[0]
        return n.Literal(kind="int", value=int(tok), text=str(tok), span=self.span(tree))

    def x_true(self, tree: Tree) -> n.Expr:
        return n.Literal(kind="bool", value=True, text="true", span=self.span(tree))

    def x_false(self, tree: Tree) -> n.Expr:
        return n.Literal(kind="bool", value=False, text="false", span=self.span(tree))

    def x_none(self, tree: Tree) -> n.Expr:
        return n.Literal(kind="none", value=None, text="none", span=self.span(tree))

    def x_ip(self, tree: Tree) -> n.Expr:
        tok = tree.children[0]
        text = str(tok)
        span = self.span(tree)
        try:
            if "/" in text:
                network = normalize_network(ipaddress.ip_network(text, strict=True))
                return n.Literal(kind="cidr", value=network, text=text, span=span)
            address = ipaddress.ip_address(text)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            return n.Literal(kind="ip", value=address, text=text, span=span)
        except ValueError as exc:
            hint = None
            if "host bits set" in str(exc):
                fixed = ipaddress.ip_network(text, strict=False)
                hint = f"did you mean {fixed}?"
            self.error("E009", f"invalid IP address or network `{text}`: {exc}", span, hint)
            return n.Literal(kind="none", value=None, text=text, span=span)

    def x_duration(self, tree: Tree) -> n.Expr:
        text = str(tree.children[0])
        number, unit = re.fullmatch(r"([0-9]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
        return n.Literal(kind="duration", value=int(number) * DURATION_UNITS[unit], text=text,
                         span=self.span(tree))

    def x_size(self, tree: Tree) -> n.Expr:
        text = str(tree.children[0])
        number, unit = re.fullmatch(r"([0-9]+)([A-Za-z]+)", text).groups()  # type: ignore[union-attr]
        return n.Literal(kind="size", value=int(number) * SIZE_UNITS[unit.lower()], text=text,
                         span=self.span(tree))

    def x_regex(self, tree: Tree) -> n.Expr:
        tok = tree.children[0]
        text = str(tok)
        span = self.span(tree)
        closing = text.rindex("/")
        pattern, flag_text = text[1:closing], text[closing + 1:]
        try:
            compiled = compile_regex(pattern, flag_text)
        except RegexError as exc:
            if exc.offset < 0:                      # a flag: point at the whole literal
                self.error("E011", exc.message, span, exc.hint)
            else:
                col = span.column + 1 + exc.offset
                self.error("E011", f"invalid regex: {exc.message}", Span(
                    self.path, span.line, col, span.line, col + 1), exc.hint)
            return n.Literal(kind="none", value=None, text=text, span=span)
        return n.Literal(kind="regex", value=compiled, text=text, span=span)

    def x_name(self, tree: Tree) -> n.Expr:
        tok = tree.children[0]
        return n.Name(name=str(tok), span=self.span(tree))

    def x_attr(self, tree: Tree) -> n.Expr:
        obj, name_tok = tree.children
        return n.Attr(obj=self.expr(obj), name=str(name_tok), name_span=self.span(name_tok),
                      span=self.span(tree))

    def x_index(self, tree: Tree) -> n.Expr:
        obj, index = tree.children
        return n.Index(obj=self.expr(obj), index=self.expr(index), span=self.span(tree))

    def x_call(self, tree: Tree) -> n.Expr:
        func, *items = tree.children
        args: list[n.Expr] = []
        kwargs: list[n.Keyword] = []
        for item in items:
            if item is None:
                continue
            if isinstance(item, Tree) and item.data == "keyword":
                name, value = item.children
                kwargs.append(n.Keyword(name=str(name), value=self.expr(value),
                                        name_span=self.span(name), span=self.span(item)))
            elif kwargs:
                self.error("E001", "a positional argument after `column = key`",
                           self.span(item), "write the table name first, then the keys")
            else:
                args.append(self.expr(item))
        return n.Call(func=str(func), args=tuple(args), kwargs=tuple(kwargs),
                      func_span=self.span(func), span=self.span(tree))

    def x_list(self, tree: Tree) -> n.Expr:
        items = tuple(self.expr(a) for a in tree.children if a is not None)
        return n.ListExpr(items=items, span=self.span(tree))

    def x_not_(self, tree: Tree) -> n.Expr:
        return n.Not(operand=self.expr(tree.children[0]), span=self.span(tree))

    def x_or_(self, tree: Tree) -> n.Expr:
        return n.BoolOp(op="or", operands=tuple(self.expr(c) for c in tree.children),
                        span=self.span(tree))

    def x_and_(self, tree: Tree) -> n.Expr:
        return n.BoolOp(op="and", operands=tuple(self.expr(c) for c in tree.children),
                        span=self.span(tree))

    def x_compare(self, tree: Tree) -> n.Expr:
        left, op_tree, right = tree.children
        op = " ".join(str(t) for t in op_tree.children)
        return n.Compare(op=op, left=self.expr(left), right=self.expr(right),  # type: ignore[arg-type]
                         op_span=self.span(op_tree), span=self.span(tree))

    def x_quantifier(self, tree: Tree) -> n.Expr:
        kind_tok, var_tok, iterable, body = tree.children
        return n.Quantifier(kind=str(kind_tok), var=self.name(var_tok, "a variable name"),  # type: ignore[arg-type]
                            iterable=self.expr(iterable), body=self.expr(body),
                            var_span=self.span(var_tok), span=self.span(tree))

    # -- strings and templates ------------------------------------------------------------

    def plain_string(self, tok: Token, what: str) -> str:
        literal = self.string(tok)
        if isinstance(literal, n.Template):
            self.error("E012", f"{what} cannot interpolate `{{…}}`", self.span(tok),
                       "write `{{` for a literal brace")
            return ""
        return str(literal.value)

    def string(self, tok: Token) -> n.Literal | n.Template:
        """Decode escapes and split `{expr}` interpolations into a Template."""
        raw = str(tok)[1:-1]
        span = self.span(tok)
        parts: list[str | n.Expr] = []
        buf: list[str] = []
        i = 0
        while i < len(raw):
            char = raw[i]
            if char == "\\":
                nxt = raw[i + 1] if i + 1 < len(raw) else ""
                mapped = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}.get(nxt)
                if mapped is None:
                    col = span.column + 1 + i
                    self.error("E012", f"unknown escape `\\{nxt}` in string",
                               Span(self.path, span.line, col, span.line, col + 2),
                               'the escapes are \\" \\\\ \\n \\t; write {{ and }} for braces')
                    mapped = nxt
                buf.append(mapped)
                i += 2
            elif raw.startswith("{{", i):
                buf.append("{")
                i += 2
            elif raw.startswith("}}", i):
                buf.append("}")
                i += 2
            elif char == "{":
                close = raw.index("}", i)
                source = raw[i + 1:close]
                column = span.column + 1 + i + 1
                if buf:
                    parts.append("".join(buf))
                    buf = []
                parts.append(self.embedded(source, span.line, column))
                i = close + 1
            else:
                buf.append(char)
                i += 1
        if buf:
            parts.append("".join(buf))
        if not any(not isinstance(p, str) for p in parts):
            value = "".join(p for p in parts if isinstance(p, str))
            return n.Literal(kind="string", value=value, text=str(tok), span=span)
        return n.Template(parts=tuple(parts), span=span)

    def dotted_name(self, source: str, line: int, column: int) -> n.Expr:
        """Name/Attr nodes for `a.b.c`, with the same spans a full parse gives."""
        offset = len(source) - len(source.lstrip(" \t"))
        start = column + offset
        expr: n.Expr | None = None
        position = start
        for part in source.strip(" \t").split("."):
            part_span = Span(self.path, line, position, line, position + len(part))
            whole = Span(self.path, line, start, line, position + len(part))
            if expr is None:
                expr = n.Name(name=part, span=whole)
            else:
                expr = n.Attr(obj=expr, name=part, name_span=part_span, span=whole)
            position += len(part) + 1
        assert expr is not None
        return expr

    def embedded(self, source: str, line: int, column: int) -> n.Expr:
        """Parse the expression inside `{…}` with positions mapped into the file."""
        if not source.strip():
            span = Span(self.path, line, column - 1, line, column + 1)
            self.error("E012", "empty `{}` in string", span,
                       "put an expression inside, or write `{{}}` for literal braces")
            return n.Literal(kind="string", value="", span=span)
        simple = _DOTTED_NAME.fullmatch(source)
        if simple is not None and simple.group(1) not in keywords():
            return self.dotted_name(source, line, column)
        try:
            tree = lark_parser().parse(source, start="expr")
        except lark.exceptions.UnexpectedInput as exc:
            self.diagnostics.append(syntax_diagnostic(exc, source, self.path, line, column,
                                                       embedded=True))
            return n.Literal(kind="string", value="", span=Span(self.path, line, column, line,
                                                                column + 1))
        deep = nesting_diagnostic(tree, self.path, line, column, embedded=True)
        if deep is not None:
            self.diagnostics.append(deep)
            return n.Literal(kind="string", value="", span=Span(self.path, line, column, line,
                                                                column + 1))
        sub = _Builder(self.path, source, line, column)
        expr = sub.expr(tree)
        self.diagnostics.extend(sub.diagnostics)
        return expr
