"""`komm-policy test` output: text with an expected-vs-actual diff per failure, JSON, and
JUnit XML (the `testsuites`/`testsuite`/`testcase`/`failure`/`error` elements CI systems
read, one suite per test file), each optionally with coverage.  Names, values and
messages in text and XML go through `text.shown`: a control character in a case name or
a value is written as an escape, so the XML stays well-formed (XML 1.0 forbids most C0
controls even as character references) and the terminal shows what the file holds."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ..text import shown
from .runner import CaseResult, Coverage


@dataclass(slots=True)
class Run:
    """Everything one `komm-policy test` run found."""

    results: list[CaseResult] = field(default_factory=list)
    file_errors: list[str] = field(default_factory=list)
    """Test files that could not be read as tests (`file:line: message`)."""
    coverage: Coverage | None = None
    threshold: float | None = None
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def below_threshold(self) -> bool:
        return (self.threshold is not None and self.coverage is not None
                and self.coverage.percent + 1e-9 < self.threshold)

    @property
    def ok(self) -> bool:
        return (not self.file_errors and self.count("failed") == 0
                and self.count("error") == 0 and not self.below_threshold)


def _value(field: str, value: Any, expected: bool) -> str:
    if field == "message_matches" and expected:
        return str(value)  # already written as /pattern/
    return json.dumps(value, ensure_ascii=False)


def describe(result: CaseResult) -> list[str]:
    """The failure's lines: `- field: expected` / `+ field: actual`, then the decision."""
    if result.status == "error":
        return [f"error: {result.case.error}"]
    lines = []
    for difference in result.differences:
        name = difference.field
        lines.append(f"- {name}: {_value(name, difference.expected, True)}")
        lines.append(f"+ {name}: {_value(name, difference.actual, False)}")
    decision = result.decision
    if decision is not None:
        summary = f"decision: {decision.action}"
        if decision.reply:
            summary += f" {decision.reply}"
        if decision.rule:
            summary += f" by {decision.rule}"
        if decision.cause:
            summary += f" (fallback: {decision.cause})"
        lines.append(summary)
    return lines


def write_text(run: Run, out: TextIO, *, verbose: bool = False) -> None:
    for error in run.file_errors:
        print(f"ERROR {shown(error)}", file=out)
    for result in run.results:
        if result.status == "passed":
            if verbose:
                print(f"ok    {shown(result.case.title)}", file=out)
            continue
        label = "FAIL " if result.status == "failed" else "ERROR"
        print(f"{label} {shown(result.case.title)}", file=out)
        for line in describe(result):
            print(f"      {shown(line)}", file=out)
    if run.coverage is not None:
        write_coverage_text(run, out, verbose=verbose)
    total = len(run.results)
    deciding = sum(r.seconds for r in run.results)
    rate = f" ({total / deciding:.0f} cases/s deciding)" if deciding > 0 else ""
    summary = (f"{run.count('passed')} passed, {run.count('failed')} failed, "
               f"{run.count('error') + len(run.file_errors)} errors "
               f"in {run.seconds:.3f} s{rate}")
    print(summary, file=out)
    if run.below_threshold:
        assert run.coverage is not None and run.threshold is not None
        print(f"coverage {run.coverage.percent:.1f}% is below the threshold "
              f"{run.threshold:g}%", file=out)


def write_coverage_text(run: Run, out: TextIO, *, verbose: bool = False) -> None:
    coverage = run.coverage
    assert coverage is not None
    print(f"coverage: {coverage.percent:.1f}% ({coverage.covered}/{coverage.total} "
          "outcomes)", file=out)
    for item in coverage.items:
        if item.missing or verbose:
            counts = "  ".join(f"{need} {item.counts.get(need, 0)}" for need in item.needs)
            where = f"{item.file}:{item.line}"
            name = {"rule": item.name, "default": "default",
                    "function": f"{item.name}() (function)"}.get(
                item.kind, f"{item.name} (on error)")
            flag = f"  never {', '.join(item.missing)}" if item.missing else ""
            print(f"  {where:<34} {item.stage:<7} {name:<34} {counts}{flag}", file=out)


def write_json(run: Run, out: TextIO) -> None:
    cases = []
    for result in run.results:
        case = result.case
        entry: dict[str, Any] = {"file": case.file, "line": case.line, "name": case.name,
                                 "status": result.status,
                                 "seconds": round(result.seconds, 6)}
        if result.status == "error":
            entry["error"] = case.error
        if result.differences:
            entry["differences"] = [{"field": d.field, "expected": d.expected,
                                     "actual": d.actual} for d in result.differences]
        cases.append(entry)
    document: dict[str, Any] = {
        "ok": run.ok, "passed": run.count("passed"), "failed": run.count("failed"),
        "errors": run.count("error") + len(run.file_errors), "file_errors": run.file_errors,
        "seconds": round(run.seconds, 6), "cases": cases,
    }
    if run.coverage is not None:
        document["coverage"] = run.coverage.to_json()
        document["threshold"] = run.threshold
    json.dump(document, out, indent=2, ensure_ascii=False, default=str)
    out.write("\n")


def write_junit(run: Run, out: TextIO) -> None:
    root = ET.Element("testsuites", name="komm-policy test")
    suites: dict[str, list[CaseResult]] = {}
    for result in run.results:
        suites.setdefault(result.case.file, []).append(result)
    for file, results in suites.items():
        suite = ET.SubElement(root, "testsuite", name=shown(file), tests=str(len(results)),
                              failures=str(sum(r.status == "failed" for r in results)),
                              errors=str(sum(r.status == "error" for r in results)),
                              time=f"{sum(r.seconds for r in results):.6f}")
        for result in results:
            element = ET.SubElement(suite, "testcase", name=shown(result.case.name),
                                    classname=_classname(file), file=shown(file),
                                    line=str(result.case.line), time=f"{result.seconds:.6f}")
            if result.status != "passed":
                tag = "failure" if result.status == "failed" else "error"
                child = ET.SubElement(element, tag, message=shown(result.message))
                child.text = "\n".join(shown(line) for line in describe(result))
    for error in run.file_errors:
        file = error.split(":", 1)[0]
        suite = ET.SubElement(root, "testsuite", name=shown(file), tests="1",
                              failures="0", errors="1", time="0")
        element = ET.SubElement(suite, "testcase", name="(test file)",
                                classname=_classname(file))
        ET.SubElement(element, "error", message=shown(error)).text = shown(error)
    if run.coverage is not None:
        properties = ET.SubElement(root, "properties")
        ET.SubElement(properties, "property", name="coverage",
                      value=f"{run.coverage.percent:.2f}")
    _totals(root, run)
    ET.indent(root)
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
    out.write(ET.tostring(root, encoding="unicode"))
    out.write("\n")


def _totals(root: ET.Element, run: Run) -> None:
    root.set("tests", str(len(run.results) + len(run.file_errors)))
    root.set("failures", str(run.count("failed")))
    root.set("errors", str(run.count("error") + len(run.file_errors)))
    root.set("time", f"{run.seconds:.6f}")


def _classname(file: str) -> str:
    name = file.replace("\\", "/").rsplit("/", 1)[-1]
    return shown(name.removesuffix(".toml").replace(".", "_"))


def write(run: Run, out: TextIO, format: str, *, verbose: bool = False) -> None:
    if format == "json":
        write_json(run, out)
    elif format == "junit":
        write_junit(run, out)
    else:
        write_text(run, out, verbose=verbose)


__all__: Sequence[str] = ("Run", "describe", "write")
