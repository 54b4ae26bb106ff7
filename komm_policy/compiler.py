"""AST + analysis → closures: expressions and comparisons (the set level, stages, rules
and statements, is `rule_compiler`).  Runs once per load; the request path only calls
closures.

Constants are folded (literals, `let`s, pure built-ins over constants, boolean logic with a
constant side); regexes, IP sets and literal lists become ready-made objects; request fields
compile to their getters and built-ins to the function object, so nothing is looked up by
name per request.  Address comparisons are made case-insensitive here, by lower-casing the
non-address side once (constants) or at run time (other text).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from . import nodes as n
from . import types as t
from .builtins import DEFAULT_BUILTINS, Builtin
from .checker import Analysis
from .codegen import StageGenerator
from .context import EvalContext
from .fields import STAGE_ORDER
from .inlining import inline
from .ipset import IP, normalize_network
from .operators import COMPARE, DUAL, all_of, any_of, as_tuple, both, either, index_value, lowered
from .program import (
    Closure,
    Compiled,
    CompiledStage,
    Const,
    Outcome,
    RuntimeSettings,
    as_closure,
)
from .rule_compiler import RuleCompiling
from .table_lookups import Sites, settle_sites, table_closure, unchecked_table_closure
from .text import to_text


class _LoadTimeContext:
    """What a constant expression can touch while it is evaluated at load time."""

    vars: list[Any] | None = None


def compile_program(
    analysis: Analysis, *, builtins: Mapping[str, Builtin] = DEFAULT_BUILTINS
) -> tuple[dict[str, CompiledStage], RuntimeSettings]:
    """Compile a checked policy set (no errors) into stages and runtime settings."""
    compiler = _Compiler(analysis, builtins)
    for name in analysis.lets:  # in definition order: a chain of lets never recurses deeply
        compiler.let_value(name)
    settings = compiler.settings()
    stages = {  # every stage, so that a decision never builds one on the fly
        name: compiler.stage(analysis.stages[name]) if name in analysis.stages
        else CompiledStage(name, (), Outcome("accept"), None)
        for name in STAGE_ORDER
    }
    generator = StageGenerator(compiler, compiler.generated_sites)
    stages = {name: generator.stage(stage, compiler.rule_asts) for name, stage in stages.items()}
    settle_sites(compiler.sites)
    settle_sites(compiler.generated_sites)
    return stages, settings


class _Compiler(RuleCompiling):
    def __init__(self, analysis: Analysis, builtins: Mapping[str, Builtin]) -> None:
        self.analysis = analysis
        self.types = analysis.types
        self.field_refs = analysis.field_refs
        self.builtins = builtins
        self.let_values: dict[str, Compiled] = {}
        self.slots: dict[str, int] = {}
        """Quantifier variables in scope: name → index in `ctx.vars`."""
        self.depth = 0
        """Quantifiers enclosing the expression being compiled, through inlined calls."""
        self.params: dict[str, Compiled] = {}
        """Inside an inlined function body: each parameter's compiled argument."""
        self.sites: Sites = {}
        """Every table lookup call compiled (which need a per-decision memo)."""
        self.arguments = 0
        """Function arguments being compiled (a parameter may be read several times)."""
        self.generated_sites: Sites = {}
        """The table lookups of the generated stage functions (`codegen`), apart."""
        self.rule_asts: dict[int, n.Rule] = {}
        """Compiled rule (by identity) → its AST, for `codegen`."""
        self.action_tags: dict[int, frozenset[str]] = {}
        """Compiled rule (by identity) → the memo tags of the table lookups in its
        statements, reply and quarantine texts: closures that a generated stage calls, so
        a generated lookup of the same tag keeps its memo (`codegen`)."""

    def type_of(self, expr: n.Expr) -> t.Type:
        return self.types.get(id(expr), t.ANY)

    # -- expressions ----------------------------------------------------------------------

    def expr(self, expr: n.Expr) -> Compiled:
        return getattr(self, f"_{type(expr).__name__}")(expr)

    def _Literal(self, expr: n.Literal) -> Compiled:
        if expr.kind == "ip":
            return Const(IP.from_address(expr.value))  # type: ignore[arg-type]
        if expr.kind == "cidr":
            return Const(normalize_network(expr.value))  # type: ignore[arg-type]
        return Const(expr.value)

    def _Template(self, expr: n.Template) -> Compiled:
        parts = [p if isinstance(p, str) else self.expr(p) for p in expr.parts]
        if all(isinstance(p, str | Const) for p in parts):
            return Const("".join(p if isinstance(p, str) else to_text(p.value)  # type: ignore[union-attr]
                                 for p in parts))
        pieces = tuple(p if isinstance(p, str) else as_closure(p) for p in parts)

        def template(ctx: EvalContext) -> str:
            return "".join(p if p.__class__ is str else to_text(p(ctx))  # type: ignore[operator]
                           for p in pieces)
        return template

    def _Name(self, expr: n.Name) -> Compiled:
        name = expr.name
        slot = self.slots.get(name)
        if slot is not None:
            return lambda ctx: ctx.vars[slot]
        if name in self.params:
            return self.params[name]
        if name in self.analysis.lets:
            return self.let_value(name)
        return self.field_refs[id(expr)].get

    def let_value(self, name: str) -> Compiled:
        """A constant's value, computed once.  Lets may only use literals, other lets and
        pure functions (the checker makes sure), so whatever did not fold yet (e.g. a
        quantifier over a literal list) is evaluated now, at load time."""
        if name not in self.let_values:
            saved = self.slots, self.params
            self.slots, self.params = {}, {}
            compiled = self.expr(self.analysis.lets[name].value)
            self.slots, self.params = saved
            if not isinstance(compiled, Const):
                compiled = Const(compiled(_LoadTimeContext()))  # type: ignore[arg-type]
            self.let_values[name] = compiled
        return self.let_values[name]

    def _Attr(self, expr: n.Attr) -> Compiled:
        field_ = self.field_refs.get(id(expr))
        if field_ is not None:
            return field_.get
        obj = self.expr(expr.obj)
        getter = operator.attrgetter(expr.name)
        if isinstance(obj, Const):
            return Const(None if obj.value is None else getter(obj.value))

        def attr(ctx: EvalContext) -> Any:
            value = obj(ctx)
            return None if value is None else getter(value)
        return attr

    def _Index(self, expr: n.Index) -> Compiled:
        obj, idx = self.expr(expr.obj), self.expr(expr.index)
        if isinstance(obj, Const) and isinstance(idx, Const):
            return Const(index_value(obj.value, idx.value))
        get_obj, get_idx = as_closure(obj), as_closure(idx)
        return lambda ctx: index_value(get_obj(ctx), get_idx(ctx))

    def _ListExpr(self, expr: n.ListExpr) -> Compiled:
        items = [self.expr(item) for item in expr.items]
        if all(isinstance(i, Const) for i in items):
            return Const(tuple(i.value for i in items))  # type: ignore[union-attr]
        getters = tuple(as_closure(i) for i in items)
        return lambda ctx: [g(ctx) for g in getters]

    def _Not(self, expr: n.Not) -> Compiled:
        if isinstance(expr.operand, n.Compare):
            return self._Compare(expr.operand, negate=True)
        operand = self.expr(expr.operand)
        if isinstance(operand, Const):
            return Const(not operand.value)
        return lambda ctx: not operand(ctx)

    def _BoolOp(self, expr: n.BoolOp) -> Compiled:
        short = expr.op == "or"  # the value that decides early
        runtime: list[Closure] = []
        for operand in expr.operands:
            compiled = self.expr(operand)
            if isinstance(compiled, Const):
                if bool(compiled.value) is short:
                    return Const(short)
                continue  # a neutral constant drops out
            runtime.append(compiled)
        if not runtime:
            return Const(not short)
        if len(runtime) > 2:  # one loop, not one nested closure (and frame) per operand
            return any_of(runtime) if short else all_of(runtime)
        if len(runtime) == 2:
            return either(*runtime) if short else both(*runtime)
        return runtime[0]

    def _Quantifier(self, expr: n.Quantifier) -> Compiled:
        iterable = as_closure(self.expr(expr.iterable))
        slot = self.depth
        saved = self.slots
        self.slots = {**saved, expr.var: slot}
        self.depth += 1
        body = as_closure(self.expr(expr.body))
        self.depth -= 1
        self.slots = saved
        want = expr.kind == "any"

        def quantifier(ctx: EvalContext) -> bool:
            values = ctx.vars
            if values is None:
                values = ctx.vars = []
            while len(values) <= slot:
                values.append(None)
            for item in iterable(ctx) or ():
                values[slot] = item
                if bool(body(ctx)) is want:
                    return want
            return not want
        return quantifier

    def _Call(self, expr: n.Call) -> Compiled:
        instance = self.analysis.instances.get(id(expr))
        if instance is not None:
            return inline(self, instance, expr)
        builtin = self.builtins[expr.func]
        if builtin.kind == "table":
            call = self.analysis.table_calls.get(id(expr))
            if call is None:  # no schema file: W209; the lookup fails into the fallback
                return unchecked_table_closure(expr.func)
            schema = self.analysis.schema
            table = schema.tables.get(call.spec.table) if schema is not None else None
            columns = (tuple(table.by_name[c] for c in call.spec.columns)
                       if table is not None else None)
            return table_closure(call.label, str(builtin.impl), call.spec,
                                 tuple(self.expr(k) for k in call.keys), columns,
                                 builtin.none_result, self.sites,
                                 repeated=self.depth > 0 or self.arguments > 0,
                                 index=(call.index, call.positions))
        args = [self.expr(a) for a in expr.args]
        optional = any(self.type_of(a).optional for a in expr.args)
        none_result = builtin.none_result
        impl = builtin.impl
        if builtin.kind == "pure" and all(isinstance(a, Const) for a in args):
            values = [a.value for a in args]  # type: ignore[union-attr]
            if any(v is None for v in values):
                return Const(none_result)
            return Const(impl(*values))
        getters = tuple(as_closure(a) for a in args)
        if builtin.kind == "request":
            (get,) = getters

            def request_call(ctx: EvalContext) -> Any:
                value = get(ctx)
                return none_result if value is None else impl(ctx, value)
            return request_call
        if len(getters) == 1:
            (get,) = getters
            if not optional:
                return lambda ctx: impl(get(ctx))

            def pure_call(ctx: EvalContext) -> Any:
                value = get(ctx)
                return none_result if value is None else impl(value)
            return pure_call

        def pure_call_n(ctx: EvalContext) -> Any:
            values = [g(ctx) for g in getters]
            return none_result if None in values else impl(*values)
        return pure_call_n

    # -- comparisons ----------------------------------------------------------------------

    def operands(self, expr: n.Compare) -> tuple[Compiled, Compiled, t.Type, t.Type]:
        """Both sides compiled, with the plain-text side lower-cased against an address."""
        op = expr.op
        left_t, right_t = self.type_of(expr.left), self.type_of(expr.right)
        left, right = self.expr(expr.left), self.expr(expr.right)
        if op == "contains" and left_t.kind == "list" and left_t.elem is not None:
            left, right = self.case_fold(left, left_t.elem, right, right_t)
        elif op in ("==", "!=", "contains", "starts_with", "ends_with"):
            left, right = self.case_fold(left, left_t, right, right_t)
        elif op in ("in", "not in") and right_t.kind == "list" and right_t.elem is not None:
            left, right = self.case_fold(left, left_t, right, right_t.elem)
        if op in ("==", "!=") and "list" in (left_t.kind, right_t.kind):
            left, right = as_tuple(left), as_tuple(right)  # request lists vs literals
        return left, right, left_t, right_t

    def _Compare(self, expr: n.Compare, negate: bool = False) -> Compiled:
        op = expr.op
        left, right, left_t, right_t = self.operands(expr)
        if negate and op in DUAL:
            op, negate = DUAL[op], False
        compiled = COMPARE[op](left, right, left_t.optional or left_t.is_any, right_t,
                                negate)
        if isinstance(left, Const) and isinstance(right, Const) and not isinstance(
                compiled, Const):
            try:
                return Const(compiled(None))  # type: ignore[arg-type]
            except Exception:
                return compiled
        return compiled

    def case_fold(self, left: Compiled, left_t: t.Type, right: Compiled,
                  right_t: t.Type) -> tuple[Compiled, Compiled]:
        """Address vs. plain text: lower the plain side, since addresses are lower-case.
        Lists compare by their element types."""
        if left_t.kind == "list" and right_t.kind == "list" and left_t.elem and right_t.elem:
            left_t, right_t = left_t.elem, right_t.elem
        if left_t.kind == "address" and right_t.kind == "string":
            return left, lowered(right)
        if right_t.kind == "address" and left_t.kind == "string":
            return lowered(left), right
        return left, right
