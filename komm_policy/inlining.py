"""Compiling a policy-defined function's call: the call's typed copy of the body, inline.

The checker side (definitions, typing each call's copy, the budgets) is `functions`; this
is what the compiler does with each call's `Instance`: the same closures inline code gives,
with no per-call cost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from . import nodes as n
from .functions import Instance

if TYPE_CHECKING:
    from .program import Compiled


class Inliner(Protocol):
    """What `inline` needs of the compiler: its expression compiler and name bindings."""

    slots: dict[str, int]
    params: dict[str, Compiled]
    arguments: int

    def expr(self, expr: n.Expr) -> Compiled: ...


def inline(compiler: Inliner, instance: Instance, call: n.Call) -> Compiled:
    """Compile a call as its body, each parameter bound to the argument compiled in the
    caller's scope.  The caller's quantifier variables are not visible in the body (its own
    quantifiers take slots above the caller's, so arguments still read theirs)."""
    compiler.arguments += 1  # a parameter read twice runs its argument twice
    try:
        args = [compiler.expr(arg) for arg in call.args]
    finally:
        compiler.arguments -= 1
    saved = compiler.slots, compiler.params
    compiler.slots = {}
    compiler.params = dict(zip(instance.function.params, args, strict=True))
    try:
        return compiler.expr(instance.body)
    finally:
        compiler.slots, compiler.params = saved
