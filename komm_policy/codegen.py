"""A stage as one generated Python function: the conditions inlined, no closure per node.

The closure compiler (`compiler`, `rule_compiler`) builds each rule's condition as nested
closures; a decision then pays a Python call per node.  This module turns the same checked
AST into the source text of one function per stage, `run(ctx, policy)`, compiled once with
`compile()`: each rule's condition becomes statements on local variables, functions are
inlined where their parameters are read, quantifiers become `for` loops, and lookups call the
same by-value lookup functions the closures call (`table_lookups`: memo, record, readers,
the slow timed path).  Matches, errors and the default go through `stage_run`, as for the
closure runner, so both have one semantics (a constant decision with nothing else recorded
is built inline as `finish` builds it, `codegen_outcomes`); tests/test_codegen.py checks
them against each other on random policies, and decisions with a trace keep using the
closures.

Safety: no text of the policy ever becomes source.  Every value from the policy (strings,
names, regexes, lists, readers) is bound in the function's namespace under a generated name
(`_k1`, `_k2`, …), and all identifiers in the source are generated.  The one exception is
a row field read, `row.email`: a field name that is a plain ASCII identifier (checked by
`codegen_lookups.ROW_FIELD`) is written as an attribute read, any other goes through `attrgetter`.

Decided per stage when its source is written, not per decision: which lookups skip the
memo (`LookupSite`: a call that runs at most once a decision, alone with its memo tag in
the stage), and whether a constant decision must look for anything else recorded (only
a stage with statements, dry runs or `on error continue` can record logs, modifications,
dry-run hits or errors).

Order and laziness are those of the closures: operands run in the order the closures run
them, an `and`/`or` side only when needed (an error on one side is forgiven when the other
decides), an argument where the body reads it.  A condition this module cannot generate
(`Unsupported`) is called as its closure; a stage whose source Python refuses (too deeply
nested) runs on closures whole.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from . import nodes as n
from .codegen_compare import CompareGenerating, Unsupported, Val, chain_is_or
from .codegen_lookups import field_read, row_field_read, table_lookup
from .codegen_outcomes import default_lines, matched_lines
from .fusion import first_affix
from .lookups import DeadlineExceeded
from .operators import index_value
from .program import CONTINUE, CompiledStage, Const
from .stage_run import rule_failed
from .table_lookups import LookupSite, Sites, settle_sites
from .text import to_text

STAGE_LINES = 10_000
"""Generated lines per stage after which the remaining rules call their closures: Python's
`compile()` costs ~15 µs a line (with `codegen_lookups.INLINE_LOOKUPS`, 1,000 rules with
three lookups each no longer take 3 s to load); the first rules, which every decision
reaches, stay generated."""

MEMO_CHOICE = re.compile(r"\x00memo(\d+)\x00")
"""A statement that depends on a lookup site's memo flag, in a stage's lines until the
stage's sites are settled (`StageGenerator.memo_choice`)."""


class StageGenerator(CompareGenerating):
    """Generates the functions of one compiled policy set's stages.  `compiler` is the
    closure compiler (types, fields, lets, built-ins, the closure of a rule to fall back
    on); table lookups register in `sites`, their own registry (`table_lookups.Sites`)."""

    def __init__(self, compiler: Any, sites: Sites) -> None:
        self.c = compiler
        self.all_sites = sites
        self.sites: Sites = {}
        """The current stage's lookup calls: one decision runs one stage, so a call alone
        with its memo tag in the stage, and not repeated, needs no memo."""
        self.choices: list[tuple[LookupSite, str, str]] = []
        self.extras = True
        """The stage can record more than lookups (statements, dry runs, errors)."""
        self.ns: dict[str, Any] = {}
        self.lines: list[str] = []
        self.pad = ""
        self.count = 0
        self.locals: dict[str, str] = {}  # quantifier variables in scope → local names
        # inside an inlined body: parameter → (argument, the caller's locals and params)
        self.params: dict[str, tuple[n.Expr, dict, dict]] = {}
        self.depth = 0
        self.arguments = 0
        self.inlined = 0  # lookups written inline in the stage so far
        self.normalised: set[str] = set()  # locals holding `sender` or `rcpt` as read

    # -- plumbing -------------------------------------------------------------------------

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"_{prefix}{self.count}"

    def bind(self, value: Any) -> str:
        key = self.name("k")
        self.ns[key] = value
        return key

    def emit(self, line: str) -> None:
        self.lines.append(self.pad + line)

    def capture(self, fn: Callable[..., Any], *args: Any) -> tuple[list[str], Any]:
        """Run `fn` with its emitted lines collected apart (indented from zero)."""
        saved = self.lines, self.pad
        self.lines, self.pad = [], ""
        try:
            return self.lines, fn(*args)
        finally:
            self.lines, self.pad = saved

    def splice(self, lines: list[str], extra: str = "") -> None:
        self.lines.extend(self.pad + extra + line for line in lines)

    def atom(self, val: Val) -> str:
        return val[0] if val[0] is not None else self.bind(val[1])

    def memo_choice(self, site: LookupSite, memo: str, without: str) -> str:
        """A placeholder for the statement `memo` or, if `site` needs no memo,
        `without`: settled once every lookup of the stage is known."""
        self.choices.append((site, memo, without))
        return f"\x00memo{len(self.choices) - 1}\x00"

    def _choose(self, match: re.Match[str]) -> str:
        site, memo, without = self.choices[int(match.group(1))]
        return memo if site.memo else without

    def tmp(self, code: str) -> Val:
        local = self.name("t")
        self.emit(f"{local} = {code}")
        return local, None

    # -- stages ---------------------------------------------------------------------------

    def stage(self, stage: CompiledStage, asts: dict[int, n.Rule]) -> CompiledStage:
        """`stage` with its generated `run` (unchanged when Python refuses the source)."""
        self.lines, self.pad, self.inlined = [], "    ", 0
        self.sites, self.choices = {}, []
        holder = self.bind(None)
        name, failed = self.bind(stage.name), self.bind(rule_failed)
        rules = [rule for _, step in stage.steps for rule in (step, *(step.members or ()))]
        statements = any(rule.statements for rule in rules)
        self.extras = any(rule.statements or rule.dry_run or rule.on_error is CONTINUE
                          for rule in rules)
        self.emit("mods = []" if statements else "mods = ()")  # only statements add to it
        for cond, rule in stage.steps:
            lines, val = self.condition(asts.get(id(rule)), cond,
                                        len(self.lines) < STAGE_LINES)
            if val[0] is None and not val[1]:
                continue  # never true: the rule cannot match (nor fail)
            grouped = rule.members is not None
            ref = self.bind(rule)
            target = "rule" if grouped else ref
            if grouped:
                self.emit(f"rule = {ref}")
            self.emit("try:")
            self.splice(lines, "    ")
            self.emit(f"    if {self.atom(val)}:")
            if grouped:
                members = self.bind(rule.members)
                self.emit(f"        rule = {members}[{val[0]} - 1]")
            self.splice(matched_lines(self, name, rule, target), "        ")
            self.emit("except Exception as _e:")
            self.emit(f"    _d = {failed}(ctx, policy, {name}, {target}, mods, _e)")
            self.emit("    if _d is not None:")
            self.emit("        return _d")
        self.splice(default_lines(self, name, stage, holder))
        # the rules' statements and texts run as closures: their lookups are calls too
        settle_sites(self.sites, frozenset().union(
            *(self.c.action_tags.get(id(rule), ()) for rule in rules)))
        for tag, calls in self.sites.items():
            self.all_sites.setdefault(tag, []).extend(calls)
        source = MEMO_CHOICE.sub(self._choose, "def run(ctx, policy):\n"
                                 + "\n".join(self.lines) + "\n")
        try:
            code = compile(source, "<komm-policy generated stage>", "exec")
        except (SyntaxError, RecursionError, MemoryError, ValueError):
            return stage  # e.g. more nested blocks than Python allows: closures
        namespace = dict(self.ns)
        exec(code, namespace)  # generated source, no policy text (see the module docstring)
        namespace["run"].source = source  # for reading and profiling: `stage.run.source`
        result = CompiledStage(stage.name, stage.rules, stage.default, stage.default_ref,
                               stage.steps, namespace["run"])
        namespace[holder] = result
        self.ns.clear()
        return result

    def condition(self, ast: n.Rule | None, cond: Any, generate: bool
                  ) -> tuple[list[str], Val]:
        """A step's condition: generated from the rule, or a call of its closure (a fused
        group, a rule this module does not generate or that is past the budget)."""
        if ast is not None:
            self.locals, self.params, self.depth, self.arguments = {}, {}, 0, 0
            if generate:
                try:
                    return self.capture(self.expr, ast.when)
                except (Unsupported, RecursionError):
                    pass
            saved, self.c.sites = self.c.sites, self.sites  # its lookups share our memo
            try:
                compiled = self.c.expr(ast.when)
            finally:
                self.c.sites = saved
            if isinstance(compiled, Const):
                return [], (None, compiled.value)
            cond = compiled
        fused = getattr(cond, "fused", None)
        if fused is not None:
            return self.capture(self._fused, *fused)
        return self.capture(lambda: self.tmp(f"{self.bind(cond)}(ctx)"))

    def _fused(self, get: Any, values: Any, method: Any) -> Val:
        """A fused group's condition (`fusion`): the member's 1-based position or 0."""
        value = self._field(get)[0]
        if method is None:
            return self.tmp(f"{self.bind(values)}({value}, 0)")
        local, bound, affixes = self.name("t"), self.bind(method), self.bind(values)
        self.emit(f"{local} = {self.bind(first_affix)}({bound}, {value}, {affixes}) "
                  f"if {bound}({value}, {affixes}) else 0")
        return local, None

    # -- expressions ----------------------------------------------------------------------

    def expr(self, expr: n.Expr) -> Val:
        method = getattr(self, f"_{type(expr).__name__}", None)
        if method is None:
            raise Unsupported(type(expr).__name__)
        return method(expr)

    def _Literal(self, expr: n.Literal) -> Val:
        return None, self.c._Literal(expr).value

    def _Template(self, expr: n.Template) -> Val:
        parts = [p if isinstance(p, str) else self.expr(p) for p in expr.parts]
        if all(isinstance(p, str) or p[0] is None for p in parts):
            return None, "".join(p if isinstance(p, str) else to_text(p[1]) for p in parts)
        text = self.bind(to_text)
        pieces = []
        for part in parts:
            if isinstance(part, str) or part[0] is None:
                pieces.append(self.bind(part if isinstance(part, str) else to_text(part[1])))
            else:
                pieces.append(self.tmp(f"{text}({part[0]})")[0])
        return self.tmp(f"''.join(({', '.join(pieces)},))")

    def _Name(self, expr: n.Name) -> Val:
        name = expr.name
        if name in self.locals:
            return self.locals[name], None
        if name in self.params:
            return self._argument(name)
        if name in self.c.analysis.lets:
            return None, self.c.let_value(name).value
        return self._field(self.c.field_refs[id(expr)].get)

    def _field(self, get: Any) -> Val:
        return field_read(self, get) or self.tmp(f"{self.bind(get)}(ctx)")

    def _argument(self, name: str) -> Val:
        """A parameter read: its argument, evaluated here in the caller's scope."""
        arg, caller_locals, caller_params = self.params[name]
        saved = self.locals, self.params
        self.locals, self.params = caller_locals, caller_params
        self.arguments += 1  # a parameter read twice runs its argument twice: memo
        try:
            return self.expr(arg)
        finally:
            self.arguments -= 1
            self.locals, self.params = saved

    def _Attr(self, expr: n.Attr) -> Val:
        field_ = self.c.field_refs.get(id(expr))
        if field_ is not None:
            return self._field(field_.get)
        obj = self.expr(expr.obj)
        getter = operator.attrgetter(expr.name)
        if obj[0] is None:
            return None, None if obj[1] is None else getter(obj[1])
        return row_field_read(self, obj[0], expr.name, getter)

    def _Index(self, expr: n.Index) -> Val:
        obj, idx = self.expr(expr.obj), self.expr(expr.index)
        if obj[0] is None and idx[0] is None:
            return None, index_value(obj[1], idx[1])
        return self.tmp(f"{self.bind(index_value)}({self.atom(obj)}, {self.atom(idx)})")

    def _ListExpr(self, expr: n.ListExpr) -> Val:
        items = [self.expr(item) for item in expr.items]
        if all(i[0] is None for i in items):
            return None, tuple(i[1] for i in items)
        return self.tmp(f"[{', '.join(self.atom(i) for i in items)}]")

    def _Not(self, expr: n.Not) -> Val:
        if isinstance(expr.operand, n.Compare):
            return self._Compare(expr.operand, negate=True)
        operand = self.expr(expr.operand)
        if operand[0] is None:
            return None, not operand[1]
        return self.tmp(f"not {operand[0]}")

    def _BoolOp(self, expr: n.BoolOp) -> Val:
        short = chain_is_or(expr)  # raises Unsupported past MAX_CHAIN operands
        runtime: list[tuple[list[str], Val]] = []
        for operand in expr.operands:
            lines, val = self.capture(self.expr, operand)
            if val[0] is None:
                if bool(val[1]) is short:
                    return None, short
                continue
            runtime.append((lines, val))
        if not runtime:
            return None, not short
        target = self.name("t")
        self._chain(runtime, short, target)
        return target, None

    def _chain(self, operands: list[tuple[list[str], Val]], short: bool, target: str) -> None:
        """`operands[0] and/or (the rest)`, as `operators.both`/`either` evaluate it."""
        (lines, val), rest = operands[0], operands[1:]
        if not rest:
            self.splice(lines)
            self.emit(f"{target} = {val[0]}")
            return
        error, caught = self.name("e"), self.name("x")
        self.emit(f"{error} = None")
        self.emit("try:")
        self.splice(lines, "    ")
        self.emit(f"except {self.bind(DeadlineExceeded)}:")
        self.emit("    raise")
        self.emit(f"except Exception as {caught}:")
        self.emit(f"    {error} = {caught}")
        test = val[0] if short else f"not {val[0]}"
        self.emit(f"if {error} is None and {test}:")
        self.emit(f"    {target} = {short}")
        self.emit("else:")
        self.pad += "    "
        right = self.name("t")
        self._chain(rest, short, right)
        self.emit(f"if {right if short else 'not ' + right}:")
        self.emit(f"    {target} = {short}")
        self.emit(f"elif {error} is not None:")
        self.emit(f"    raise {error}")
        self.emit("else:")
        self.emit(f"    {target} = {not short}")
        self.pad = self.pad[:-4]

    def _Quantifier(self, expr: n.Quantifier) -> Val:
        iterable = self.atom(self.expr(expr.iterable))
        var = self.name("q")
        saved = self.locals
        self.locals = {**saved, expr.var: var}
        self.depth += 1
        try:
            lines, body = self.capture(self.expr, expr.body)
        finally:
            self.depth -= 1
            self.locals = saved
        want = expr.kind == "any"
        target = self.name("t")
        self.emit(f"{target} = {not want}")
        self.emit(f"for {var} in {iterable} or ():")
        self.splice(lines, "    ")
        self.emit(f"    if {'' if want else 'not '}{self.atom(body)}:")
        self.emit(f"        {target} = {want}")
        self.emit("        break")
        return target, None

    def _Call(self, expr: n.Call) -> Val:
        instance = self.c.analysis.instances.get(id(expr))
        if instance is not None:
            caller = (self.locals, self.params)
            saved = self.locals, self.params
            self.locals = {}
            self.params = {p: (a, *caller) for p, a in zip(instance.function.params,
                                                             expr.args, strict=True)}
            try:
                return self.expr(instance.body)
            finally:
                self.locals, self.params = saved
        builtin = self.c.builtins[expr.func]
        if builtin.kind == "table":
            return table_lookup(self, expr, builtin)
        args = [self.expr(a) for a in expr.args]
        optional = any(self.c.type_of(a).optional for a in expr.args)
        none = builtin.none_result
        if builtin.kind == "pure" and all(a[0] is None for a in args):
            values = [a[1] for a in args]
            return None, none if any(v is None for v in values) else builtin.impl(*values)
        impl = self.bind(builtin.impl)
        atoms = [self.atom(a) for a in args]
        if builtin.kind == "request":
            (a,) = atoms
            return self.tmp(f"{self.bind(none)} if {a} is None else {impl}(ctx, {a})")
        if len(atoms) == 1 and not optional:
            return self.tmp(f"{impl}({atoms[0]})")
        if not atoms:
            return self.tmp(f"{impl}()")
        return self.tmp(f"{self.bind(none)} if None in ({', '.join(atoms)},) "
                        f"else {impl}({', '.join(atoms)})")
