"""The compiled form of a policy set: rules as closures, actions with prebuilt replies.

These objects are built once per load by the compiler and only read afterwards, by any
number of concurrent decisions.  Nothing here walks the AST or looks up a name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .context import EvalContext
from .decision import DEFAULT_REPLIES, ActionName, Reply, RuleRef
from .text import reply_text

Closure = Callable[[EvalContext], Any]
Statement = Callable[[EvalContext, list], None]
"""Runs one rule statement: appends a modification to the list or a line to ctx.logs."""

CONTINUE = "continue"


class Const:
    """A value known at load time."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


Compiled = Const | Closure


def as_closure(compiled: Compiled) -> Closure:
    if isinstance(compiled, Const):
        value = compiled.value
        return lambda ctx: value
    return compiled


class Outcome:
    """A compiled terminal action.  For a constant message the reply is built once."""

    __slots__ = ("enhanced", "kind", "message", "reason", "reply", "status")

    def __init__(self, kind: ActionName, *, status: int | None = None,
                 enhanced: str | None = None, message: str | Closure | None = None,
                 reason: str | Closure | None = None) -> None:
        self.kind = kind
        default = DEFAULT_REPLIES.get(kind)
        if default is not None:
            if enhanced is None:  # an explicit code without one gets the class's X.0.0
                enhanced = default.enhanced if status is None else f"{status // 100}.0.0"
            status = status if status is not None else default.status
            if message is None:
                message = default.message
        self.status = status
        self.enhanced = enhanced
        self.message = message
        self.reason = reason
        self.reply = (
            Reply(status, enhanced, message)  # type: ignore[arg-type]
            if status is not None and isinstance(message, str) else None
        )

    def make_reply(self, ctx: EvalContext) -> Reply | None:
        if self.reply is not None or self.status is None:
            return self.reply
        assert callable(self.message)
        return Reply(self.status, self.enhanced, reply_text(self.message(ctx)))

    def make_reason(self, ctx: EvalContext) -> str:
        reason = self.reason
        if reason is None:
            return "quarantined by policy"
        return reason if isinstance(reason, str) else reason(ctx)


class CompiledRule:
    """One rule, or a fused group of consecutive simple rules (`members`): the group's
    condition returns the 1-based index of the first member that matches, or 0."""

    __slots__ = ("cond", "dry_run", "final", "members", "name", "on_error", "paths", "ref",
                 "statements")

    def __init__(self, name: str, ref: RuleRef, cond: Closure,
                 statements: tuple[Statement, ...], final: Outcome | None,
                 on_error: Outcome | str | None, dry_run: bool,
                 members: tuple[CompiledRule, ...] | None = None,
                 paths: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.ref = ref
        self.cond = cond
        self.statements = statements
        self.final = final  # None: `continue`
        self.on_error = on_error  # None: the settings fallback; CONTINUE: skip the rule
        self.dry_run = dry_run
        self.members = members
        self.paths = paths or {}
        """Table → ` → f() → table `t``: where its lookups sit (`call_paths`), for causes."""


@dataclass(frozen=True, slots=True)
class CompiledStage:
    name: str
    rules: tuple[CompiledRule, ...]
    """Every rule, in order (what traces walk)."""
    default: Outcome
    default_ref: RuleRef | None
    steps: tuple[tuple[Closure, CompiledRule], ...] = ()
    """(condition, rule) pairs with simple consecutive rules fused."""
    run: Callable[[EvalContext, Any], Any] | None = None
    """The stage as one generated function, `run(ctx, policy_set)` → `Decision`
    (`codegen`): what decisions without a trace call."""


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    lookup_timeout: float = 0.25
    deadline: float = 2.0
    on_lookup_error: Outcome = Outcome(
        "tempfail", status=451, enhanced="4.3.0",
        message="Directory unavailable, please try again later")
    quarantine_to: str | None = None
