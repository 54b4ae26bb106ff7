"""Type inference for expressions: names, fields per stage, calls, operators.

Produces a type for every expression node (recorded by node identity for the compiler) and
a diagnostic, with a did-you-mean where a name is close, for everything that cannot work at
run time.  An expression in error gets the type `any`, so one mistake is reported once.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from . import nodes as n
from . import types as t
from .builtins import Builtin
from .directory.schema import Schema
from .errors import Diagnostic, Severity, Span
from .fields import NAMESPACES, Field
from .name_checks import shadowed, shadowing
from .tablecheck import TableChecker, variant_problems

Emit = Callable[[Diagnostic], None]


def suggest(name: str, candidates: Iterable[str]) -> str | None:
    """A did-you-mean hint for a misspelt name."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean `{matches[0]}`?" if matches else None


def dotted(expr: n.Expr) -> str | None:
    """`client.ip` for Attr(Name(client), ip); None for anything that is not a plain path."""
    if isinstance(expr, n.Name):
        return expr.name
    if isinstance(expr, n.Attr):
        base = dotted(expr.obj)
        return f"{base}.{expr.name}" if base is not None else None
    return None


@dataclass(frozen=True, slots=True)
class Scope:
    """Where an expression appears: which stage, and what it may refer to."""

    stage: str | None
    where: str  # "a `let`", "settings", "a rule", "an `on error` action"
    allow_request: bool = True
    allow_lookups: bool = True
    vars: Mapping[str, t.Type] = field(default_factory=dict)

    def with_var(self, name: str, type_: t.Type) -> Scope:
        return Scope(self.stage, self.where, self.allow_request, self.allow_lookups,
                     {**self.vars, name: type_})


class FunctionCalls(Protocol):
    """The set's policy-defined functions as inference sees them (`functions.Functions`):
    a call is typed by `call`, which types the function's body for that call."""

    defs: Mapping[str, object]

    def __contains__(self, name: str) -> bool: ...

    def signature(self, name: str) -> str: ...

    def call(self, infer: Inference, expr: n.Call, arg_types: list[t.Type], scope: Scope
             ) -> t.Type: ...


_LITERAL_TYPES = {
    "string": t.STRING, "int": t.INT, "bool": t.BOOL, "none": t.NONE, "ip": t.IP,
    "cidr": t.CIDR, "regex": t.REGEX, "duration": t.DURATION, "size": t.SIZE,
}


class Inference:
    """Types expressions; shared by every rule of one policy set."""

    def __init__(
        self,
        builtins: Mapping[str, Builtin],
        fields: Mapping[str, Field],
        let_type: Callable[[str, Span], t.Type | None],
        emit: Emit,
        let_names: Callable[[], Iterable[str]] = tuple,
        functions: FunctionCalls | None = None,
        schema: Schema | None = None,
        let_value: Callable[[str], n.Expr | None] = lambda name: None,
    ) -> None:
        self.builtins = builtins
        self.functions = functions
        self.tables = TableChecker(schema, self.error, self.warn, suggest)
        self.fields = fields
        self.let_type = let_type
        self.let_names = let_names
        self.let_value = let_value
        self.emit = emit
        self.types: dict[int, t.Type] = {}
        self.field_refs: dict[int, Field] = {}

    def error(self, code: str, message: str, span: Span, hint: str | None = None) -> t.Type:
        self.emit(Diagnostic(code, Severity.ERROR, message, span, hint))
        return t.ANY

    def warn(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.emit(Diagnostic(code, Severity.WARNING, message, span, hint))

    def infer(self, expr: n.Expr, scope: Scope) -> t.Type:
        method = getattr(self, f"_{type(expr).__name__}")
        result: t.Type = method(expr, scope)
        self.types[id(expr)] = result
        return result

    def expect_bool(self, expr: n.Expr, scope: Scope, what: str) -> None:
        type_ = self.infer(expr, scope)
        if type_.kind not in ("bool", "any"):
            hint = None
            if type_.optional:
                hint = "compare with none explicitly, e.g. `x != none`"
            self.error("E106", f"{what} must be true or false, but this is {type_}",
                       expr.span, hint)

    # -- leaves ---------------------------------------------------------------------------

    def _Literal(self, expr: n.Literal, scope: Scope) -> t.Type:
        return _LITERAL_TYPES[expr.kind]

    def _Template(self, expr: n.Template, scope: Scope) -> t.Type:
        for part in expr.parts:
            if not isinstance(part, str):
                type_ = self.infer(part, scope)
                if type_.kind in t.RECORD_KINDS | {"regex"}:
                    self.error("E105", f"cannot write a {type_} value into text", part.span,
                               "pick a field, e.g. `.name`"
                               if type_.kind in t.RECORD_KINDS else None)
        return t.STRING

    def _field(self, field_: Field, expr: n.Expr, scope: Scope) -> t.Type:
        if not scope.allow_request:
            return self.error("E109", f"{scope.where} cannot use the request field "
                              f"`{field_.name}`", expr.span,
                              "`let` constants and settings are fixed when the policy loads")
        if scope.stage is not None and scope.stage not in field_.stages:
            return self.error("E103", f"`{field_.name}` is not available at stage "
                              f"`{scope.stage}`", expr.span,
                              f"Stalwart sends it at: {field_.stage_list()}")
        self.field_refs[id(expr)] = field_
        return field_.type

    def _Name(self, expr: n.Name, scope: Scope) -> t.Type:
        name = expr.name
        if name in scope.vars:
            return scope.vars[name]
        let_type = self.let_type(name, expr.span)
        if let_type is not None:
            return let_type
        if name in self.fields:
            return self._field(self.fields[name], expr, scope)
        if name in NAMESPACES:
            members = sorted(f for f in self.fields if f.startswith(name + "."))
            return self.error("E102", f"`{name}` is not a value by itself", expr.span,
                              f"use one of its fields: {', '.join(members)}")
        if name in self.builtins:
            return self.error("E102", f"`{name}` is a function", expr.span,
                              f"call it: `{self.builtins[name].signature}`")
        if self.functions is not None and name in self.functions:
            return self.error("E102", f"`{name}` is a function", expr.span,
                              f"call it: `{self.functions.signature(name)}`")
        candidates = [*scope.vars, *self.let_names(), *self.fields, *NAMESPACES]
        return self.error("E102", f"unknown name `{name}`", expr.span,
                          suggest(name, candidates))

    def _Attr(self, expr: n.Attr, scope: Scope) -> t.Type:
        path = dotted(expr)
        root = path.split(".", 1)[0] if path else None
        if (path is not None and root not in scope.vars
                and root not in set(self.let_names())):
            if path in self.fields:
                return self._field(self.fields[path], expr, scope)
            if root in NAMESPACES and dotted(expr.obj) not in self.fields:
                members = sorted(f.split(".", 1)[1] for f in self.fields
                                 if f.startswith(root + "."))
                close = suggest(expr.name, members)
                hint = (f"did you mean `{root}.{close[len('did you mean `'):-2]}`?" if close
                        else f"`{root}` has: {', '.join(f'{root}.{m}' for m in members)}")
                return self.error("E107", f"unknown request field `{path}`", expr.name_span,
                                  hint)
        obj_type = self.infer(expr.obj, scope)
        if obj_type.is_any:
            return t.ANY
        if obj_type.kind == "row":
            return self.tables.field(obj_type, expr)
        return self.error("E105", f"`.{expr.name}` needs a table row, but this is {obj_type}",
                          expr.name_span)

    def _Index(self, expr: n.Index, scope: Scope) -> t.Type:
        obj_type = self.infer(expr.obj, scope)
        index_type = self.infer(expr.index, scope)
        if index_type.kind not in ("int", "any") or index_type.optional:
            self.error("E105", f"a list index must be an integer, but this is {index_type}",
                       expr.index.span)
        if obj_type.is_any:
            return t.ANY
        if obj_type.kind != "list" or obj_type.elem is None:
            return self.error("E105", f"only lists can be indexed, but this is {obj_type}",
                              expr.obj.span)
        return obj_type.elem.opt()

    def _Call(self, expr: n.Call, scope: Scope) -> t.Type:
        builtin = self.builtins.get(expr.func)
        arg_types = [self.infer(arg, scope) for arg in expr.args]
        key_types = [self.infer(kw.value, scope) for kw in expr.kwargs]
        if self.functions is not None and expr.func in self.functions:
            if expr.kwargs:
                return self.error("E104", f"`{expr.func}()` takes no `name = value` "
                                  "arguments", expr.kwargs[0].span)
            return self.functions.call(self, expr, arg_types, scope)
        if builtin is None:
            defined = self.functions.defs if self.functions is not None else ()
            return self.error("E101", f"unknown function `{expr.func}`", expr.func_span,
                              suggest(expr.func, [*self.builtins, *defined])
                              or "available functions: "
                              + ", ".join(sorted([*self.builtins, *defined])))
        if builtin.kind == "table" and not scope.allow_lookups:
            return self.error("E108", f"{scope.where} cannot call the lookup `{expr.func}()`",
                              expr.span, "lookups run only in rule conditions, statements "
                              "and the rule's own action")
        if builtin.kind == "request":
            if not scope.allow_request:
                return self.error("E109", f"{scope.where} cannot read the message with "
                                  f"`{expr.func}()`", expr.span)
            if scope.stage is not None and builtin.stages and scope.stage not in builtin.stages:
                return self.error("E103", f"`{expr.func}()` is not available at stage "
                                  f"`{scope.stage}`", expr.func_span,
                                  f"it reads the message, which exists only at: "
                                  f"{', '.join(sorted(builtin.stages))}")
        if builtin.kind == "table":
            return self.tables.call(expr, key_types)
        if expr.kwargs:
            return self.error("E104", f"`{expr.func}()` takes no `name = value` arguments",
                              expr.kwargs[0].span, f"signature: {builtin.signature}")
        if not builtin.min_args <= len(expr.args) <= len(builtin.params):
            count = len(builtin.params)
            takes = (f"{count}" if builtin.min_args == count
                     else f"{builtin.min_args} to {count}")
            return self.error("E104", f"`{expr.func}()` takes {takes} argument"
                              f"{'s' if count != 1 else ''}, got {len(expr.args)}", expr.span,
                              f"signature: {builtin.signature}")
        optional_arg = False
        for position, (param, arg, arg_type) in enumerate(
                zip(builtin.params[:len(expr.args)], expr.args, arg_types, strict=True),
                start=1):
            if not param.accepts(arg_type):
                self.error("E105", f"argument {position} (`{param.name}`) of "
                           f"`{expr.func}()` must be {param.describe()}, but this is "
                           f"{arg_type}", arg.span, f"signature: {builtin.signature}")
            optional_arg = optional_arg or arg_type.optional
        if optional_arg and builtin.none_result is None:
            return builtin.returns.opt()
        return builtin.returns

    def _ListExpr(self, expr: n.ListExpr, scope: Scope) -> t.Type:
        item_types = [self.infer(item, scope) for item in expr.items]
        if not item_types:
            return t.list_of(t.ANY)
        joined = t.join(item_types)
        if joined is None:
            kinds = ", ".join(sorted({str(x) for x in item_types}))
            return self.error("E105", f"list items must have one type, found {kinds}",
                              expr.span)
        return t.list_of(joined)

    def _Not(self, expr: n.Not, scope: Scope) -> t.Type:
        self.expect_bool(expr.operand, scope, "the operand of `not`")
        return t.BOOL

    def _BoolOp(self, expr: n.BoolOp, scope: Scope) -> t.Type:
        for operand in expr.operands:
            self.expect_bool(operand, scope, f"each side of `{expr.op}`")
        return t.BOOL

    def _Quantifier(self, expr: n.Quantifier, scope: Scope) -> t.Type:
        iterable = self.infer(expr.iterable, scope)
        elem = t.ANY
        if not iterable.is_any:
            if iterable.kind != "list" or iterable.elem is None:
                self.error("E105", f"`{expr.kind} … in` needs a list, but this is {iterable}",
                           expr.iterable.span)
            else:
                elem = iterable.elem
        hidden = shadowed(expr.var, scope.vars, self.fields, self.builtins,
                          lambda name: self.functions is not None and name in self.functions)
        if hidden is not None:
            self.emit(shadowing(f"variable `{expr.var}` of `{expr.kind}`", expr.var,
                                expr.var_span, hidden))
        self.expect_bool(expr.body, scope.with_var(expr.var, elem),
                         f"the condition of `{expr.kind}`")
        return t.BOOL

    def _Compare(self, expr: n.Compare, scope: Scope) -> t.Type:
        left = self.infer(expr.left, scope)
        right = self.infer(expr.right, scope)
        if left.is_any or right.is_any:
            return t.BOOL
        op = expr.op
        ok = True
        hint = None
        if op in ("==", "!="):
            ok = t.comparable(left, right)
            for side, other in ((expr.left, right), (expr.right, left)):
                if (isinstance(side, n.Literal) and side.kind == "none"
                        and not other.optional and other.kind != "none"):
                    self.warn("W203", f"`{op} none` is always "
                              f"{'false' if op == '==' else 'true'}: this value is never none",
                              expr.span)
        elif op in ("<", "<=", ">", ">="):
            ok = t.ordered(left, right)
        elif op in ("in", "not in"):
            ok = _membership_ok(left, right)
            if not ok and right.is_text:
                hint = "use `contains` to look for text inside text"
        elif op == "matches":
            ok = left.is_text and right.kind == "regex"
            if left.is_text and right.is_text:
                hint = "write the pattern as a regex: /…/"
        elif op == "contains":
            ok = (left.is_text and right.is_text) or (
                left.kind == "list" and left.elem is not None
                and (left.elem.is_any or t.comparable(left.elem, right)))
        else:  # starts_with, ends_with
            ok = left.is_text and right.is_text
        if not ok:
            self.error("E105", f"`{op}` cannot combine {left} and {right}", expr.op_span, hint)
        elif op in ("==", "!=", "in", "not in", "contains"):
            self._check_variants(expr, left, right, scope)
        return t.BOOL

    def _check_variants(self, expr: n.Compare, left: t.Type, right: t.Type,
                        scope: Scope) -> None:
        """An enum compared with text must name one of its variants (E142)."""
        pairs = []
        if left.kind == "enum":
            pairs.append((left, expr.right))
        elif left.kind == "list" and left.elem is not None and left.elem.kind == "enum":
            pairs.append((left.elem, expr.right))  # `statuses contains "x"`
        if right.kind == "enum" or (right.kind == "list" and right.elem is not None
                                    and right.elem.kind == "enum" and expr.op != "contains"):
            pairs.append((right if right.kind == "enum" else right.elem, expr.left))
        def let_value(name: str) -> n.Expr | None:
            # A loop variable or parameter shadows a constant of the same name.
            return None if name in scope.vars else self.let_value(name)

        for enum, operand in pairs:
            for message, span, hint in variant_problems(enum, operand, let_value, suggest):
                self.error("E142", message, span, hint)


def _membership_ok(left: t.Type, right: t.Type) -> bool:
    if right.kind == "cidr":
        return left.kind == "ip"
    if right.kind != "list" or right.elem is None:
        return False
    elem = right.elem
    if elem.is_any:
        return True
    if left.kind == "ip" and elem.kind in ("ip", "cidr"):
        return True
    return t.comparable(left.required(), elem.required())
