"""Evaluating a stage: first-match rules, modifications, dry runs, fallbacks, deadline.

`decide()` never raises for anything a policy or a directory can do: a failing or slow
lookup, a policy bug or the deadline becomes the rule's `on error` action or the settings'
fallback, with the cause in the decision.  Quarantine is turned into what Stalwart can
actually do without losing mail: accept, with the recipients replaced by the quarantine
mailbox and the reason in headers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .context import EvalContext
from .decision import DEFAULT_REPLIES, Decision, DryRunHit, RuleRef, TraceStep
from .directory import Directory
from .directory.snapshot import TablesSnapshot
from .lookups import DeadlineExceeded, LookupFailed
from .outgoing import UnsafeValue, add_header, add_recipient, delete_recipient
from .program import CONTINUE, CompiledRule, CompiledStage, Outcome
from .wire import AddHeader, ChangeHeader, DeleteHeader, InsertHeader, Request

if TYPE_CHECKING:
    from .policyset import PolicySet

_HEADER_MODS = (AddHeader, InsertHeader, ChangeHeader, DeleteHeader)


def decide(
    policy_set: PolicySet,
    request: Request,
    directory: Directory,
    *,
    trace: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> Decision:
    """Evaluate the request's stage and return the decision (never raises)."""
    settings = policy_set.settings
    timed = trace or getattr(directory, "blocking", True)
    snapshot = getattr(directory, "snapshot", None)
    if snapshot is not None:
        directory = snapshot()
    ctx = EvalContext(request, directory, settings, clock, timed)
    if policy_set.needs.indexes and not timed:
        try:
            tables = directory.tables
        except Exception:  # unavailable: each lookup fails into its `on error`
            tables = None
        if tables.__class__ is TablesSnapshot:
            ctx.tables = tables
    if timed:  # the deadline counts from here (local indexes cannot overrun it)
        ctx.deadline_at = clock() + settings.deadline
    stage = policy_set.stages.get(request.context.stage)
    if stage is None:
        stage = CompiledStage(request.context.stage, (), Outcome("accept"), None)
    if trace:
        ctx.trace_steps = []
        steps = tuple((rule.cond, rule) for rule in map(_traced, stage.rules))
    else:
        steps = stage.steps
    try:
        return _run(ctx, policy_set, stage, steps)
    except DeadlineExceeded as exc:
        return _finish(ctx, policy_set, stage.name, settings.on_lookup_error, None, [],
                       True, str(exc))
    except Exception as exc:  # an engine bug must not reach Stalwart as a 500
        return _finish(ctx, policy_set, stage.name, settings.on_lookup_error, None, [],
                       True, f"internal error: {type(exc).__name__}: {exc}")


def _traced(rule: CompiledRule) -> CompiledRule:
    """The same rule, with a condition that records its outcome in ctx.trace_steps."""
    cond = rule.cond
    ref = rule.ref
    seen = "dry run" if rule.dry_run else "matched"

    def traced_cond(ctx: EvalContext) -> Any:
        steps = ctx.trace_steps
        assert steps is not None
        try:
            value = cond(ctx)
        except Exception as exc:
            steps.append(TraceStep(ref, "error", _error_text(exc)))
            raise
        steps.append(TraceStep(ref, seen if value else "no match"))
        return value

    return CompiledRule(rule.name, ref, traced_cond, rule.statements, rule.final,
                        rule.on_error, rule.dry_run)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, LookupFailed | DeadlineExceeded):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _run(ctx: EvalContext, policy_set: PolicySet, stage: CompiledStage,
         steps: tuple[tuple[Any, CompiledRule], ...]) -> Decision:
    """First match wins; non-terminal rules collect modifications; errors → `on error`."""
    mods: list = []
    name = stage.name
    for cond, rule in steps:
        try:
            hit = cond(ctx)
            if not hit:
                continue
            if rule.members is not None:
                rule = rule.members[hit - 1]
            if rule.dry_run:
                _dry_run(ctx, rule)
                continue
            final = rule.final
            if rule.statements:
                pending: list = []
                for statement in rule.statements:
                    statement(ctx, pending)
                if final is None:
                    mods.extend(pending)
                    continue
                return _finish(ctx, policy_set, name, final, rule.ref, mods + pending)
            if final is None:
                continue
            return _finish(ctx, policy_set, name, final, rule.ref, mods)
        except DeadlineExceeded as exc:
            return _finish(ctx, policy_set, name, policy_set.settings.on_lookup_error,
                           rule.ref, mods, True, f"rule {rule.ref}: {exc}")
        except Exception as exc:  # lookups and policy bugs alike
            cause = f"rule {rule.ref}: {_error_text(exc)}"
            handler = rule.on_error
            if rule.dry_run or handler is CONTINUE:
                ctx.error(cause)
                continue
            outcome = handler if isinstance(handler, Outcome) else (
                policy_set.settings.on_lookup_error)
            return _finish(ctx, policy_set, name, outcome, rule.ref, mods, True, cause)
    try:
        return _finish(ctx, policy_set, name, stage.default, stage.default_ref, mods)
    except UnsafeValue as exc:  # a `default quarantine` that cannot be sent safely
        return _finish(ctx, policy_set, name, policy_set.settings.on_lookup_error,
                       stage.default_ref, mods, True, f"default: {exc}")


def _dry_run(ctx: EvalContext, rule: CompiledRule) -> None:
    final = rule.final
    hit = DryRunHit(rule.ref, final.kind if final is not None else "continue",
                    final.make_reply(ctx) if final is not None else None)
    if ctx.dry_run is None:
        ctx.dry_run = []
    ctx.dry_run.append(hit)


def _finish(ctx: EvalContext, policy_set: PolicySet, stage: str, outcome: Outcome,
            ref: RuleRef | None, mods: list, fallback: bool = False,
            cause: str | None = None) -> Decision:
    kind = outcome.kind
    modifications: tuple = ()
    reply = None
    if kind == "accept":
        if mods:
            modifications = tuple(mods)
    elif kind == "quarantine":
        quarantine_to = policy_set.settings.quarantine_to
        if stage == "data" and quarantine_to:
            try:
                modifications = _quarantine(ctx, outcome, mods, quarantine_to)
            except UnsafeValue as exc:
                if not fallback:
                    raise  # the deciding rule's error: its `on error` or the fallback
                kind, reply = "tempfail", DEFAULT_REPLIES["tempfail"]
                cause = f"{cause}; {exc}" if cause else str(exc)
        else:
            kind = "tempfail"
            reply = DEFAULT_REPLIES["tempfail"]
    else:
        reply = outcome.make_reply(ctx)
    lookups = ctx.lookup_log
    return Decision(
        stage, kind, reply, modifications, ref,
        tuple(ctx.dry_run) if ctx.dry_run else (),
        tuple(lookups) if lookups else (),
        tuple(ctx.logs) if ctx.logs else (),
        tuple(ctx.errors) if ctx.errors else (),
        fallback, cause, policy_set.version,
        tuple(ctx.trace_steps) if ctx.trace_steps is not None else None,
    )


def _quarantine(ctx: EvalContext, outcome: Outcome, mods: list, mailbox: str) -> tuple:
    """Redirect the message into the quarantine mailbox instead of dropping it.

    Stalwart's own `quarantine` action drops the message; this keeps it, with the reason
    and the original recipients in headers.  Earlier header changes are kept; earlier
    recipient changes are not (the message must reach no one else)."""
    recipients = ctx.recipients()
    result: list = [m for m in mods if isinstance(m, _HEADER_MODS)]
    result.append(add_header("X-Komm-Quarantine", outcome.make_reason(ctx)))
    result.append(add_header("X-Komm-Original-Recipients", ", ".join(recipients)))
    as_sent = ctx.recipients_as_sent()
    result.extend(delete_recipient(r, as_sent) for r in as_sent)
    result.append(add_recipient(mailbox))
    return tuple(result)
