"""The policy AST: frozen dataclasses built once per load and never mutated.

Every node carries a `span` (excluded from equality, so tests can compare trees written by
hand).  The tree is the contract between the parser, the checker and the compiler; none of
them sees Lark's own tree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Literal as TLiteral

from .errors import Span

_NOSPAN = Span("<none>", 0, 0, 0, 0)


def _span() -> Span:
    return field(default=_NOSPAN, compare=False, repr=False)


# ---------------------------------------------------------------------------------------
# Expressions

LiteralKind = TLiteral[
    "string", "int", "bool", "none", "ip", "cidr", "regex", "duration", "size"
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Literal:
    """A constant written in the source.  `value` is already the runtime value:
    str, int, bool, None, ip_address, ip_network, compiled re.Pattern, seconds (float),
    or bytes (int)."""

    kind: LiteralKind
    value: object
    text: str = field(default="", compare=False)
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    """A string with `{expr}` interpolations; `parts` alternates text and expressions."""

    parts: tuple[str | Expr, ...]
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Name:
    name: str
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Attr:
    obj: Expr
    name: str
    name_span: Span = _span()
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Index:
    obj: Expr
    index: Expr
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Keyword:
    """`name = value` in a call: a table lookup's `column = key`."""

    name: str
    value: Expr
    name_span: Span = _span()
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    func_span: Span = _span()
    span: Span = _span()
    kwargs: tuple[Keyword, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Not:
    operand: Expr
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class BoolOp:
    op: TLiteral["and", "or"]
    operands: tuple[Expr, ...]
    span: Span = _span()


CompareOp = TLiteral[
    "==", "!=", "<", "<=", ">", ">=", "in", "not in",
    "matches", "contains", "starts_with", "ends_with",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    op: CompareOp
    left: Expr
    right: Expr
    op_span: Span = _span()
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Quantifier:
    kind: TLiteral["any", "all"]
    var: str
    iterable: Expr
    body: Expr
    var_span: Span = _span()
    span: Span = _span()


Expr = (
    Literal | Template | Name | Attr | Index | Call | ListExpr | Not | BoolOp | Compare
    | Quantifier
)


# ---------------------------------------------------------------------------------------
# Actions and statements

ActionKind = TLiteral["accept", "reject", "tempfail", "discard", "quarantine"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """A terminal action.  `message` is the reply text (reject/tempfail) or the reason
    (quarantine)."""

    kind: ActionKind
    code: int | None = None
    enhanced: str | None = None
    message: Literal | Template | None = None
    code_span: Span | None = field(default=None, compare=False, repr=False)
    enhanced_span: Span | None = field(default=None, compare=False, repr=False)
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Continue:
    span: Span = _span()


ModificationKind = TLiteral[
    "add_header", "insert_header", "change_header", "delete_header",
    "change_from", "add_recipient", "delete_recipient", "replace_contents",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Modification:
    kind: ModificationKind
    header: str | None = None
    value: Expr | None = None
    index: int | None = None
    header_span: Span | None = field(default=None, compare=False, repr=False)
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Log:
    message: Expr
    span: Span = _span()


Statement = Modification | Log


# ---------------------------------------------------------------------------------------
# Top-level items

@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    name: str
    when: Expr
    statements: tuple[Statement, ...]
    final: Action | Continue
    on_error: Action | Continue | None = None
    dry_run: bool = False
    name_span: Span = _span()
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Default:
    action: Action
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class StageBlock:
    name: str
    items: tuple[Rule | Default, ...]
    name_span: Span = _span()
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    name: str
    value: Expr | Action
    name_span: Span = _span()
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsBlock:
    settings: tuple[Setting, ...]
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class Let:
    name: str
    value: Expr
    name_span: Span = _span()
    span: Span = _span()


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionDef:
    """`def name(params) = body`: a function without side effects.  The checker types the
    body at every call with the arguments' types; the compiler inlines it there."""

    name: str
    params: tuple[str, ...]
    body: Expr
    param_spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    name_span: Span = _span()
    span: Span = _span()


Item = SettingsBlock | Let | FunctionDef | StageBlock


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyFile:
    path: str
    items: tuple[Item, ...]
    span: Span = _span()


Node = Expr | Action | Continue | Statement | Rule | Default | StageBlock | Setting | Item


def children(node: object) -> Iterator[object]:
    """Direct child nodes, in source order (for generic walks in tests and tools)."""
    for f in fields(node):  # type: ignore[arg-type]
        if f.name.endswith("span"):
            continue
        value = getattr(node, f.name)
        if isinstance(value, tuple):
            yield from (v for v in value if hasattr(v, "__dataclass_fields__"))
        elif hasattr(value, "__dataclass_fields__"):
            yield value


def walk(node: object) -> Iterator[object]:
    """Every node below and including `node`, depth first."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(list(children(current))))
