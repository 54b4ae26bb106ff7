"""Policy-defined functions, `def name(params) = expr`: checked per call, inlined when compiled.

A function is a named expression with parameters.  It has no side effects (the language
has none in expressions), so a call means exactly the body with the arguments in place of
the parameters, and that is how both halves treat it:

* The checker types the body once at the definition, with parameters of unknown type
  (unknown names, arity of inner calls and every other error that does not depend on the
  arguments are reported there, in the body; a call in it takes the callee's definition
  type, unexpanded), and again at every call from a rule or constant, on a fresh copy of
  the body, with the parameters typed as that call's arguments and in the caller's scope
  (stage, lookups allowed or not).  What only fails for these arguments or at this stage
  (`header()` at rcpt, a lookup in an `on error` action, an int where text is needed) is
  reported at the call, pointing into the body.  A function that calls a lookup is thus a
  lookup for the stage and laziness rules, and one that reads `header()` is data-stage only.
* The compiler compiles each call's copy in place of the call, with every parameter bound
  to the argument's compiled closure (or constant): the same closures inline code gives,
  and no per-call cost.  Arguments are evaluated where the body uses them, which is
  observably the same as evaluating them first, because lookups are memoised per decision
  (failures too) and nothing else has effects.

Calls must come after the definition in set order (file-name order, then position), and no
function may reach itself through calls (E152), so inlining always ends.  A budget on the
size one written call expands into (E155) keeps a chain of functions that each call the
next several times from multiplying without bound; it is per call, so a long chain that
expands linearly is never refused because of how many other calls the set has.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any

from . import nodes as n
from . import types as t
from .errors import Diagnostic, Related, Severity, Span
from .inference import Inference, Scope
from .name_checks import ROOT

MAX_INLINED_NODES = 100_000
"""Expression nodes one call written in a rule or constant may expand into,
with the calls inside it (E155 beyond)."""

MAX_EXPANDED_DEPTH = 150
"""Levels of expression nesting a function's body may reach once the calls in it are
expanded (E156 beyond): a chain of about 150 functions each calling the next.  The checker,
the compiler and the closures walk an expansion recursively; with this bound (and E013's 64
levels around a call, also inside a template's `{…}`) the checker, the hungriest, needs
about 830 Python frames at the very worst, inside the default limit of 1,000, in `check` as
in a `serve` reload.  `too_deep` covers what still runs out of frames."""


def too_deep(span: Span, what: str) -> Diagnostic:
    """E156 for a construct that ran out of Python's recursion limit while being checked or
    compiled (the static bound above should make this unreachable): an error, never a
    traceback, and a failed reload keeps the running policies."""
    return Diagnostic("E156", Severity.ERROR, f"{what} nests too deeply to check (more than "
                      "Python's recursion limit allows)", span,
                      "split it with `let` constants or shorter function chains")


@dataclass(frozen=True, slots=True)
class Instance:
    """One call site's own copy of a function body, typed with that call's arguments."""

    function: n.FunctionDef
    body: n.Expr


def clone(node: Any) -> Any:
    """A copy of an expression tree with fresh nodes (new identities), sharing spans and
    literal values: the checker records types by node identity, one set per call site."""
    if isinstance(node, tuple):
        return tuple(clone(item) for item in node)
    if not hasattr(node, "__dataclass_fields__") or isinstance(node, Span):
        return node
    return type(node)(**{f.name: clone(getattr(node, f.name)) for f in fields(node)})


def calls_in(expr: n.Expr) -> Iterable[n.Call]:
    return (node for node in n.walk(expr) if isinstance(node, n.Call))


class Functions:
    """The set's function definitions and, once checked, every call site's instance.

    `clash(name)` names what a function of that name would hide (a field, a built-in, a
    `let`), or gives None."""

    def __init__(self, emit: Callable[[Diagnostic], None],
                 clash: Callable[[str], str | None]) -> None:
        self.emit = emit
        self.clash = clash
        self.defs: dict[str, n.FunctionDef] = {}
        self.instances: dict[int, Instance] = {}
        self.recursive: set[str] = set()
        self.broken: set[str] = set()
        self.checked: set[str] = set()
        self.file_order: dict[str, int] = {}
        self.depth = 0
        """How many call copies are being typed right now (0: a definition or a rule)."""
        self.inlined = 0
        """Nodes the written call being typed has expanded into so far."""
        self.expanded_depth: dict[str, int] = {}
        """Each non-recursive function's nesting depth with its calls expanded."""
        self.expanded_size: dict[str, int] = {}
        """Each non-recursive function's node count with its calls expanded (capped just
        past `MAX_INLINED_NODES`): a call over the budget is refused without expanding it,
        so a chain of functions that each call the previous twice costs linear time."""
        self.over_budget = False
        self.callers: dict[str, set[str]] = {}
        """Who calls each function: the functions whose bodies call it, `ROOT` for calls
        written in rules, constants and settings (`name_checks.unused_functions`)."""
        self.defining = ROOT
        """The function whose own body is being typed (`ROOT`: none).  Calls in it take
        the callee's definition type instead of being expanded (its errors are the
        callee's, reported there; what depends on arguments is reported where a rule or
        constant calls)."""
        self.definition_types: dict[str, t.Type] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.defs

    def signature(self, name: str) -> str:
        return signature(self.defs[name])

    def error(self, code: str, message: str, span: Span, hint: str | None = None,
              related: Related | None = None) -> None:
        self.emit(Diagnostic(code, Severity.ERROR, message, span, hint, related))

    # -- definitions ----------------------------------------------------------------------

    def collect(self, fn: n.FunctionDef) -> None:
        """Register a definition (in load order), reporting duplicates and clashes."""
        first = self.defs.get(fn.name)
        if first is not None:
            self.error("E150", f"function `{fn.name}` is defined twice", fn.name_span,
                       related=Related(first.name_span, "first defined here"))
            return
        clash = self.clash(fn.name)
        if clash is not None:
            self.error("E150", f"function `{fn.name}` would hide {clash} of the same name",
                       fn.name_span, "choose another name")
            return
        seen: dict[str, Span] = {}
        for param, span in zip(fn.params, fn.param_spans, strict=True):
            if param in seen:
                self.error("E151", f"parameter `{param}` of `{fn.name}` is listed twice",
                           span, related=Related(seen[param], "first listed here"))
                self.broken.add(fn.name)
            seen[param] = span
        self.defs[fn.name] = fn

    def resolve(self, files: Iterable[n.PolicyFile]) -> None:
        """Set order, and recursion: every call inside a function that leads back to it
        (directly or through others) is an error, and such functions are not expanded."""
        self.file_order = {f.path: index for index, f in enumerate(files)}
        callees = {name: [c for c in calls_in(fn.body) if c.func in self.defs]
                   for name, fn in self.defs.items()}

        def reaches(start: str, goal: str) -> bool:
            stack, seen = [start], set()
            while stack:
                current = stack.pop()
                if current == goal:
                    return True
                if current not in seen:
                    seen.add(current)
                    stack.extend(c.func for c in callees[current])
            return False

        for name, calls in callees.items():
            for call in calls:
                if call.func == name:
                    self.error("E152", f"function `{name}` calls itself", call.func_span,
                               "functions cannot be recursive; policies have no loops "
                               "besides `any`/`all` over a list")
                elif reaches(call.func, name):
                    self.error("E152", f"function `{name}` calls `{call.func}`, which "
                               f"calls `{name}` again", call.func_span,
                               "functions cannot be recursive, directly or through others",
                               Related(self.defs[call.func].name_span,
                                       f"`{call.func}` is defined here"))
                else:
                    continue
                self.recursive.add(name)
        self._check_depths(callees)

    def _check_depths(self, callees: dict[str, list[n.Call]]) -> None:
        """E156 where a function's expansion first gets deeper than `MAX_EXPANDED_DEPTH`
        (its callers are then refused without more reports).  Callees are measured before
        their callers, with explicit stacks: the chain may be thousands long."""
        depth = self.expanded_depth
        size = self.expanded_size
        deepest: dict[str, n.Call | None] = {}
        for name in self._callees_first(callees):
            own = sum(1 for _ in n.walk(self.defs[name].body))
            size[name] = min(MAX_INLINED_NODES + 1, own + sum(
                size.get(call.func, 0) for call in callees[name]))
            best, via = 0, None
            stack: list[tuple[object, int]] = [(self.defs[name].body, 1)]
            while stack:
                node, level = stack.pop()
                reach = level
                if isinstance(node, n.Call) and node.func in depth:
                    reach = level + depth[node.func]
                if reach > best:
                    best = reach
                    via = node if isinstance(node, n.Call) and node.func in depth else None
                stack.extend((child, level + 1) for child in n.children(node))
            depth[name], deepest[name] = best, via
            if best <= MAX_EXPANDED_DEPTH:
                continue
            self.broken.add(name)
            if via is None or via.func in self.broken:
                continue  # refused already, at the function it calls
            chain = [name]
            while (call := deepest.get(chain[-1])) is not None:
                chain.append(call.func)
            shown = chain if len(chain) <= 6 else [*chain[:3], "…", *chain[-2:]]
            self.error("E156", f"function `{name}` nests more than {MAX_EXPANDED_DEPTH} "
                       f"levels deep once its calls are expanded ({best} levels, through "
                       f"{len(chain)} functions: {' → '.join(shown)})", via.func_span,
                       "call the lower functions directly instead of through a long chain, "
                       "or compute parts once in a `let`",
                       Related(self.defs[via.func].name_span,
                               f"`{via.func}` is {depth[via.func]} levels deep"))

    def _callees_first(self, callees: dict[str, list[n.Call]]) -> list[str]:
        """The non-recursive functions, each after every function it calls."""
        order: list[str] = []
        state: dict[str, bool] = {}  # False: being visited, True: done
        for root in self.defs:
            if root in state or root in self.recursive:
                continue
            state[root] = False
            stack = [(root, iter(callees[root]))]
            while stack:
                name, pending = stack[-1]
                call = next(pending, None)
                if call is None:
                    stack.pop()
                    state[name] = True
                    order.append(name)
                elif call.func not in state and call.func not in self.recursive:
                    state[call.func] = False
                    stack.append((call.func, iter(callees[call.func])))
        return order

    def check_definitions(self, infer: Inference) -> None:
        for name in self.defs:
            try:
                self.definition(name, infer)
            except RecursionError:
                self.broken.add(name)
                infer.emit(too_deep(self.defs[name].name_span, f"function `{name}`"))

    def definition(self, name: str, infer: Inference) -> None:
        """Type the body once with parameters of unknown type; an error there breaks the
        function (its calls are then only checked for arity)."""
        if name in self.checked or name in self.recursive:
            return
        self.checked.add(name)
        fn = self.defs[name]
        scope = Scope(None, "a function", vars=dict.fromkeys(fn.params, t.ANY))
        found: list[Diagnostic] = []
        saved = infer.emit, self.depth, self.inlined, self.defining
        infer.emit, self.depth, self.defining = found.append, 0, name
        try:
            self.definition_types[name] = infer.infer(fn.body, scope)
        finally:
            infer.emit, self.depth, self.inlined, self.defining = saved
        for diagnostic in found:
            infer.emit(diagnostic)
        if any(d.is_error for d in found):
            self.broken.add(name)
        used = {node.name for node in n.walk(fn.body) if isinstance(node, n.Name)}
        for param, span in dict(zip(fn.params, fn.param_spans, strict=True)).items():
            if param not in used:
                infer.emit(Diagnostic("W211", Severity.WARNING,
                                      f"parameter `{param}` of `{name}` is never used", span,
                                      "remove it, or use it in the body"))

    # -- calls ----------------------------------------------------------------------------

    def call(self, infer: Inference, expr: n.Call, arg_types: list[t.Type], scope: Scope
             ) -> t.Type:
        """The type of a call, typing a fresh copy of the body for this call site."""
        fn = self.defs[expr.func]
        if self.depth == 0:  # as written (a call copy's calls are its function's)
            self.callers.setdefault(fn.name, set()).add(self.defining)
        if self.depth == 0 and fn.name not in self.recursive and self._before(expr.span, fn):
            self.error("E153", f"function `{fn.name}` is used before its definition",
                       expr.func_span, "define it above the use, or in a file whose name "
                       "sorts earlier", Related(fn.name_span, "defined here"))
            return t.ANY
        if len(expr.args) != len(fn.params):
            count = len(fn.params)
            self.error("E104", f"`{fn.name}()` takes {count} argument"
                       f"{'s' if count != 1 else ''}, got {len(expr.args)}", expr.span,
                       f"signature: {signature(fn)}", Related(fn.name_span, "defined here"))
            return t.ANY
        if fn.name in self.recursive:
            return t.ANY
        self.definition(fn.name, infer)
        if self.defining != ROOT and self.depth == 0:
            return self.definition_types.get(fn.name, t.ANY)
        if self.depth == 0:  # a call written in the source: its own budget
            self.inlined = 0
            if self.expanded_size.get(fn.name, 0) > MAX_INLINED_NODES:
                self._over_budget(expr)  # known before expanding a single node
                return t.ANY
        if fn.name in self.broken or not self._spend(fn, expr):
            return t.ANY
        body = clone(fn.body)
        inner = Scope(scope.stage, scope.where, scope.allow_request, scope.allow_lookups,
                            dict(zip(fn.params, arg_types, strict=True)))
        found: list[Diagnostic] = []
        saved_emit = infer.emit
        infer.emit = found.append
        self.depth += 1
        try:
            result = infer.infer(body, inner)
        finally:
            infer.emit = saved_emit
            self.depth -= 1
        self.instances[id(expr)] = Instance(fn, body)
        reported: set[tuple[str, str, Span]] = set()
        for diagnostic in found:  # warnings about one use of a general function are noise
            key = (diagnostic.code, diagnostic.message, diagnostic.span)
            if diagnostic.is_error and key not in reported:
                reported.add(key)
                infer.emit(self._at_call(diagnostic, fn, expr, body))
        return result

    def _before(self, span: Span, fn: n.FunctionDef) -> bool:
        def key(s: Span) -> tuple[int, int, int]:
            return self.file_order.get(s.file, -1), s.line, s.column
        return key(span) < key(fn.span)

    def _spend(self, fn: n.FunctionDef, expr: n.Call) -> bool:
        self.inlined += sum(1 for _ in n.walk(fn.body))
        if self.inlined <= MAX_INLINED_NODES:
            return True
        self._over_budget(expr)
        return False

    def _over_budget(self, expr: n.Call) -> None:
        if not self.over_budget:
            self.over_budget = True
            self.error("E155", f"this call expands into more than {MAX_INLINED_NODES} "
                       "expression nodes", expr.span, "a function that calls another several "
                       "times multiplies its size; compute shared parts once in a `let` or "
                       "call fewer functions")

    @staticmethod
    def _at_call(diagnostic: Diagnostic, fn: n.FunctionDef, call: n.Call, body: n.Expr
                 ) -> Diagnostic:
        """A problem of this call's copy, reported at the call (at the argument when it is
        about a parameter itself) and pointing into the body."""
        span = call.span
        for node in n.walk(body):
            if (isinstance(node, n.Name) and node.span == diagnostic.span
                    and node.name in fn.params):
                span = call.args[fn.params.index(node.name)].span
                break
        return Diagnostic(diagnostic.code, Severity.ERROR,
                          f"in `{fn.name}()` called here: {diagnostic.message}", span,
                          diagnostic.hint, Related(diagnostic.span, f"in the body of "
                                                   f"`{fn.name}`"))


def signature(fn: n.FunctionDef) -> str:
    return f"{fn.name}({', '.join(fn.params)})"
