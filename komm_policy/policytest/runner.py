"""Running test cases in-process and comparing each decision with its expectation.

Every case is decided by `runtime.decide` (the function the service calls) with a trace,
against its own in-memory directory, so a case costs a fraction of a millisecond.  The
trace also feeds `Coverage`: for each rule whether its condition was evaluated, matched
and decided, for each `default` whether it decided, and for each `on error` clause whether
its branch was taken.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..decision import Decision, RuleRef
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


def run_cases(policy_set: PolicySet, cases: Iterable[Case],
              coverage: Coverage | None = None,
              clock: Callable[[], float] = time.perf_counter) -> list[CaseResult]:
    results = []
    for case in cases:
        if case.error is not None or case.request is None or case.directory is None:
            results.append(CaseResult(case, "error"))
            continue
        started = clock()
        decision = decide(policy_set, case.request, case.directory, trace=True)
        differences = compare(case.expect, decision)
        seconds = clock() - started
        if coverage is not None:
            coverage.record(decision)
        results.append(CaseResult(case, "failed" if differences else "passed", differences,
                                  decision, seconds))
    return results


# ---------------------------------------------------------------------------------------
# Coverage


@dataclass(slots=True)
class CoverageItem:
    """One rule, `default` or `on error` clause, and how often each outcome was seen.

    `needs` are the outcomes that count for coverage: a rule needs `evaluated` and
    `matched`, and `decided` when it can decide (not `continue`, not `dry_run`); a
    `default` needs `decided`; an `on error` clause needs `taken`."""

    kind: str  # "rule", "default" or "on error"
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

    def record(self, decision: Decision) -> None:
        errored: set[tuple] = set()
        for step in decision.trace or ():
            key = _key(step.rule)
            item = self._rules.get(key)
            if item is None:
                continue
            _count(item, "evaluated")
            if step.outcome in ("matched", "dry run"):
                _count(item, "matched")
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
                _count(self._rules[key], "decided")

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


def _count(item: CoverageItem, outcome: str) -> None:
    item.counts[outcome] = item.counts.get(outcome, 0) + 1
