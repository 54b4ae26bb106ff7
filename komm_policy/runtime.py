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

from .call_paths import failure_path
from .context import EvalContext
from .decision import Decision, TraceStep
from .directory import Directory
from .directory.snapshot import TablesSnapshot
from .lookups import DeadlineExceeded
from .program import CompiledRule, CompiledStage, Outcome
from .stage_run import error_text, finish, run_steps
from .wire import Request

if TYPE_CHECKING:
    from .policyset import PolicySet

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
    try:  # attribute reads, not getattr(): this runs for every request
        timed = trace or directory.blocking
    except AttributeError:
        timed = True
    try:  # called in place: no bound method object built
        directory = directory.snapshot()
    except AttributeError:
        if hasattr(directory, "snapshot"):
            raise  # from inside snapshot(): not a directory without one
    tables = None
    if not timed and policy_set.needs.indexes:
        try:
            tables = directory.tables
        except Exception:  # unavailable: each lookup fails into its `on error`
            tables = None
        if tables.__class__ is not TablesSnapshot:
            tables = None
    ctx = EvalContext(request, directory, settings, clock, timed, tables)
    if timed:  # the deadline counts from here (local indexes cannot overrun it)
        ctx.deadline_at = clock() + settings.deadline
    try:
        stage = policy_set.stages[request.context.stage]
    except KeyError:
        stage = CompiledStage(request.context.stage, (), Outcome("accept"), None)
    try:
        if trace:
            ctx.trace_steps = []
            return run_steps(ctx, policy_set, stage,
                             tuple((rule.cond, rule) for rule in map(_traced, stage.rules)))
        run = stage.run
        if run is not None:
            return run(ctx, policy_set)
        return run_steps(ctx, policy_set, stage, stage.steps)
    except DeadlineExceeded as exc:
        return finish(ctx, policy_set, stage.name, settings.on_lookup_error, None, [],
                      True, str(exc))
    except Exception as exc:  # an engine bug must not reach Stalwart as a 500
        return finish(ctx, policy_set, stage.name, settings.on_lookup_error, None, [],
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
            where = failure_path(rule.paths, exc).removeprefix(" → ")
            steps.append(TraceStep(ref, "error", f"{where}: {error_text(exc)}" if where
                                   else error_text(exc)))
            raise
        steps.append(TraceStep(ref, seen if value else "no match"))
        return value

    return CompiledRule(rule.name, ref, traced_cond, rule.statements, rule.final,
                        rule.on_error, rule.dry_run, paths=rule.paths)
