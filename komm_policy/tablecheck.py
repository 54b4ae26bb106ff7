"""Checking table lookups against the schema: `lookup`, `lookup_all`, `exists`, `row.field`.

A call names its table as a string literal and its keys as `column = value`.  The checker
resolves both against the schema file (unknown names are E140/E141 with a did-you-mean),
checks each key's type against the column's meaning (E142), and picks the index the
directory must build (E143 when the column's meaning gives none): equality on the key
columns, or, for an `ip` key on a `network` column, the containment index.  Without a
schema file the calls are typed `any` and one W209 says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import nodes as n
from . import types as t
from .directory.keys import lookup_key
from .directory.schema import INDEXABLE, Column, Schema, Table
from .directory.snapshot import IndexSpec
from .errors import Span

RETURNS = {"lookup": "row", "lookup_all": "rows", "exists": "bool"}
"""The table lookup built-ins and what each gives."""


@dataclass(frozen=True, slots=True)
class TableCall:
    """A checked table lookup: its columns (`spec`, with the key expressions `keys` in
    their order), and the index it reads (`index`): `spec`, or a partial index with the
    literal keys folded in (`where`), keyed by the columns at `positions` of `keys`."""

    function: str
    spec: IndexSpec
    keys: tuple[n.Expr, ...]
    index: IndexSpec
    positions: tuple[int, ...]

    @property
    def label(self) -> str:
        """The lookup's name in decision records and metrics, e.g.
        `exists(blocked_domains: domain)`."""
        return f"{self.function}({self.spec.table}: {', '.join(self.spec.columns)})"


def column_type(column: Column) -> t.Type:
    """The language type of a column's values."""
    base = {
        "text": t.STRING, "address": t.ADDRESS, "network": t.CIDR, "bool": t.BOOL,
        "integer": t.INT, "float": t.FLOAT, "timestamp": t.TIMESTAMP,
        "identity": t.IDENTITY,
    }.get(column.type)
    if column.type == "enum":
        base = t.Type("enum", variants=column.variants)
    elif column.type == "list":
        base = t.list_of(column_type(Column(column.name, column.element or "text")))
    assert base is not None
    return base.opt() if column.optional else base


def key_problem(column: Column, key: t.Type, expr: n.Expr) -> str | None:
    """Why a key of type `key` cannot look up `column` (None: it can)."""
    if key.is_any or key.kind == "none":
        return None
    kind = column.type
    if kind in ("text", "address"):
        ok = key.is_text
    elif kind == "enum":
        ok = key.is_text or (key.kind == "enum" and key.variants == column.variants)
        if ok and isinstance(expr, n.Literal) and expr.kind == "string" and (
                expr.value not in column.variants):
            return (f"{expr.text} is not a variant of column `{column.name}` "
                    f"({', '.join(column.variants)})")
    elif kind == "network":
        ok = key.kind in ("ip", "cidr")
    elif kind == "identity":
        ok = key.is_text or key.kind == "identity"
    elif kind == "integer":
        ok = key.kind == "int"
    else:
        ok = key.kind == kind
    if ok:
        return None
    return f"column `{column.name}` holds {column_type(column).required()}, but the key is {key}"


def text_literals(expr: n.Expr, let_value: Callable[[str], n.Expr | None],
                  *, depth: int = 0) -> list[tuple[n.Literal, str | None]]:
    """The string literals an operand of a comparison stands for, each with the `let`
    constant it came from (None: written in place): a literal, a list of them, or a
    constant naming either.  Anything computed gives nothing (it is checked at run time
    only as text)."""
    if isinstance(expr, n.Literal):
        return [(expr, None)] if expr.kind == "string" else []
    if isinstance(expr, n.ListExpr):
        return [found for item in expr.items
                for found in text_literals(item, let_value, depth=depth + 1)]
    if isinstance(expr, n.Name) and depth < 8:
        value = let_value(expr.name)
        if value is not None:
            return [(literal, origin or expr.name)
                    for literal, origin in text_literals(value, let_value, depth=depth + 1)]
    return []


def variant_problems(enum: t.Type, operand: n.Expr,
                     let_value: Callable[[str], n.Expr | None],
                     suggest: Callable[[str, object], str | None]
                     ) -> list[tuple[str, Span, str | None]]:
    """(message, span, hint) for each text an enum is compared with that names none of
    its variants: `s.status == "Activ"` or `s.status in ["Active", "Pausd"]` would
    never be true (E142).  The span is the literal's when written in place, else the
    constant's name at the comparison."""
    problems = []
    for literal, origin in text_literals(operand, let_value):
        if literal.value in enum.variants:
            continue
        where = f" (in `let {origin}`)" if origin else ""
        span = literal.span if origin is None else operand.span
        problems.append((f"{literal.text}{where} is not a variant of {enum.required()}, "
                         "so this comparison is never true", span,
                         suggest(str(literal.value), enum.variants)))
    return problems


_FOLDED = frozenset({"bool", "int", "string"})
"""Literal kinds a partial index folds in (their index key is known when checked)."""


def partial_index(spec: IndexSpec, keys: tuple[n.Expr, ...], table: Table
                  ) -> tuple[IndexSpec, tuple[int, ...]]:
    """The index a call reads: its equality columns with a literal key (`active = true`)
    folded into a partial index (`IndexSpec.where`), as long as one column is left;
    and the positions in `keys` of the index's columns."""
    where: list[tuple[str, object]] = []
    positions: list[int] = []
    for i, (column, key) in enumerate(zip(spec.columns, keys, strict=True)):
        if (spec.kind == "eq" or i > 0) and isinstance(key, n.Literal) and key.kind in _FOLDED:
            normal = lookup_key(table.by_name[column], key.value)
            if normal is not None:
                where.append((column, normal))
                continue
        positions.append(i)
    if not where or not positions:
        return spec, tuple(range(len(keys)))
    return (IndexSpec(spec.table, tuple(spec.columns[i] for i in positions), spec.kind,
                      tuple(where)), tuple(positions))


class TableChecker:
    """Types table lookups and row fields for `Inference`."""

    def __init__(self, schema: Schema | None, error: Callable[..., t.Type],
                 warn: Callable[..., None], suggest: Callable[[str, object], str | None]
                 ) -> None:
        self.schema = schema
        self.error = error
        self.warn = warn
        self.suggest = suggest
        self.calls: dict[int, TableCall] = {}
        self.warned_no_schema = False

    def call(self, expr: n.Call, key_types: list[t.Type]) -> t.Type:
        function = expr.func
        if len(expr.args) != 1 or not expr.kwargs:
            return self.error("E104", f"`{function}()` takes the table name and at least one "
                              "`column = key`", expr.span,
                              f'e.g. {function}("blocked_domains", domain = domain(sender))')
        table_expr = expr.args[0]
        if not (isinstance(table_expr, n.Literal) and table_expr.kind == "string"):
            return self.error("E105", f"the table name of `{function}()` must be a string "
                              "literal", table_expr.span,
                              "tables are fixed when the policy loads")
        if self.schema is None:
            if not self.warned_no_schema:
                self.warned_no_schema = True
                self.warn("W209", "no schema file: table lookups are not checked",
                          expr.span, "put schema.toml beside the policies "
                          "(`komm-policy db schema > policies/schema.toml`, then annotate)")
            return self._returns(function, None)
        name = str(table_expr.value)
        table = self.schema.tables.get(name)
        if table is None:
            return self.error("E140", f"unknown table `{name}`", table_expr.span,
                              self.suggest(name, self.schema.tables)
                              or f"the schema has: {', '.join(self.schema.tables) or 'none'}")
        seen: dict[str, Span] = {}
        net: tuple[str, n.Expr] | None = None
        equal: list[tuple[str, n.Expr]] = []
        ok = True
        for keyword, key_type in zip(expr.kwargs, key_types, strict=True):
            column = table.by_name.get(keyword.name)
            if column is None:
                self.error("E141", f"table `{name}` has no column `{keyword.name}`",
                           keyword.name_span, self.suggest(keyword.name, table.by_name)
                           or f"its columns are: {', '.join(table.column_names)}")
                ok = False
                continue
            if keyword.name in seen:
                self.error("E141", f"column `{keyword.name}` is given twice",
                           keyword.name_span)
                ok = False
                continue
            seen[keyword.name] = keyword.name_span
            problem = key_problem(column, key_type, keyword.value)
            if problem is not None:
                self.error("E142", problem, keyword.value.span)
                ok = False
                continue
            if column.type not in INDEXABLE:
                self.error("E143", f"column `{column.name}` ({column.type}) cannot be a "
                           "lookup key: no index fits its values", keyword.name_span,
                           "look up by another column and test this one on the row")
                ok = False
                continue
            if column.type == "network" and key_type.kind == "ip":
                if net is not None:
                    self.error("E143", "one `ip` key per lookup: a row's networks cannot "
                               "both contain it in one index", keyword.name_span)
                    ok = False
                    continue
                net = (column.name, keyword.value)
            else:
                equal.append((column.name, keyword.value))
        if not ok:
            return self._returns(function, None)
        ordered = ([net] if net else []) + sorted(equal, key=lambda p: p[0])
        spec = IndexSpec(name, tuple(c for c, _ in ordered), "net" if net else "eq")
        keys = tuple(e for _, e in ordered)
        self.calls[id(expr)] = TableCall(function, spec, keys,
                                         *partial_index(spec, keys, table))
        return self._returns(function, name)

    def _returns(self, function: str, table: str | None) -> t.Type:
        row = t.row_of(table) if table is not None else t.ANY
        kind = RETURNS[function]
        if kind == "row":
            return row.opt() if table is not None else t.ANY
        if kind == "rows":
            return t.list_of(row)
        return t.BOOL

    def field(self, obj_type: t.Type, expr: n.Attr) -> t.Type:
        """The type of `row.field`."""
        if self.schema is None or obj_type.table is None:
            return t.ANY
        table = self.schema.tables.get(obj_type.table)
        if table is None:
            return t.ANY
        column = table.by_name.get(expr.name)
        if column is None:
            return self.error("E107", f"a row of `{table.name}` has no field `{expr.name}`",
                              expr.name_span, self.suggest(expr.name, table.by_name)
                              or f"its fields are: {', '.join(table.column_names)}")
        result = column_type(column)
        return result.opt() if obj_type.optional else result
