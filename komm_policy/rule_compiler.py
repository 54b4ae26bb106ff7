"""Compiling a checked policy set's rules: stages, rules, actions, statements, settings.

The set level of the compiler (`compiler._Compiler` mixes it in): a stage becomes its rules
and the fused steps that evaluate them (`fusion`: runs of comparisons of one request field
with constants become one dictionary or prefix read); a rule becomes a `CompiledRule` with
its condition closure, statements, final action and `on error`; an action becomes an
`Outcome` with its reply text cleaned once when it is constant; every modification leaves
through `outgoing`, which refuses a value that is not one valid address.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import nodes as n
from . import outgoing
from . import types as t
from .call_paths import lookup_paths
from .checker import Analysis
from .context import EvalContext
from .decision import RuleRef
from .fields import Field
from .fusion import FUSABLE, fuse
from .program import (
    CONTINUE,
    Closure,
    Compiled,
    CompiledRule,
    CompiledStage,
    Const,
    Outcome,
    RuntimeSettings,
    Statement,
    as_closure,
)
from .table_lookups import Sites
from .text import reply_text, to_text


class RuleCompiling:
    """The set level of the compiler; expressions come from the class it is mixed into."""

    analysis: Analysis
    field_refs: Mapping[int, Field]
    rule_asts: dict[int, n.Rule]
    sites: Sites
    action_tags: dict[int, frozenset[str]]

    if TYPE_CHECKING:  # supplied by the expression compiler
        def expr(self, expr: n.Expr) -> Compiled: ...

        def type_of(self, expr: n.Expr) -> t.Type: ...

        def operands(self, expr: n.Compare) -> tuple[Compiled, Compiled, t.Type, t.Type]: ...

    def settings(self) -> RuntimeSettings:
        values: dict[str, Any] = {}
        for name, setting in self.analysis.settings.items():
            if isinstance(setting.value, n.Action):
                values[name] = self.outcome(setting.value)
            else:
                compiled = self.expr(setting.value)
                assert isinstance(compiled, Const), name
                value = compiled.value
                values[name] = value.lower() if name == "quarantine_to" else value
        return RuntimeSettings(**values)

    def stage(self, stage: Any) -> CompiledStage:
        rules = tuple(self.rule(rule) for rule in stage.rules)
        self.rule_asts.update((id(c), ast) for c, ast in zip(rules, stage.rules, strict=True))
        steps = tuple((rule.cond, rule) for rule in fuse(
            [(rule, self.fusable(ast)) for ast, rule in zip(stage.rules, rules, strict=True)]))
        default = stage.default
        if default is None:
            return CompiledStage(stage.name, rules, Outcome("accept"), None, steps)
        ref = RuleRef("default", default.span.file, default.span.line, default.span.column)
        return CompiledStage(stage.name, rules, self.outcome(default.action), ref, steps)

    def fusable(self, rule: n.Rule) -> tuple[tuple[Any, ...], Any] | None:
        """The rule's fusion key and (getter, constants), or None (see `fusion`)."""
        if rule.dry_run or rule.statements or not isinstance(rule.final, n.Action):
            return None
        if isinstance(rule.on_error, n.Continue):
            # Its action may fail (a lookup in the reply) and go on with the next rule; a
            # fused group would skip the members after it that match too.
            return None
        when = rule.when
        if not isinstance(when, n.Compare) or when.op not in FUSABLE:
            return None
        field_ = self.field_refs.get(id(when.left))
        left_t = self.type_of(when.left)
        if field_ is None or left_t.optional or left_t.kind in ("list", "any"):
            return None  # fused groups index by the field's value: scalars only
        _, right, _, right_t = self.operands(when)
        if not isinstance(right, Const):
            return None
        family = FUSABLE[when.op]
        if family == "eq":
            values = (right.value,) if when.op == "==" else right.value
            if right_t.kind == "cidr" or (when.op == "in" and right_t.elem is not None
                                          and right_t.elem.kind in ("ip", "cidr")):
                return None
            try:
                frozenset(values)
            except TypeError:
                return None
        elif not isinstance(right.value, str):
            return None
        else:
            values = right.value
        return (field_.name, family), (field_.get, values)

    def rule(self, rule: n.Rule) -> CompiledRule:
        cond = self.expr(rule.when)
        if isinstance(cond, Const):
            always = bool(cond.value)
            cond_fn: Closure = lambda ctx: always  # noqa: E731
        else:
            cond_fn = cond
        sites, self.sites = self.sites, {}  # the lookups of what follows, apart
        try:
            final = self.outcome(rule.final) if isinstance(rule.final, n.Action) else None
            on_error: Outcome | str | None = None
            if isinstance(rule.on_error, n.Continue):
                on_error = CONTINUE
            elif isinstance(rule.on_error, n.Action):
                on_error = self.outcome(rule.on_error)
            statements = tuple(self.statement(s) for s in rule.statements)
        finally:
            action_sites, self.sites = self.sites, sites
        for tag, calls in action_sites.items():
            sites.setdefault(tag, []).extend(calls)
        ref = RuleRef(rule.name, rule.span.file, rule.span.line, rule.span.column)
        paths = lookup_paths((rule.when, *rule.statements, rule.final), self.analysis.instances,
                             self.analysis.table_calls)
        compiled = CompiledRule(rule.name, ref, cond_fn, statements, final, on_error,
                                rule.dry_run, paths=paths)
        if action_sites:
            self.action_tags[id(compiled)] = frozenset(action_sites)
        return compiled

    def outcome(self, action: n.Action) -> Outcome:
        message: str | Closure | None = None
        if action.message is not None:
            compiled = self.expr(action.message)
            if isinstance(compiled, Const):  # e.g. a `let` interpolated: clean it once
                text = to_text(compiled.value)  # a quarantine reason: `outgoing` cleans it
                message = text if action.kind == "quarantine" else reply_text(text)
            else:
                message = compiled
        if action.kind == "quarantine":
            return Outcome("quarantine", reason=message)
        if action.kind in ("reject", "tempfail"):
            return Outcome(action.kind, status=action.code, enhanced=action.enhanced,
                           message=message)
        return Outcome(action.kind)

    def statement(self, statement: n.Statement) -> Statement:
        if isinstance(statement, n.Log):
            text = as_closure(self.expr(statement.message))

            def log(ctx: EvalContext, mods: list) -> None:
                ctx.log(to_text(text(ctx)))
            return log
        return self.modification(statement)

    def modification(self, mod: n.Modification) -> Statement:
        """One modification statement; every value leaves through `outgoing`, which refuses
        an address that is not one valid address (a rule error, so nothing is sent)."""
        kind = mod.kind
        header = mod.header or ""
        index = mod.index if mod.index is not None else 1
        value = self.expr(mod.value) if mod.value is not None else Const(None)
        factories: dict[str, Callable[[EvalContext, Any], Any]] = {
            "add_header": lambda ctx, v: outgoing.add_header(header, v),
            "insert_header": lambda ctx, v: outgoing.insert_header(header, v, index),
            "change_header": lambda ctx, v: outgoing.change_header(header, v, index),
            "delete_header": lambda ctx, v: outgoing.delete_header(header, index),
            "change_from": lambda ctx, v: outgoing.change_from(v),
            "add_recipient": lambda ctx, v: outgoing.add_recipient(v),
            "delete_recipient": lambda ctx, v: outgoing.delete_recipient(
                v, ctx.recipients_as_sent()),
            "replace_contents": lambda ctx, v: outgoing.replace_contents(v),
        }
        make = factories[kind]
        if isinstance(value, Const) and kind != "delete_recipient":
            try:
                built = make(None, value.value)  # type: ignore[arg-type]
            except outgoing.UnsafeValue:
                pass  # `check` reports it (E125); each decision fails the rule as well
            else:
                def append_const(ctx: EvalContext, mods: list) -> None:
                    mods.append(built)
                return append_const
        get = as_closure(value)

        def append(ctx: EvalContext, mods: list) -> None:
            mods.append(make(ctx, get(ctx)))
        return append

