"""Running test cases in-process and comparing each decision with its expectation.

Every case is decided by `runtime.decide` (the function the service calls) with a trace,
against its own in-memory directory, so a case costs a fraction of a millisecond.  The
trace also feeds `Coverage`: for each rule whether its condition was evaluated, matched
and decided, for each `default` whether it decided, and for each `on error` clause whether
its branch was taken.  Decisions run on a frozen clock (`_frozen_clock`): timeouts are a
property of the machine, not of the policy, so they never decide a test case.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .. import nodes as n
from ..decision import Decision, RuleRef
from ..parser import parse
from ..policyset import PolicySet
from ..runtime import decide
from .spec import Case


@dataclass(slots=True)
class Difference:
    field: str
    expected: Any
    actual: Any


@dataclass(slots=True)
class CaseResult:
    case: Case
    status: str  # "passed", "failed" or "error"
    differences: list[Difference] = field(default_factory=list)
    decision: Decision | None = None
    seconds: float = 0.0

    @property
    def message(self) -> str:
        if self.status == "error":
            return self.case.error or "error"
        return "; ".join(f"{d.field}: expected {d.expected!r}, got {d.actual!r}"
                         for d in self.differences)


def actual_values(decision: Decision) -> dict[str, Any]:
    """The decision's values under the names an expectation uses."""
    reply = decision.reply
    return {
        "action": decision.action,
        "status": reply.status if reply else None,
        "enhanced": reply.enhanced if reply else None,
        "message": reply.message if reply else None,
        "message_matches": reply.message if reply else None,
        "rule": decision.rule.name if decision.rule else None,
        "modifications": msgspec.to_builtins(list(decision.modifications)),
        "fallback": decision.fallback,
        "logs": list(decision.logs),
        "dry_run": [hit.rule.name for hit in decision.dry_run],
    }


def compare(expect: dict[str, Any], decision: Decision) -> list[Difference]:
    """The expectation's fields that the decision does not meet, in the file's order."""
    actual = actual_values(decision)
    differences = []
    for key, wanted in expect.items():
        got = actual[key]
        if key == "message_matches":
            if got is None or wanted.search(got) is None:
                differences.append(Difference(key, f"/{wanted.pattern}/", got))
        elif key == "modifications":
            wanted_mods = [dict(m) for m in wanted]
            if wanted_mods != got:
                differences.append(Difference(key, wanted_mods, got))
        elif got != wanted:
            differences.append(Difference(key, wanted, got))
    return differences


def rule_names(policy_set: PolicySet) -> dict[str, str]:
    """Every rule's name in the set, with its stage."""
    return {member.ref.name: stage.name for stage in policy_set.stages.values()
            for rule in stage.rules for member in rule.members or (rule,)}


def unknown_rule(case: Case, names: dict[str, str]) -> str | None:
    """The error for an `expect.rule` (or a name in `expect.dry_run`) naming no rule of the
    set, with where it is written and a close name; or None.  `"default"` names a stage's
    default."""
    for key in ("rule", "dry_run"):
        wanted = case.expect.get(key)
        for name in [wanted] if isinstance(wanted, str) else wanted or []:
            if name in names or (key == "rule" and name == "default"):
                continue
            line, column = case.positions.get(key, (0, 0))
            close = difflib.get_close_matches(str(name), list(names), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            where = f"{case.file}:{line}:{column}: " if line else ""
            return f"{where}`expect.{key}` names no rule of the policy set: `{name}`{hint}"
    return None


def run_cases(policy_set: PolicySet, cases: Iterable[Case],
              coverage: Coverage | None = None,
              clock: Callable[[], float] = time.perf_counter) -> list[CaseResult]:
    results = []
    indexed: set[int] = set()
    names = rule_names(policy_set)
    for case in cases:
        if case.error is None:
            case.error = unknown_rule(case, names)
        if case.error is not None or case.request is None or case.directory is None:
            results.append(CaseResult(case, "error"))
            continue
        require = getattr(case.directory, "require", None)
        if (policy_set.schema is not None and require is not None
                and id(case.directory) not in indexed):  # the tables the set's lookups read
            require(policy_set.schema, policy_set.needs)
            indexed.add(id(case.directory))
        started = clock()
        decision = decide(policy_set, case.request, case.directory, trace=True,
                          clock=_frozen_clock)
        differences = compare(case.expect, decision)
        seconds = clock() - started
        if coverage is not None:
            coverage.record(decision)
        results.append(CaseResult(case, "failed" if differences else "passed", differences,
                                  decision, seconds))
    return results


def _frozen_clock() -> float:
    """The decisions' clock in tests: time never passes, so `lookup_timeout` and the
    `deadline` never fire and a loaded CI machine cannot turn a case into its `on error`
    branch (a result depends on the policy and the rows only)."""
    return 0.0


# ---------------------------------------------------------------------------------------
# Coverage


@dataclass(slots=True)
class CoverageItem:
    """One rule, `default` or `on error` clause, and how often each outcome was seen.

    `needs` are the outcomes that count for coverage: a rule needs `evaluated` and
    `matched`, and `decided` when it can decide (not `continue`, not `dry_run`); a
    `default` needs `decided`; an `on error` clause needs `taken`; a policy function
    (`def`) needs what the rules calling it need, counted when one of them is."""

    kind: str  # "rule", "default", "on error" or "function"
    stage: str
    name: str
    file: str
    line: int
    needs: tuple[str, ...]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def covered(self) -> int:
        return sum(1 for need in self.needs if self.counts.get(need, 0) > 0)

    @property
    def missing(self) -> list[str]:
        return [need for need in self.needs if self.counts.get(need, 0) == 0]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "stage": self.stage, "name": self.name,
                "file": self.file, "line": self.line,
                "counts": {need: self.counts.get(need, 0) for need in self.needs},
                "missing": self.missing}


def _key(ref: RuleRef) -> tuple[str, int, int, str]:
    return (ref.file, ref.line, ref.column, ref.name)


class Coverage:
    """What the cases exercised of one policy set."""

    def __init__(self, policy_set: PolicySet) -> None:
        self.items: list[CoverageItem] = []
        self._rules: dict[tuple, CoverageItem] = {}
        self._on_error: dict[tuple, CoverageItem] = {}
        self._defaults: dict[tuple, CoverageItem] = {}
        self._functions_of: dict[tuple, list[CoverageItem]] = {}
        for stage in policy_set.stages.values():
            for rule in stage.rules:
                for member in rule.members or (rule,):
                    ref = member.ref
                    terminal = member.final is not None and not member.dry_run
                    needs = ("evaluated", "matched", "decided") if terminal else (
                        "evaluated", "matched")
                    item = CoverageItem("rule", stage.name, ref.name, ref.file, ref.line,
                                        needs)
                    self._rules[_key(ref)] = item
                    self.items.append(item)
                    if member.on_error is not None:
                        handler = CoverageItem("on error", stage.name, ref.name, ref.file,
                                               ref.line, ("taken",))
                        self._on_error[_key(ref)] = handler
                        self.items.append(handler)
            if stage.default_ref is not None:
                ref = stage.default_ref
                item = CoverageItem("default", stage.name, "default", ref.file, ref.line,
                                    ("decided",))
                self._defaults[_key(ref)] = item
                self.items.append(item)
        self._add_functions(policy_set)

    def _add_functions(self, policy_set: PolicySet) -> None:
        """One item per policy function (`def`), counted through the rules that call it."""
        terminal = {key for key, item in self._rules.items() if "decided" in item.needs}
        for function, rules in function_callers(policy_set).items():
            needs = ("evaluated", "matched", "decided") if rules & terminal else (
                "evaluated", "matched")
            item = CoverageItem("function", "", function.name, function.span.file,
                                function.span.line, needs)
            self.items.append(item)
            for key in rules:
                self._functions_of.setdefault(key, []).append(item)

    def record(self, decision: Decision) -> None:
        errored: set[tuple] = set()
        for step in decision.trace or ():
            key = _key(step.rule)
            item = self._rules.get(key)
            if item is None:
                continue
            functions = self._functions_of.get(key, ())
            _count(item, "evaluated", *functions)
            if step.outcome in ("matched", "dry run"):
                _count(item, "matched", *functions)
            elif step.outcome == "error":
                errored.add(key)
                handler = self._on_error.get(key)
                if handler is not None:
                    _count(handler, "taken")
        if decision.rule is not None:
            key = _key(decision.rule)
            if key in self._defaults:
                _count(self._defaults[key], "decided")
            elif key in self._rules and key not in errored:
                _count(self._rules[key], "decided", *self._functions_of.get(key, ()))

    @property
    def total(self) -> int:
        return sum(len(item.needs) for item in self.items)

    @property
    def covered(self) -> int:
        return sum(item.covered for item in self.items)

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else 100.0 * self.covered / self.total

    def to_json(self) -> dict[str, Any]:
        return {"percent": round(self.percent, 2), "covered": self.covered,
                "total": self.total, "items": [item.to_json() for item in self.items]}


def _count(item: CoverageItem, outcome: str, *also: CoverageItem) -> None:
    for each in (item, *also):
        if outcome in each.needs:
            each.counts[outcome] = each.counts.get(outcome, 0) + 1


def function_callers(policy_set: PolicySet) -> dict[n.FunctionDef, set[tuple]]:
    """Each policy function and the rules (coverage keys) that call it: directly, through
    other functions, or through `let` constants whose value calls it.

    Functions are inlined into their callers' closures, so a call has no event of its own
    at run time; a function is exercised when a rule that contains it is."""
    files = [parse(source.text, source.name).file for source in policy_set.sources]
    functions: dict[str, n.FunctionDef] = {}
    lets: dict[str, n.Let] = {}
    rules: list[tuple[tuple, n.Rule]] = []
    for file in files:
        for item in file.items if file is not None else ():
            if isinstance(item, n.FunctionDef):
                functions[item.name] = item
            elif isinstance(item, n.Let):
                lets[item.name] = item
            elif isinstance(item, n.StageBlock):
                rules += [((r.span.file, r.span.line, r.span.column, r.name), r)
                          for r in item.items if isinstance(r, n.Rule)]

    def reached(node: object, seen: set[str]) -> set[str]:
        found: set[str] = set()
        for child in n.walk(node):
            name = (child.func if isinstance(child, n.Call) else child.name
                    if isinstance(child, n.Name) else None)
            if name is None or name in seen:
                continue
            if isinstance(child, n.Call) and name in functions:
                seen.add(name)
                found |= {name} | reached(functions[name].body, seen)
            elif isinstance(child, n.Name) and name in lets:
                seen.add(name)
                found |= reached(lets[name].value, seen)
        return found

    callers: dict[n.FunctionDef, set[tuple]] = {f: set() for f in functions.values()}
    for key, rule in rules:
        for name in reached(rule, set()):
            callers[functions[name]].add(key)
    return callers
