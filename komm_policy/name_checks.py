"""Warnings about the names of policy-defined functions and local variables.

* **W212, a function nothing calls**: a `def` that no rule, `let`, setting or default
  calls, directly or through functions that are themselves called.  Only functions
  defined in a file that holds rules (a `stage` block) are warned about: a file without
  any is a *library* (like the shipped `00-directory.policy`), whose functions are there
  for rules to use or not (`komm-policy test --coverage` lists those never evaluated).
* **W213, a local name that shadows another**: a function parameter or an `any`/`all`
  variable named like something else the expression could mean — an enclosing parameter
  or variable, a request field or namespace, a built-in (a table lookup among them) or a
  policy-defined function.  Inside its scope the name means the local (a call `f(…)`
  still calls the function, but a reader cannot tell at a glance).  A `let` constant of
  the same name is not reported: constants are the operator's, set-wide, and a library
  file's locals should not warn about them.

`Functions` records which function calls which while the checker types the set
(`callers`); the checker calls `unused_functions` at the end, and `Inference` and
`Functions` call `shadowed` at each binding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from . import nodes as n
from .errors import Diagnostic, Severity, Span
from .fields import NAMESPACES

ROOT = ""
"""The caller recorded for a call written outside any function (a rule, `let`, setting)."""


def unused_functions(files: Sequence[n.PolicyFile], defs: Mapping[str, n.FunctionDef],
                     callers: Mapping[str, set[str]]) -> list[Diagnostic]:
    """W212 for each function of a rules file that no rule reaches through calls."""
    callees: dict[str, set[str]] = {}
    for callee, by in callers.items():
        for caller in by:
            callees.setdefault(caller, set()).add(callee)
    reached: set[str] = set()
    stack = [ROOT]
    while stack:
        for callee in callees.get(stack.pop(), ()):
            if callee not in reached:
                reached.add(callee)
                stack.append(callee)
    rule_files = {f.path for f in files
                  if any(isinstance(item, n.StageBlock) for item in f.items)}
    found = []
    for name, fn in defs.items():
        if name in reached or fn.span.file not in rule_files:
            continue
        by = sorted(c for c in callers.get(name, ()) if c != ROOT)
        message = (f"function `{name}` is never called" if not by else
                   f"function `{name}` is only called by functions that are never called "
                   f"({', '.join(f'`{c}`' for c in by)})")
        found.append(Diagnostic(
            "W212", Severity.WARNING, message, fn.name_span,
            "remove it, call it from a rule, or define it in a library file (one without "
            "`stage` blocks), whose functions may go unused"))
    return found


def shadowed(name: str, outer: Iterable[str], fields: Iterable[str],
             builtins: Mapping[str, object], functions: Callable[[str], bool]) -> str | None:
    """What a local called `name` would hide, in words, or None."""
    if name in outer:
        return f"the enclosing variable `{name}`"
    if name in NAMESPACES:
        return f"the request fields `{name}.…`"
    if name in fields:
        return f"the request field `{name}`"
    builtin = builtins.get(name)
    if builtin is not None:
        kind = "table lookup" if getattr(builtin, "kind", None) == "table" else "built-in"
        return f"the {kind} `{name}()`"
    if functions(name):
        return f"the function `{name}()`"
    return None


def shadowing(what: str, name: str, span: Span, hidden: str) -> Diagnostic:
    """W213 for `what` (e.g. "parameter `x` of `f`") hiding `hidden`."""
    return Diagnostic("W213", Severity.WARNING, f"{what} shadows {hidden}", span,
                      f"inside its scope `{name}` means the {what.split(' ', 1)[0]}; "
                      "choose another name")
