"""Generated decisions (`codegen`'s half for outcomes): a constant outcome's `Decision`
built in the stage function itself, as `stage_run.finish` builds it.

Most decisions end at a terminal rule without statements or at the stage's default, with
nothing else recorded (no modifications kept, no dry-run hits, logs, errors or trace): the
decision is then one constructor call on constants and the lookup log, and the call of
`finish` (its branches on the outcome's kind, a Python frame) is skipped.  In a stage
without statements, dry runs and `on error continue` (`StageGenerator.extras` false)
nothing else can be recorded, and the test for it is left out too (a trace never runs
the generated function: `runtime.decide` walks the closures).  Anything else
calls `finish`, so both ways build the same value (tests/test_codegen.py compares them).
"""

from __future__ import annotations

from typing import Any

from .decision import Decision, RuleRef
from .program import CompiledRule, CompiledStage, Outcome
from .stage_run import finish, rule_hit, stage_default


def matched_lines(gen: Any, stage: str, rule: CompiledRule, target: str) -> list[str]:
    """What a step does when its condition holds (`target`: the source of the rule, a
    fused group's member already picked): a terminal rule's constant decision, else
    `rule_hit` (a dry run, statements, `continue`, a decision that may not be constant)."""
    final = rule.final
    if rule.members is None and not rule.dry_run and not rule.statements and final is not None:
        call = (f"{gen.bind(finish)}(ctx, policy, {stage}, {gen.bind(final)}, "
                f"{gen.bind(rule.ref)}, mods)")
        lines = decision_lines(gen, stage, final, rule.ref, call)
        if lines is not None:
            return lines
    return [f"_d = {gen.bind(rule_hit)}(ctx, policy, {stage}, {target}, mods)",
            "if _d is not None:",
            "    return _d"]


def default_lines(gen: Any, stage: str, compiled: CompiledStage, holder: str) -> list[str]:
    """The end of the stage function: the default's decision (`holder`: the source of the
    compiled stage, for `stage_default`)."""
    default = compiled.default
    if default.kind == "quarantine":  # may be refused: `stage_default` falls back
        return [f"return {gen.bind(stage_default)}(ctx, policy, {holder}, mods)"]
    call = (f"{gen.bind(finish)}(ctx, policy, {stage}, {gen.bind(default)}, "
            f"{gen.bind(compiled.default_ref)}, mods)")
    return decision_lines(gen, stage, default, compiled.default_ref, call) or [f"return {call}"]


def decision_lines(gen: Any, stage: str, outcome: Outcome, ref: RuleRef | None,
                   finish_call: str) -> list[str] | None:
    """Lines returning the decision for `outcome` (the stage's name in the local source
    `stage`), or None when it is not constant (a quarantine, a reply built from the
    request): `finish_call` is the source of the equivalent `finish(...)` call, taken
    when the decision recorded more than lookups."""
    kind = outcome.kind
    if kind == "quarantine":
        return None  # redirected or refused at the data stage: `finish` decides
    reply = None if kind == "accept" else outcome.reply
    if kind != "accept" and reply is None:
        return None  # a reply built from the request
    built = (f"return {gen.bind(Decision)}({stage}, {gen.bind(kind)}, {gen.bind(reply)}, (), "
             f"{gen.bind(ref)}, (), tuple(ctx.lookup_log), (), (), False, None, "
             "policy.version, None)")
    if not gen.extras:  # nothing but lookups can be recorded in this stage
        return [built]
    kept = "mods or " if kind == "accept" else ""  # only an accept keeps modifications
    return [
        f"if {kept}ctx.dry_run or ctx.logs or ctx.errors or ctx.trace_steps is not None:",
        f"    return {finish_call}",
        built,
    ]
