"""Operator closures: comparisons, `and` / `or`, case folding against addresses.

Each builder gets the compiled operands (constants or closures), whether the left side
may be none, the right side's type and whether to negate (`not (a in b)` becomes one
`not in` closure), and returns the cheapest closure for that shape.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from . import types as t
from .addresses import comparison_form
from .context import EvalContext
from .ipset import IPSet
from .lookups import DeadlineExceeded
from .program import Closure, Compiled, Const, as_closure

DUAL = {"==": "!=", "!=": "==", "in": "not in", "not in": "in"}


def as_tuple(compiled: Compiled) -> Compiled:
    if isinstance(compiled, Const):
        value = compiled.value
        return Const(tuple(value) if isinstance(value, list | tuple) else value)
    get = compiled

    def as_tuple(ctx: EvalContext) -> Any:
        return tuple_value(get(ctx))
    return as_tuple


def tuple_value(value: Any) -> Any:
    """A list as a tuple (request lists compare equal to list literals), else the value."""
    return tuple(value) if isinstance(value, list) else value


def index_value(seq: Any, i: Any) -> Any:
    """`seq[i]`, none for a none sequence or an index out of range."""
    try:
        return seq[i] if seq is not None else None
    except IndexError:
        return None


def lowered(compiled: Compiled) -> Compiled:
    """Plain text compared with an address, in the addresses' normal form (lower case,
    A-label domain: `comparison_form`)."""
    if isinstance(compiled, Const):
        value = compiled.value
        if isinstance(value, str):
            return Const(comparison_form(value))
        if isinstance(value, tuple):
            return Const(tuple(comparison_form(v) if isinstance(v, str) else v
                               for v in value))
        return compiled
    get = compiled

    def lowered(ctx: EvalContext) -> Any:
        return lower_value(get(ctx))
    return lowered


def lower_value(value: Any) -> Any:
    """Text (or a list's text items) in the addresses' normal form (`lowered`)."""
    if isinstance(value, str):
        return comparison_form(value)
    if isinstance(value, list):
        return [comparison_form(v) if isinstance(v, str) else v for v in value]
    return value


def either(left: Closure, right: Closure) -> Closure:
    """`left or right`; an error on one side does not matter if the other side is true."""

    def either(ctx: EvalContext) -> bool:
        try:
            if left(ctx):
                return True
        except DeadlineExceeded:
            raise
        except Exception:
            if right(ctx):
                return True
            raise
        return bool(right(ctx))
    return either


def both(left: Closure, right: Closure) -> Closure:
    """`left and right`; an error on one side does not matter if the other side is false."""

    def both(ctx: EvalContext) -> bool:
        try:
            if not left(ctx):
                return False
        except DeadlineExceeded:
            raise
        except Exception:
            if not right(ctx):
                return False
            raise
        return bool(right(ctx))
    return both



def all_of(operands: Sequence[Closure]) -> Closure:
    """`a and b and …` over any number of operands, in one loop: the same result, order
    and raised error (the last one) as `both` nested to the right, without one Python frame
    per operand (3,000 `and`ed comparisons must not end in a RecursionError)."""
    return _one_loop(operands, stop_when_false=True)


def any_of(operands: Sequence[Closure]) -> Closure:
    """`a or b or …` in one loop, as `either` nested to the right (see `all_of`)."""
    return _one_loop(operands, stop_when_false=False)


def _one_loop(operands: Sequence[Closure], *, stop_when_false: bool) -> Closure:
    """The loop of `all_of` (stops at the first false operand, answering False) and
    `any_of` (at the first true one, answering True).  An operand's error is kept and
    raised at the end unless a later operand decides; a deadline is raised at once."""
    items = tuple(operands)
    decided = not stop_when_false  # what a stopping operand answers

    def one_loop(ctx: EvalContext) -> bool:
        error: Exception | None = None
        for operand in items:
            try:
                if (not operand(ctx)) is stop_when_false:
                    return decided
            except DeadlineExceeded:
                raise
            except Exception as exc:
                error = exc
        if error is not None:
            raise error
        return not decided
    return one_loop

# -- comparison builders: (left, right, left may be none, right type, negate) → closure ----

def _cmp_eq(left: Compiled, right: Compiled, _opt: bool, _rt: t.Type,
            negate: bool = False) -> Compiled:
    if isinstance(left, Const) and not isinstance(right, Const):
        left, right = right, left
    get = as_closure(left)
    if isinstance(right, Const):
        c = right.value
        if c is None:
            if negate:
                return lambda ctx: get(ctx) is not None
            return lambda ctx: get(ctx) is None
        if negate:
            return lambda ctx: get(ctx) != c
        return lambda ctx: get(ctx) == c
    other = right
    if negate:
        return lambda ctx: get(ctx) != other(ctx)
    return lambda ctx: get(ctx) == other(ctx)


def _cmp_ne(left: Compiled, right: Compiled, opt: bool, rt: t.Type,
            negate: bool = False) -> Compiled:
    return _cmp_eq(left, right, opt, rt, not negate)


def _ordering(fn: Callable[[Any, Any], bool]) -> Callable[..., Compiled]:
    def build(left: Compiled, right: Compiled, _opt: bool, _rt: t.Type,
              negate: bool = False) -> Compiled:
        a, b = as_closure(left), as_closure(right)

        def ordered(ctx: EvalContext) -> bool:
            x = a(ctx)
            y = b(ctx)
            return (x is not None and y is not None and fn(x, y)) is not negate
        return ordered
    return build


def container_of(value: Any, right_t: t.Type) -> Any:
    if right_t.kind == "cidr":
        return IPSet([value])
    items = tuple(value)
    if right_t.elem is not None and right_t.elem.kind in ("ip", "cidr"):
        return IPSet(items)
    try:
        return frozenset(items)
    except TypeError:
        return items


def _cmp_in(left: Compiled, right: Compiled, _opt: bool, rt: t.Type,
            negate: bool = False) -> Compiled:
    get = as_closure(left)
    if isinstance(right, Const):
        container = container_of(right.value, rt)
        if negate:
            return lambda ctx: get(ctx) not in container
        return lambda ctx: get(ctx) in container
    items = right

    def member(ctx: EvalContext) -> bool:
        seq = items(ctx)
        return (seq is not None and get(ctx) in seq) is not negate
    return member


def _cmp_not_in(left: Compiled, right: Compiled, opt: bool, rt: t.Type,
                negate: bool = False) -> Compiled:
    return _cmp_in(left, right, opt, rt, not negate)


def _cmp_matches(left: Compiled, right: Compiled, opt: bool, _rt: t.Type,
                 negate: bool = False) -> Compiled:
    get = as_closure(left)
    if isinstance(right, Const):
        search = right.value.search
        if not opt:
            if negate:
                return lambda ctx: search(get(ctx)) is None
            return lambda ctx: search(get(ctx)) is not None

        def matches(ctx: EvalContext) -> bool:
            value = get(ctx)
            return (value is not None and search(value) is not None) is not negate
        return matches
    pattern = as_closure(right)

    def matches_dynamic(ctx: EvalContext) -> bool:
        value = get(ctx)
        return (value is not None and pattern(ctx).search(value) is not None) is not negate
    return matches_dynamic


def _text_method(method: Callable[[Any, Any], bool]) -> Callable[..., Compiled]:
    def build(left: Compiled, right: Compiled, opt: bool, _rt: t.Type,
              negate: bool = False) -> Compiled:
        get = as_closure(left)
        if isinstance(right, Const) and opt and right.value is not None and method is contains:
            needle = right.value

            def contains_optional(ctx: EvalContext) -> bool:
                value = get(ctx)
                return (value is not None and needle in value) is not negate
            return contains_optional
        if isinstance(right, Const) and not opt and right.value is not None:
            c = right.value
            if method is contains:
                if negate:
                    return lambda ctx: c not in get(ctx)
                return lambda ctx: c in get(ctx)
            if method is str.endswith:
                if negate:
                    return lambda ctx: not get(ctx).endswith(c)
                return lambda ctx: get(ctx).endswith(c)
            if negate:
                return lambda ctx: not method(get(ctx), c)
            return lambda ctx: method(get(ctx), c)
        other = as_closure(right)

        def text_op(ctx: EvalContext) -> bool:
            value = get(ctx)
            arg = other(ctx)
            return (value is not None and arg is not None and method(value, arg)) is not negate
        return text_op
    return build


def contains(haystack: Any, needle: Any) -> bool:
    return needle in haystack


COMPARE: dict[str, Callable[..., Compiled]] = {
    "==": _cmp_eq,
    "!=": _cmp_ne,
    "<": _ordering(operator.lt),
    "<=": _ordering(operator.le),
    ">": _ordering(operator.gt),
    ">=": _ordering(operator.ge),
    "in": _cmp_in,
    "not in": _cmp_not_in,
    "matches": _cmp_matches,
    "contains": _text_method(contains),
    "starts_with": _text_method(str.startswith),
    "ends_with": _text_method(str.endswith),
}
