"""Rule fusion: runs of simple consecutive rules become one step of the rule loop.

`sender ends_with "@a.test"`, `sender ends_with "@b.test"`, … are tested with one
`str.endswith(tuple)` call; runs of `x == c` / `x in [...]` become one dict lookup.  A
fused step's condition returns the 1-based position of the first member that matches (0
for none), so first-match order and the deciding rule's name stay exactly as written.
Only rules without statements, with a terminal action and without `on error continue`
(a member whose action fails would go on with the next rule, past members of its group
that match as well), comparing a scalar, never-none request field with constants are
fused (the compiler decides, `_Compiler.fusable`).
Traces walk the unfused rules; a group's condition carries `fused` = (field getter,
dict.get of the values or the affixes, None or the `str` method) for `codegen`, which
writes it inline.
"""

from __future__ import annotations

from typing import Any

from .context import EvalContext
from .program import CompiledRule

FUSABLE = {"==": "eq", "in": "eq", "starts_with": "starts", "ends_with": "ends"}
"""Operators whose runs can be fused, by family: a run shares field and family."""

Shape = tuple[tuple[Any, ...], Any]
"""(key: (field name, family), (field getter, constant or constants))."""


def fuse(rules: list[tuple[CompiledRule, Shape | None]]) -> list[CompiledRule]:
    """The rule loop's steps: each run of two or more rules of one shape fused."""
    out: list[CompiledRule] = []
    run: list[tuple[CompiledRule, Any]] = []
    run_key: tuple[Any, ...] | None = None

    def flush() -> None:
        if len(run) >= 2:
            out.append(_group(run_key, run))  # type: ignore[arg-type]
        else:
            out.extend(rule for rule, _ in run)
        run.clear()

    for rule, shape in rules:
        if shape is None:
            flush()
            run_key = None
            out.append(rule)
            continue
        key, value = shape
        if key != run_key:
            flush()
            run_key = key
        run.append((rule, value))
    flush()
    return out


def first_affix(method: Any, value: str, affixes: tuple[str, ...]) -> int:
    """The 1-based position of the first affix `method(value, affix)` finds (0: none)."""
    for position, affix in enumerate(affixes, start=1):
        if method(value, affix):
            return position
    return 0


def _group(key: tuple[Any, ...], run: list[tuple[CompiledRule, Any]]) -> CompiledRule:
    """One step for a run of fusable rules."""
    members = tuple(rule for rule, _ in run)
    get = run[0][1][0]
    family = key[1]
    if family == "eq":
        index: dict[Any, int] = {}
        for position, (_, (_, values)) in enumerate(run, start=1):
            for value in values:
                index.setdefault(value, position)
        lookup = index.get

        def cond(ctx: EvalContext) -> int:
            return lookup(get(ctx), 0)
        cond.fused = (get, lookup, None)  # type: ignore[attr-defined]
    else:
        affixes = tuple(values for _, (_, values) in run)
        method = str.endswith if family == "ends" else str.startswith

        def cond(ctx: EvalContext) -> int:
            value = get(ctx)
            if method(value, affixes):
                return first_affix(method, value, affixes)
            return 0
        cond.fused = (get, affixes, method)  # type: ignore[attr-defined]
    first = members[0]
    name = f"{first.name}..{members[-1].name}"
    return CompiledRule(name, first.ref, cond, (), None, None, False, members)
