"""Generated comparisons (`codegen`'s half for `Compare` nodes): the operators' closures
(`operators.COMPARE`) written out as statements, operand by operand in the closures' order.

The operands are generated apart (their lines kept) and placed as each closure runs them:
both, left then right, for `==`, ordering and the text methods; for `in` a computed list
first and the left side only when the list is not none; for `matches` a computed regex only
when the text is not none.  Address comparisons lower the plain-text side (`lower_value`,
the `lowered` closure's), list equality compares tuples (`tuple_value`), both at load time
for constants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import nodes as n
from .operators import (
    COMPARE,
    DUAL,
    as_tuple,
    container_of,
    contains,
    lower_value,
    lowered,
    tuple_value,
)
from .program import Const
from .regex import Regex

Val = tuple[str | None, Any]
"""An expression's result: (local name, None), or (None, value) for a constant (whose
evaluation emitted no code)."""

_ORDER = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}


class Unsupported(Exception):
    """An expression `codegen` does not generate: its rule runs its closure."""


MAX_CHAIN = 16
"""Operands of one `and`/`or` generated as statements: each nests a `try` in the last
one's `else`, and Python refuses more than 20 nested blocks (the whole stage then fell
back to closures).  A longer chain (a tester's had 20,000 terms: its generation recursed
with a copy of the rest of the chain per level, O(n²), until Python's recursion limit,
holding the lock in collections of those copies for 100-450 ms) runs its closure."""


def chain_is_or(expr: n.BoolOp) -> bool:
    """Whether the chain is an `or` (else an `and`); raises Unsupported past
    `MAX_CHAIN` operands (the rule then runs its closure, flat, of any length)."""
    if len(expr.operands) > MAX_CHAIN:
        raise Unsupported("BoolOp")
    return expr.op == "or"


class CompareGenerating:
    """Comparisons; the plumbing (`capture`, `splice`, `tmp`, …) comes from
    `codegen.StageGenerator`, which mixes this in."""

    c: Any

    if TYPE_CHECKING:
        def expr(self, expr: n.Expr) -> Val: ...

        def capture(self, fn: Callable[..., Any], *args: Any) -> tuple[list[str], Any]: ...

        def splice(self, lines: list[str], extra: str = "") -> None: ...

        def emit(self, line: str) -> None: ...

        def name(self, prefix: str) -> str: ...

        def bind(self, value: Any) -> str: ...

        def atom(self, val: Val) -> str: ...

        def tmp(self, code: str) -> Val: ...

    # -- comparisons ----------------------------------------------------------------------

    def _Compare(self, expr: n.Compare, negate: bool = False) -> Val:
        op = expr.op
        left_t, right_t = self.c.type_of(expr.left), self.c.type_of(expr.right)
        left = list(self.capture(self.expr, expr.left))
        right = list(self.capture(self.expr, expr.right))
        fold = None
        if op == "contains" and left_t.kind == "list" and left_t.elem is not None:
            fold = (left_t.elem, right_t)
        elif op in ("==", "!=", "contains", "starts_with", "ends_with"):
            fold = (left_t, right_t)
        elif op in ("in", "not in") and right_t.kind == "list" and right_t.elem is not None:
            fold = (left_t, right_t.elem)
        if fold is not None:
            lt, rt = fold
            if lt.kind == "list" and rt.kind == "list" and lt.elem and rt.elem:
                lt, rt = lt.elem, rt.elem
            if lt.kind == "address" and rt.kind == "string":
                self._wrap(right, lower_value, lowered)
            elif rt.kind == "address" and lt.kind == "string":
                self._wrap(left, lower_value, lowered)
        if op in ("==", "!=") and "list" in (left_t.kind, right_t.kind):
            self._wrap(left, tuple_value, as_tuple)
            self._wrap(right, tuple_value, as_tuple)
        if negate and op in DUAL:
            op, negate = DUAL[op], False
        opt = left_t.optional or left_t.is_any
        (ll, lv), (rl, rv) = left, right
        if lv[0] is None and rv[0] is None:
            closure = COMPARE[op](Const(lv[1]), Const(rv[1]), opt, right_t, negate)
            if isinstance(closure, Const):
                return None, closure.value
            try:
                return None, closure(None)
            except Exception:
                return self.tmp(f"{self.bind(closure)}(ctx)")
        return self._compare(op, negate, opt, right_t, (ll, lv), (rl, rv))

    def _wrap(self, side: list[Any], value_fn: Callable[[Any], Any],
              const_fn: Callable[[Const], Any]) -> None:
        """Apply an operand transformation: at load time to a constant (`const_fn`, the
        closure compiler's), else after the operand's code (`value_fn`)."""
        lines, val = side
        if val[0] is None:
            side[1] = None, const_fn(Const(val[1])).value
            return
        local = self.name("t")
        lines.append(f"{local} = {self.bind(value_fn)}({val[0]})")
        side[1] = local, None

    def _compare(self, op: str, neg: bool, opt: bool, right_t: Any,
                 left: tuple[list[str], Val], right: tuple[list[str], Val]) -> Val:
        (ll, lv), (rl, rv) = left, right
        if op in ("==", "!="):
            neg ^= op == "!="
            if lv[0] is None:
                (ll, lv), (rl, rv) = (rl, rv), (ll, lv)
            self.splice(ll)
            self.splice(rl)
            if rv[0] is None and rv[1] is None:
                return self.tmp(f"{lv[0]} is {'not ' if neg else ''}None")
            return self.tmp(f"{lv[0]} {'!=' if neg else '=='} {self.atom(rv)}")
        if op in _ORDER:
            self.splice(ll)
            self.splice(rl)
            x, y = self.atom(lv), self.atom(rv)
            test = f"({x} is not None and {y} is not None and {x} {_ORDER[op]} {y})"
            return self.tmp(f"not {test}" if neg else test)
        if op in ("in", "not in"):
            neg ^= op == "not in"
            word = "not in" if neg else "in"
            if rv[0] is None:
                self.splice(ll)
                return self.tmp(f"{self.atom(lv)} {word} "
                                f"{self.bind(container_of(rv[1], right_t))}")
            return self._guarded(rl, rv[0], ll, f"{self.atom(lv)} {word} {rv[0]}", neg)
        if op == "matches":
            if rv[0] is None:
                self.splice(ll)
                search = self.bind(rv[1].search)
                if not opt and isinstance(rv[1], Regex):  # its memo of answers, read inline
                    found = self.name("f")
                    self.emit(f"{found} = {self.bind(rv[1]._memo)}.get({lv[0]})")
                    self.emit(f"if {found} is None:")
                    self.emit(f"    {found} = {search}({lv[0]}) is not None")
                    return self.tmp(f"not {found}" if neg else found)
                test = f"{search}({self.atom(lv)}) is {'' if neg else 'not '}None"
                if not opt:
                    return self.tmp(test)
                test = f"({lv[0]} is not None and {search}({lv[0]}) is not None)"
                return self.tmp(f"not {test}" if neg else test)
            return self._guarded(ll, self.atom(lv), rl,
                                 f"{rv[0]}.search({lv[0]}) is {'' if neg else 'not '}None",
                                 neg)
        if op in ("contains", "starts_with", "ends_with"):
            return self._text(op, neg, opt, (ll, lv), (rl, rv))
        raise Unsupported(op)

    def _guarded(self, first: list[str], atom: str, then: list[str], test: str,
                 neg: bool) -> Val:
        """`first` runs; when its value `atom` is none the result is `neg`, else `then`
        runs and `test` decides (`in` a computed list, `matches` a computed regex)."""
        target = self.name("t")
        self.splice(first)
        self.emit(f"if {atom} is None:")
        self.emit(f"    {target} = {neg}")
        self.emit("else:")
        self.splice(then, "    ")
        self.emit(f"    {target} = {test}")
        return target, None

    def _text(self, op: str, neg: bool, opt: bool, left: tuple[list[str], Val],
              right: tuple[list[str], Val]) -> Val:
        (ll, lv), (rl, rv) = left, right
        method: Callable[[Any, Any], bool] = {
            "contains": contains, "starts_with": str.startswith,
            "ends_with": str.endswith}[op]
        self.splice(ll)
        self.splice(rl)
        x = self.atom(lv)
        if rv[0] is None and rv[1] is not None:
            c = self.bind(rv[1])
            if opt and op == "contains":
                test = f"({x} is not None and {c} in {x})"
                return self.tmp(f"not {test}" if neg else test)
            if not opt:
                if op == "contains":
                    return self.tmp(f"{c} {'not in' if neg else 'in'} {x}")
                if op == "ends_with":
                    return self.tmp(f"{'not ' if neg else ''}{x}.endswith({c})")
                return self.tmp(f"{'not ' if neg else ''}{self.bind(method)}({x}, {c})")
        y = self.atom(rv)
        test = f"({x} is not None and {y} is not None and {self.bind(method)}({x}, {y}))"
        return self.tmp(f"not {test}" if neg else test)
