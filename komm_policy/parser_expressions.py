"""Lark expression trees → `nodes` expressions, with positions, for the parser.

`ExpressionBuilder` builds every expression construct (one `x_<rule>` method per grammar
alternative of `expr`), the literals validated once per load (IP addresses and networks,
regexes, durations, sizes) and string templates with their `{…}` parts; `parser._Builder`
adds the file-level constructs (settings, `let`, `def`, stages, rules, actions, statements).
"""

from __future__ import annotations

import ipaddress
import re

import lark
from lark import Token, Tree

from . import nodes as n
from .errors import Diagnostic, Severity, Span
from .grammar import keywords, lark_parser
from .ipset import normalize_network
from .regex import RegexError, compile_regex
from .syntax_errors import nesting_diagnostic, syntax_diagnostic

# The current character and the plain ones after it (no escape, no brace).
_PLAIN_RUN = re.compile(r".[^\\{}]*", re.DOTALL)
_DOTTED_NAME = re.compile(r"[ \t]*([A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z_][A-Za-z0-9_]*)*[ \t]*")
"""`{sender}` / `{client.ip}`: the common template parts, built without a Lark parse."""

DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The integers a policy may write (E017 outside): SQLite's INTEGER, msgspec's and the
decision log's range."""

DURATION_MAX_MS = INT64_MAX // 1_000_000
"""The longest duration a policy may write (E017 beyond), in ms: 2⁶³−1 ns, about 292 years.
Why nanoseconds: a 64-bit nanosecond count is what the clocks and the OS waits hold
(`time.monotonic_ns`, `threading.TIMEOUT_MAX`), so a setting used as a timeout can never
overflow one; and up to this bound a duration in float seconds is exact to well under a
millisecond (so two different literals never compare equal)."""


class ExpressionBuilder:
    """Walks Lark's expression trees (top-down, explicitly) and builds `nodes`; collects
    literal errors in `diagnostics`."""

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

    # -- expressions ----------------------------------------------------------------------

    def expr(self, item: Tree | Token) -> n.Expr:
        if isinstance(item, Token):  # pragma: no cover - every token is wrapped by a rule
            raise AssertionError(f"bare token {item!r}")
        method = getattr(self, f"x_{item.data}")
        return method(item)

    def x_string(self, tree: Tree) -> n.Expr:
        return self.string(tree.children[0])

    def integer(self, value: int, text: str, span: Span, what: str = "integer") -> int:
        """`value`, or 0 after error E017 when it is outside the 64-bit signed integers:
        the store (SQLite's INTEGER), the wire and the decision log hold no other, so such
        a literal could only fail at run time (a lookup key or a logged value)."""
        if INT64_MIN <= value <= INT64_MAX:
            return value
        self.error("E017", f"{what} `{text}` is outside the 64-bit integers "
                   f"({INT64_MIN} to {INT64_MAX})", span)
        return 0

    def x_int(self, tree: Tree) -> n.Expr:
        tok = tree.children[0]
        span = self.span(tree)
        return n.Literal(kind="int", value=self.integer(int(tok), str(tok), span),
                         text=str(tok), span=span)

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
        """A duration literal → `Literal(kind="duration", value=seconds: float)`; E017
        (value 0) beyond `DURATION_MAX_MS` (2⁶³−1 ns)."""
        text = str(tree.children[0])
        number, unit = re.fullmatch(r"([0-9]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
        span = self.span(tree)
        ms = int(number) * DURATION_UNITS_MS[unit]
        if ms > DURATION_MAX_MS:
            self.error("E017", f"duration `{text}` is outside the 64-bit nanoseconds "
                       f"(at most {DURATION_MAX_MS}ms, about 292 years)", span)
            ms = 0
        return n.Literal(kind="duration", value=ms / 1000, text=text, span=span)

    def x_size(self, tree: Tree) -> n.Expr:
        text = str(tree.children[0])
        number, unit = re.fullmatch(r"([0-9]+)([A-Za-z]+)", text).groups()  # type: ignore[union-attr]
        span = self.span(tree)
        value = self.integer(int(number) * SIZE_UNITS[unit.lower()], text, span, "size")
        return n.Literal(kind="size", value=value, text=text, span=span)

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
                # A run of plain characters at once: a multi-MB literal costs one slice,
                # not one list item per character.
                end = _PLAIN_RUN.match(raw, i).end()  # type: ignore[union-attr]
                buf.append(raw[i:end])
                i = end
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
        sub = ExpressionBuilder(self.path, source, line, column)
        expr = sub.expr(tree)
        self.diagnostics.extend(sub.diagnostics)
        return expr
