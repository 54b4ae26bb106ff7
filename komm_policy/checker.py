"""Static analysis of a whole policy set: every check of the language reference.

Works on the ASTs of all files together, because names are set-wide: duplicate rules,
constants, defaults and settings are reported with both locations.  Per rule it checks the
condition's type, the fields each stage offers, reply codes and texts, modifications and
quarantine placement, and it warns about rules that can never run.  The result (types of
every expression, resolved fields) is what the compiler builds closures from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from . import nodes as n
from . import types as t
from .action_checks import ActionChecks
from .builtins import DEFAULT_BUILTINS, Builtin, valid_address
from .directory.schema import Schema
from .errors import Diagnostic, Related, Severity, Span
from .fields import FIELDS, NAMESPACES, STAGE_ORDER, Field
from .functions import Functions, Instance, too_deep
from .inference import Inference, Scope, suggest
from .name_checks import shadowed, shadowing, unused_functions
from .program import RuntimeSettings
from .tablecheck import TableCall

SETTINGS_SPEC: Mapping[str, tuple[str, str]] = {
    "lookup_timeout": ("duration", "how long one lookup may take before it counts as failed"),
    "deadline": ("duration", "how long a whole decision may take"),
    "on_lookup_error": ("action", "the fallback when a lookup fails or the deadline passes"),
    "quarantine_to": ("address", "the mailbox that receives quarantined messages"),
}

MAX_LET_DEPTH = 32
"""Constants defined in terms of constants, at most this deep (E134 beyond)."""
DEFAULT_DEADLINE = RuntimeSettings().deadline

_LET_SCOPE = Scope(None, "a `let`", allow_request=False, allow_lookups=False)
_SETTINGS_SCOPE = Scope(None, "settings", allow_request=False, allow_lookups=False)


@dataclass
class StageRules:
    """One stage's rules from every file, in file-name then source order."""

    name: str
    blocks: list[n.StageBlock] = field(default_factory=list)
    rules: list[n.Rule] = field(default_factory=list)
    default: n.Default | None = None


@dataclass
class Analysis:
    files: tuple[n.PolicyFile, ...]
    diagnostics: list[Diagnostic]
    types: dict[int, t.Type]
    field_refs: dict[int, Field]
    lets: dict[str, n.Let]
    settings: dict[str, n.Setting]
    stages: dict[str, StageRules]
    functions: dict[str, n.FunctionDef] = field(default_factory=dict)
    instances: dict[int, Instance] = field(default_factory=dict)
    """Every call of a policy-defined function (by node identity): its typed body copy."""
    table_calls: dict[int, TableCall] = field(default_factory=dict)
    """Checked table lookups by call node identity."""
    schema: Schema | None = None

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.diagnostics)


def check(
    files: Sequence[n.PolicyFile],
    *,
    builtins: Mapping[str, Builtin] = DEFAULT_BUILTINS,
    fields: Mapping[str, Field] = FIELDS,
    schema: Schema | None = None,
) -> Analysis:
    """Check a policy set (its parsed files in load order) against the directory's
    `schema` (None: no schema file; table lookups get one W209 and are not checked)."""
    return _Checker(builtins, fields, schema).run(tuple(files))


class _Checker(ActionChecks):
    def __init__(self, builtins: Mapping[str, Builtin], fields: Mapping[str, Field],
                 schema: Schema | None = None) -> None:
        self.builtins = builtins
        self.fields = fields
        self.diagnostics: list[Diagnostic] = []
        self.lets: dict[str, n.Let] = {}
        self.let_types: dict[str, t.Type] = {}
        self.let_checking: set[str] = set()
        self.used_lets: set[str] = set()
        self.settings: dict[str, n.Setting] = {}
        self.settings_block: n.SettingsBlock | None = None
        self.stages: dict[str, StageRules] = {}
        self.rule_names: dict[str, n.Rule] = {}
        self.unknown_stages: list[n.StageBlock] = []
        self.quarantine_reported = False
        self.functions = Functions(self.diagnostics.append, self._function_clash)
        self.infer = Inference(builtins, fields, self._use_let, self.diagnostics.append,
                               lambda: self.lets.keys(), self.functions, schema,
                               lambda name: self.lets[name].value if name in self.lets
                               else None)

    # -- reporting ------------------------------------------------------------------------

    def error(self, code: str, message: str, span: Span, hint: str | None = None,
              related: Related | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, Severity.ERROR, message, span, hint, related))

    def warn(self, code: str, message: str, span: Span, hint: str | None = None,
             related: Related | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, Severity.WARNING, message, span, hint,
                                           related))

    # -- driver ---------------------------------------------------------------------------

    def run(self, files: tuple[n.PolicyFile, ...]) -> Analysis:
        for policy_file in files:
            for item in policy_file.items:
                self._collect(item)
        self.functions.resolve(files)
        self._check_parameter_names()
        for name, let in self.lets.items():
            try:
                self._let_type(name)
            except RecursionError:
                self.diagnostics.append(too_deep(let.name_span, f"`let {name}`"))
                self.let_types[name] = t.ANY
                self.let_checking.clear()
        self.functions.check_definitions(self.infer)
        try:
            self._check_settings()
        except RecursionError:
            assert self.settings_block is not None
            self.diagnostics.append(too_deep(self.settings_block.span, "the settings"))
        for stage in self.stages.values():
            self._check_stage(stage)
        for block in self.unknown_stages:  # still report what else is wrong in them
            scope = Scope(None, "a rule")
            quiet = Scope(None, "an `on error` action", allow_lookups=False)
            for item in block.items:
                if isinstance(item, n.Rule):
                    self._check_rule(item, None, scope, quiet)
        for name, let in self.lets.items():
            if name not in self.used_lets:
                self.warn("W204", f"`let {name}` is never used", let.name_span)
        self.diagnostics += unused_functions(files, self.functions.defs,
                                             self.functions.callers)
        self.diagnostics.sort(key=lambda d: (d.span.file, d.span.line, d.span.column))
        return Analysis(files, self.diagnostics, self.infer.types, self.infer.field_refs,
                        self.lets, self.settings, self.stages, self.functions.defs,
                        self.functions.instances, self.infer.tables.calls,
                        self.infer.tables.schema)

    def _collect(self, item: n.Item) -> None:
        if isinstance(item, n.SettingsBlock):
            if self.settings_block is not None:
                self.error("E133", "a policy set has only one `settings` block", item.span,
                           "merge the two blocks",
                           Related(self.settings_block.span, "the first `settings` block"))
            else:
                self.settings_block = item
            for setting in item.settings:
                if setting.name in self.settings:
                    self.error("E132", f"`{setting.name}` is set twice", setting.name_span,
                               related=Related(self.settings[setting.name].name_span,
                                               "first set here"))
                else:
                    self.settings[setting.name] = setting
        elif isinstance(item, n.Let):
            self._collect_let(item)
        elif isinstance(item, n.FunctionDef):
            self.functions.collect(item)
        else:
            self._collect_stage(item)

    def _collect_let(self, let: n.Let) -> None:
        name = let.name
        if name in self.lets:
            self.error("E111", f"`let {name}` is defined twice", let.name_span,
                       related=Related(self.lets[name].name_span, "first defined here"))
            return
        clash = None
        if name in self.fields or name in NAMESPACES:
            clash = "a request field"
        elif name in self.builtins:
            clash = "a built-in function"
        elif name in self.functions:
            clash = "a function"
        if clash:
            self.error("E111", f"`let {name}` would hide {clash} of the same name",
                       let.name_span, "choose another name")
            return
        self.lets[name] = let

    def _function_clash(self, name: str) -> str | None:
        if name in self.fields or name in NAMESPACES:
            return "a request field"
        if name in self.builtins:
            return "a built-in function"
        if name in self.lets:
            return "a `let` constant"
        return None

    def _check_parameter_names(self) -> None:
        """W213 for a parameter named like something its body could otherwise mean."""
        for fn in self.functions.defs.values():
            for param, span in zip(fn.params, fn.param_spans, strict=True):
                hidden = shadowed(param, (), self.fields, self.builtins,
                                  self.functions.__contains__)
                if hidden is not None:
                    self.diagnostics.append(shadowing(
                        f"parameter `{param}` of `{fn.name}`", param, span, hidden))

    def _collect_stage(self, block: n.StageBlock) -> None:
        if block.name not in STAGE_ORDER:
            self.error("E117", f"unknown stage `{block.name}`", block.name_span,
                       suggest(block.name.lower(), STAGE_ORDER)
                       or f"the stages are: {', '.join(STAGE_ORDER)}")
            self.unknown_stages.append(block)
            return
        stage = self.stages.setdefault(block.name, StageRules(block.name))
        stage.blocks.append(block)
        for item in block.items:
            if isinstance(item, n.Rule):
                first = self.rule_names.get(item.name)
                if first is not None:
                    self.error("E112", f"rule name `{item.name}` is used twice",
                               item.name_span,
                               "rule names identify decisions in logs; make them unique",
                               Related(first.name_span, "first used here"))
                else:
                    self.rule_names[item.name] = item
                stage.rules.append(item)
            elif stage.default is not None:
                self.error("E113", f"stage `{block.name}` has two `default` actions",
                           item.span, related=Related(stage.default.span, "the first default"))
            else:
                stage.default = item

    # -- constants ------------------------------------------------------------------------

    def _use_let(self, name: str, span: Span) -> t.Type | None:
        if name not in self.lets:
            return None
        self.used_lets.add(name)
        if name in self.let_checking:
            self.error("E110", f"`let {name}` refers to itself", span,
                       "a constant cannot depend on its own value")
            return t.ANY
        return self._let_type(name)

    def _let_type(self, name: str) -> t.Type:
        if name in self.let_types:
            return self.let_types[name]
        if len(self.let_checking) >= MAX_LET_DEPTH:
            let = self.lets[name]
            self.error("E134", f"constants refer to each other more than {MAX_LET_DEPTH} "
                       "levels deep", let.name_span, "define this value directly")
            self.let_types[name] = t.ANY
            self.used_lets.add(name)
            return t.ANY
        self.let_checking.add(name)
        type_ = self.infer.infer(self.lets[name].value, _LET_SCOPE)
        self.let_checking.discard(name)
        self.let_types[name] = type_
        return type_

    def _constant(self, expr: n.Expr, seen: frozenset[str] = frozenset()) -> object:
        """The value of a literal or of a `let` bound to one; `...` when not constant."""
        if isinstance(expr, n.Literal):
            return expr.value
        if isinstance(expr, n.Name) and expr.name in self.lets and expr.name not in seen:
            if len(seen) > MAX_LET_DEPTH:
                return ...
            return self._constant(self.lets[expr.name].value, seen | {expr.name})
        if isinstance(expr, n.Not):
            inner = self._constant(expr.operand, seen)
            return (not inner) if isinstance(inner, bool) else ...
        return ...

    # -- settings -------------------------------------------------------------------------

    def _check_settings(self) -> None:
        for name, setting in self.settings.items():
            spec = SETTINGS_SPEC.get(name)
            if spec is None:
                self.error("E130", f"unknown setting `{name}`", setting.name_span,
                           suggest(name, SETTINGS_SPEC)
                           or f"the settings are: {', '.join(SETTINGS_SPEC)}")
                continue
            kind, description = spec
            value = setting.value
            if kind == "action":
                if not isinstance(value, n.Action):
                    self.error("E131", f"`{name}` must be an action ({description})",
                               setting.span, 'e.g. tempfail 451 4.3.0 "Please try again later"')
                else:
                    self._check_action(value, None, _SETTINGS_SCOPE)
                continue
            if isinstance(value, n.Action):
                self.error("E131", f"`{name}` must be a {kind}, not an action", value.span)
                continue
            type_ = self.infer.infer(value, _SETTINGS_SCOPE)
            if type_.is_any:
                continue  # already reported
            constant = self._constant(value)
            if kind == "duration":
                if type_.kind != "duration" or not isinstance(constant, float) or constant <= 0:
                    self.error("E131", f"`{name}` must be a positive duration like 250ms or 2s",
                               value.span)
            elif kind == "address" and (
                    not isinstance(constant, str) or not valid_address(constant)):
                    self.error("E131", f"`{name}` must be a mail address in quotes",
                               value.span, 'e.g. quarantine_to = "quarantine@example.org"')
        timeout = self.settings.get("lookup_timeout")
        deadline = self.settings.get("deadline")
        if timeout:
            a = self._constant(timeout.value)  # type: ignore[arg-type]
            b = self._constant(deadline.value) if deadline else DEFAULT_DEADLINE  # type: ignore[arg-type]
            if isinstance(a, float) and isinstance(b, float) and a > b:
                self.error("E131", "`lookup_timeout` is longer than the whole `deadline`"
                           + ("" if deadline else f" (default {b:g}s)"), timeout.span,
                           related=Related(deadline.span, "deadline set here")
                           if deadline else None)

    # -- stages and rules -----------------------------------------------------------------

    def _check_stage(self, stage: StageRules) -> None:
        name = stage.name
        rule_scope = Scope(name, "a rule")
        quiet_scope = Scope(name, "an `on error` action", allow_lookups=False)
        blocker: n.Rule | None = None
        for rule in stage.rules:
            if blocker is not None:
                self.warn("W201", f"rule `{rule.name}` can never run", rule.name_span,
                          "an earlier rule always decides first",
                          Related(blocker.name_span, f"`{blocker.name}` always matches"))
            self._check_rule(rule, name, rule_scope, quiet_scope)
            if (blocker is None and not rule.dry_run and isinstance(rule.final, n.Action)
                    and self._constant(rule.when) is True):
                blocker = rule
        if stage.default is not None:
            self._check_action(stage.default.action, name,
                               Scope(name, "a `default`", allow_lookups=False))
        else:
            self.warn("W202", f"stage `{name}` has no `default`", stage.blocks[0].name_span,
                      "it accepts when no rule decides; add `default accept` (or another "
                      "action) to say so")
        if name == "auth":
            self.warn("W206", "Stalwart never calls hooks at the `auth` stage",
                      stage.blocks[0].name_span,
                      "these rules will not run; judge authenticated sessions with "
                      "`sasl.login` at mail, rcpt or data")

    def _check_rule(self, rule: n.Rule, stage: str | None, scope: Scope, quiet: Scope
                    ) -> None:
        try:
            self._check_rule_parts(rule, stage, scope, quiet)
        except RecursionError:
            self.diagnostics.append(too_deep(rule.name_span, f"rule `{rule.name}`"))

    def _check_rule_parts(self, rule: n.Rule, stage: str | None, scope: Scope, quiet: Scope
                          ) -> None:
        self.infer.expect_bool(rule.when, scope, "a rule's `when` condition")
        for statement in rule.statements:
            if isinstance(statement, n.Log):
                type_ = self.infer.infer(statement.message, scope)
                if type_.kind in t.RECORD_KINDS | {"regex"}:
                    self.error("E105", f"cannot write a {type_} value into a log line",
                               statement.message.span,
                               "pick a field, e.g. `.name`" if type_.kind != "regex" else None)
            else:
                self._check_modification(statement, stage, scope)
                self._check_address_source(statement, rule)
        if isinstance(rule.final, n.Action):
            self._check_action(rule.final, stage, scope)
        elif not rule.statements and not rule.dry_run and rule.on_error is None:
            self.warn("W205", f"rule `{rule.name}` has no effect", rule.name_span,
                      "`continue` without modifications or `log` does nothing")
        if isinstance(rule.on_error, n.Action):
            self._check_action(rule.on_error, stage, quiet)
