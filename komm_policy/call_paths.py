"""Where a rule's table lookups sit: `rule → function() → … → table`, for failure causes.

A lookup inside a policy-defined function fails with the lookup's own text (`lookup_all(
people: email)('a@example.org') failed: …`), and the rule that called
the function is what the decision names.  Between the two, an operator needs the functions
the rule went through, to see which definition reads the failing table.  The path is known
when the policy compiles (functions are inlined per call site, `functions.Instance`), so
each rule carries a map from table name to its path text, built once, and the text is only
looked up when a lookup has failed: nothing is added to a decision that succeeds.

A rule that reaches one table along several paths (say `f()` and `g()` both reading table
`people`) names them all after their common start: the memo shares one failure
between them, so either may be the one that raised.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from . import nodes as n
from .lookups import LookupFailed

if TYPE_CHECKING:
    from .functions import Instance
    from .tablecheck import TableCall

_TABLE = re.compile(r"[a-z_]+\(([^:()]+):")
"""The table in a table lookup's label, as `TableCall.label` writes it: `exists(t: c)`."""


def lookup_paths(exprs: Iterable[n.Expr], instances: Mapping[int, Instance],
                 table_calls: Mapping[int, TableCall]) -> dict[str, str]:
    """Table name → ` → f() → g() → table `t`` for every table the expressions read,
    following function calls into their checked bodies (an explicit stack: chains may be
    150 deep)."""
    paths: dict[str, list[tuple[str, ...]]] = {}
    stack: list[tuple[object, tuple[str, ...]]] = [(expr, ()) for expr in exprs]
    while stack:
        node, chain = stack.pop()
        if isinstance(node, n.Call):
            table = table_calls.get(id(node))
            if table is not None:
                found = paths.setdefault(table.spec.table, [])
                if chain not in found:
                    found.append(chain)
            instance = instances.get(id(node))
            if instance is not None:
                stack.append((instance.body, (*chain, instance.function.name)))
        stack.extend((child, chain) for child in reversed(list(n.children(node))))
    return {table: _describe(table, chains) for table, chains in paths.items()}


def _describe(table: str, chains: list[tuple[str, ...]]) -> str:
    common = 0
    while (all(len(c) > common for c in chains)
           and len({c[common] for c in chains}) == 1):
        common += 1
    steps = [f"{name}()" for name in chains[0][:common]]
    tails = [" → ".join(f"{name}()" for name in c[common:]) for c in chains]
    if len(chains) > 1:
        either = " or ".join(tail or "directly" for tail in tails)
        steps.append(f"({either})" if any("→" in tail for tail in tails) else either)
    return "".join(f" → {step}" for step in [*steps, f"table `{table}`"])


def failure_path(paths: Mapping[str, str], exc: BaseException) -> str:
    """The path text of the table a failed lookup read (`lookup_paths`), or "" when the
    error is not a table lookup's or the rule reads no tables."""
    if not paths or not isinstance(exc, LookupFailed):
        return ""
    match = _TABLE.match(str(exc))
    return paths.get(match.group(1), "") if match else ""
