"""A stage's rule loop and what every way of running it shares: a matching rule, a failing
rule, the default, the decision.

Two runners evaluate rules: `run_steps` walks the compiled (condition, rule) pairs (traces
use it), and the function `codegen` generates for each stage inlines the conditions.  Both
hand every match to `rule_hit`, every error to `rule_failed` and the end of the stage to
`stage_default`, so first match, dry runs, statements, `on error` and the quarantine
rewrite mean one thing.  Takes the policy set as `Policy` (its settings and version), so
that nothing here depends on how a set is loaded.
"""

from __future__ import annotations

from typing import Any, Protocol

from .call_paths import failure_path
from .context import EvalContext
from .decision import DEFAULT_REPLIES, Decision, DryRunHit, RuleRef
from .lookups import DeadlineExceeded, LookupFailed
from .outgoing import (
    UnsafeValue,
    add_address_list_header,
    add_header,
    add_recipient,
    delete_recipient,
)
from .program import CONTINUE, CompiledRule, CompiledStage, Outcome, RuntimeSettings
from .wire import AddHeader, ChangeHeader, DeleteHeader, InsertHeader

_HEADER_MODS = (AddHeader, InsertHeader, ChangeHeader, DeleteHeader)


class Policy(Protocol):
    """What running a stage reads of the policy set (`policyset.PolicySet` has it)."""

    @property
    def settings(self) -> RuntimeSettings: ...

    @property
    def version(self) -> str: ...


def run_steps(ctx: EvalContext, policy: Policy, stage: CompiledStage,
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
            decision = rule_hit(ctx, policy, name, rule, mods)
            if decision is not None:
                return decision
        except Exception as exc:  # lookups and policy bugs alike
            decision = rule_failed(ctx, policy, name, rule, mods, exc)
            if decision is not None:
                return decision
    return stage_default(ctx, policy, stage, mods)


def rule_hit(ctx: EvalContext, policy: Policy, stage: str, rule: CompiledRule,
             mods: list) -> Decision | None:
    """A rule whose condition held (a fused group's member already picked): its decision,
    or None when evaluation goes on (a dry run, `continue`; statements extend `mods`).
    Raises what its statements or the decision raise (→ `rule_failed`)."""
    if rule.dry_run:
        _dry_run(ctx, rule)
        return None
    final = rule.final
    if rule.statements:
        pending: list = []
        for statement in rule.statements:
            statement(ctx, pending)
        if final is None:
            mods.extend(pending)
            return None
        return finish(ctx, policy, stage, final, rule.ref, mods + pending)
    if final is None:
        return None
    return finish(ctx, policy, stage, final, rule.ref, mods)


def rule_failed(ctx: EvalContext, policy: Policy, stage: str, rule: CompiledRule,
                mods: list, exc: Exception) -> Decision | None:
    """A rule that raised: the deadline's fallback, or the rule's `on error` (None: skip
    the rule, the cause kept in the decision's errors)."""
    if isinstance(exc, DeadlineExceeded):
        return finish(ctx, policy, stage, policy.settings.on_lookup_error, rule.ref, mods,
                      True, f"rule {rule.ref}: {exc}")
    cause = f"rule {rule.ref}{failure_path(rule.paths, exc)}: {error_text(exc)}"
    handler = rule.on_error
    if rule.dry_run or handler is CONTINUE:
        ctx.error(cause)
        return None
    outcome = handler if isinstance(handler, Outcome) else policy.settings.on_lookup_error
    return finish(ctx, policy, stage, outcome, rule.ref, mods, True, cause)


def stage_default(ctx: EvalContext, policy: Policy, stage: CompiledStage,
                  mods: list) -> Decision:
    """No rule decided: the stage's default."""
    try:
        return finish(ctx, policy, stage.name, stage.default, stage.default_ref, mods)
    except UnsafeValue as exc:  # a `default quarantine` that cannot be sent safely
        return finish(ctx, policy, stage.name, policy.settings.on_lookup_error,
                      stage.default_ref, mods, True, f"default: {exc}")


def error_text(exc: BaseException) -> str:
    if isinstance(exc, LookupFailed | DeadlineExceeded):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _dry_run(ctx: EvalContext, rule: CompiledRule) -> None:
    final = rule.final
    hit = DryRunHit(rule.ref, final.kind if final is not None else "continue",
                    final.make_reply(ctx) if final is not None else None)
    if ctx.dry_run is None:
        ctx.dry_run = []
    ctx.dry_run.append(hit)


def finish(ctx: EvalContext, policy: Policy, stage: str, outcome: Outcome,
           ref: RuleRef | None, mods: list, fallback: bool = False,
           cause: str | None = None) -> Decision:
    """The decision for `outcome`, with everything the evaluation recorded."""
    kind = outcome.kind
    modifications: tuple = ()
    reply = None
    if kind == "accept":
        if mods:
            modifications = tuple(mods)
    elif kind == "quarantine":
        quarantine_to = policy.settings.quarantine_to
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
        fallback, cause, policy.version,
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
    result.append(add_address_list_header("X-Komm-Original-Recipients", recipients))
    as_sent = ctx.recipients_as_sent()
    result.extend(delete_recipient(r, as_sent) for r in as_sent)
    result.append(add_recipient(mailbox))
    return tuple(result)
