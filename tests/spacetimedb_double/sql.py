"""The SQL subset the double answers, with SpacetimeDB's own error texts.

`SELECT * | col [AS a], … FROM t [WHERE pred] [LIMIT n]`, `pred` of `col op literal`
joined by AND/OR with parentheses (`= != <> < > <= >=`).  String literals unescape `''`
(sqlparser 0.38, PostgreSQL dialect: a backslash is an ordinary character).  Error texts
from SpacetimeDB `crates/sql-parser/src/parser/errors.rs`, `crates/expr/src/errors.rs` and
sqlparser's tokenizer (reference note `spacetimedb.md` §2.2, §3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class SqlError(Exception):
    """Answered as 400 with this text."""


_TOKEN = re.compile(r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
                    r"|(?P<op><>|!=|<=|>=|[=<>(),*;.])|(?P<quote>['\"]))")
UNSUPPORTED_WORDS = {"ORDER": "Unsupported: ORDER BY", "DISTINCT": "Unsupported: DISTINCT",
                     "GROUP": "Unsupported: GROUP BY", "HAVING": "Unsupported: HAVING",
                     "OFFSET": "Unsupported: OFFSET", "UNION": "Unsupported: UNION"}
UNSUPPORTED_EXPR = {"IN", "LIKE", "NOT", "BETWEEN", "IS"}


@dataclass
class Tok:
    kind: str  # num, word, op, str, ident
    text: str
    column: int


def tokenize(sql: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    while pos < len(sql):
        if sql[pos:].strip() == "":
            break
        m = _TOKEN.match(sql, pos)
        if not m:
            raise SqlError(f"sql parser error: Unexpected character at position {pos}")
        if m.group("quote"):
            q = m.group("quote")
            start = m.start("quote")
            i = start + 1
            buf = []
            while True:
                if i >= len(sql):
                    what = "string literal" if q == "'" else "delimited identifier"
                    raise SqlError(f"sql parser error: Unterminated {what} at Line: 1, "
                                   f"Column {start + 1}")
                if sql[i] == q:
                    if i + 1 < len(sql) and sql[i + 1] == q:
                        buf.append(q)
                        i += 2
                        continue
                    break
                buf.append(sql[i])
                i += 1
            out.append(Tok("str" if q == "'" else "ident", "".join(buf), start + 1))
            pos = i + 1
            continue
        kind = m.lastgroup or "op"
        out.append(Tok(kind, m.group(kind), m.start(kind) + 1))
        pos = m.end()
    return out


@dataclass
class Select:
    table: str
    columns: list[tuple[str, str]] | None  # (column, output name); None = *
    where: Any
    limit: int | None


class Parser:
    def __init__(self, sql: str) -> None:
        if not sql.strip():
            raise SqlError("Empty SQL query")
        self.toks = tokenize(sql)
        semis = [i for i, t in enumerate(self.toks) if t.kind == "op" and t.text == ";"]
        if semis and semis[0] != len(self.toks) - 1:
            raise SqlError("Multiple SQL statements are not supported")
        if semis:
            self.toks.pop()
        self.i = 0
        for t in self.toks:
            if t.kind == "word" and t.text.upper() in UNSUPPORTED_WORDS:
                raise SqlError(UNSUPPORTED_WORDS[t.text.upper()])

    def peek(self) -> Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self) -> Tok:
        tok = self.peek()
        if tok is None:
            raise SqlError("sql parser error: Expected an expression, found: EOF")
        self.i += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok and tok.kind == "word" and tok.text.upper() == word:
            self.i += 1
            return True
        return False

    def name(self) -> str:
        tok = self.next()
        if tok.kind not in ("word", "ident"):
            raise SqlError(f"sql parser error: Expected identifier, found: {tok.text}")
        return tok.text

    def parse(self) -> Select:
        if not self.keyword("SELECT"):
            tok = self.peek()
            raise SqlError(f"Unsupported: {tok.text if tok else ''}")
        columns: list[tuple[str, str]] | None = None
        if self.peek() and self.peek().text == "*":  # type: ignore[union-attr]
            self.next()
        else:
            columns = []
            while True:
                col = self.name()
                out = self.name() if self.keyword("AS") else col
                columns.append((col, out))
                if not (self.peek() and self.peek().text == ","):  # type: ignore[union-attr]
                    break
                self.next()
        if not self.keyword("FROM"):
            raise SqlError("sql parser error: Expected FROM")
        table = self.name()
        where = self.expr() if self.keyword("WHERE") else None
        limit = None
        if self.keyword("LIMIT"):
            tok = self.next()
            if tok.kind != "num":
                raise SqlError(f"Unsupported: LIMIT {tok.text}")
            limit = int(tok.text)
        if self.peek() is not None:
            tok = self.peek()
            if tok.kind == "word" and tok.text.upper() in UNSUPPORTED_EXPR:  # type: ignore
                raise SqlError(f"Unsupported expression: {tok.text}")  # type: ignore
            raise SqlError(f"sql parser error: Expected end of statement, found: "
                           f"{tok.text}")  # type: ignore[union-attr]
        return Select(table, columns, where, limit)

    def expr(self) -> Any:
        left = self.conj()
        while self.keyword("OR"):
            left = ("or", left, self.conj())
        return left

    def conj(self) -> Any:
        left = self.atom()
        while self.keyword("AND"):
            left = ("and", left, self.atom())
        return left

    def atom(self) -> Any:
        tok = self.peek()
        if tok and tok.text == "(":
            self.next()
            inner = self.expr()
            if self.next().text != ")":
                raise SqlError("sql parser error: Expected )")
            return inner
        if tok and tok.kind == "word" and tok.text.upper() in UNSUPPORTED_EXPR:
            raise SqlError(f"Unsupported expression: {tok.text}")
        left = self.operand()
        op = self.next()
        if op.kind == "word" and op.text.upper() in UNSUPPORTED_EXPR:
            raise SqlError(f"Unsupported binary operator: {op.text.upper()}")
        if op.text not in ("=", "!=", "<>", "<", ">", "<=", ">="):
            raise SqlError(f"Unsupported binary operator: {op.text}")
        right = self.operand()
        if left[0] != "col" and right[0] != "col":
            # crates/expr/src/lib.rs: a literal's type comes from the other side
            raise SqlError("Cannot resolve type for literal expression")
        if left[0] != "col":
            flipped = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(op.text, op.text)
            return ("cmp", right[1], flipped, left)
        if right[0] == "col":
            raise SqlError("Unsupported: comparing two columns")
        return ("cmp", left[1], op.text, right)

    def operand(self) -> tuple[str, Any]:
        tok = self.next()
        if tok.kind == "word" and tok.text.upper() == "NULL":
            raise SqlError("Unsupported literal expression: NULL")
        if tok.kind == "word" and tok.text.lower() in ("true", "false"):
            return ("bool", tok.text.lower() == "true")
        if tok.kind in ("num", "str"):
            return (tok.kind, tok.text)
        if tok.kind in ("word", "ident"):
            return ("col", tok.text)
        raise SqlError(f"Unsupported literal expression: {tok.text}")


INT_TYPES = {"U8", "U16", "U32", "U64", "U128", "U256", "I8", "I16", "I32", "I64", "I128",
             "I256"}


def coerce(literal: tuple[str, Any], column_type: str) -> Any:
    kind, text = literal
    if column_type in INT_TYPES:
        try:
            return int(text)
        except (TypeError, ValueError):
            pass
    elif (column_type == "String" and kind == "str") or (column_type == "Bool" and kind == "bool"):
        return text
    elif column_type in ("F32", "F64") and kind == "num":
        return float(text)
    elif column_type == "Identity" and kind == "str":
        try:
            return format(int(text.removeprefix("0x"), 16), "064x")
        except ValueError:
            pass
    elif column_type.startswith(("Option<", "Ref:", "Array<")):
        raise SqlError(f"Literal values for type {column_type} are not supported")
    raise SqlError(f"The literal expression `{text}` cannot be parsed as type "
                   f"`{column_type}`")


def evaluate(pred: Any, row: dict[str, Any], types: dict[str, str]) -> bool:
    if pred is None:
        return True
    if pred[0] == "or":
        return evaluate(pred[1], row, types) or evaluate(pred[2], row, types)
    if pred[0] == "and":
        return evaluate(pred[1], row, types) and evaluate(pred[2], row, types)
    _, col, op, literal = pred
    value = row[col]
    other = coerce(literal, types[col])
    if types[col] == "Identity":
        value = format(int(value, 16), "064x")
    return {"=": value == other, "!=": value != other, "<>": value != other,
            "<": value < other, ">": value > other, "<=": value <= other,
            ">=": value >= other}[op]


def columns_in(pred: Any) -> list[str]:
    if pred is None:
        return []
    if pred[0] in ("or", "and"):
        return columns_in(pred[1]) + columns_in(pred[2])
    return [pred[1]]
