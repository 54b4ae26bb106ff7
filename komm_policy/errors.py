"""Positions, diagnostics and the error types every stage of the pipeline reports with.

Everything an operator sees about a policy (syntax errors, checker findings, load problems)
is a `Diagnostic`: a stable code, a severity, a span and a message, optionally a hint and a
related location.  Rendering adds the source line and a caret, so messages read the same
whether they come from the parser or from the checker.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    """A 1-based source range; `end_column` is exclusive, as in Lark's `meta`."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    @classmethod
    def point(cls, file: str, line: int, column: int) -> Span:
        return cls(file, line, column, line, column + 1)


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Related:
    """A second location a diagnostic refers to ("first defined here")."""

    span: Span
    message: str


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    span: Span
    hint: str | None = None
    related: Related | None = field(default=None)

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def __str__(self) -> str:
        return f"{self.span}: {self.severity} {self.code}: {self.message}"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "code": self.code,
            "severity": str(self.severity),
            "message": self.message,
            "file": self.span.file,
            "line": self.span.line,
            "column": self.span.column,
            "end_line": self.span.end_line,
            "end_column": self.span.end_column,
        }
        if self.hint:
            out["hint"] = self.hint
        if self.related:
            out["related"] = {
                "message": self.related.message,
                "file": self.related.span.file,
                "line": self.related.span.line,
                "column": self.related.span.column,
            }
        return out


def source_excerpt(text: str, span: Span) -> str:
    """The span's source line with a caret underline, numbered like a compiler would."""
    lines = text.split("\n")
    if not 1 <= span.line <= len(lines):
        return ""
    line = lines[span.line - 1].rstrip("\r").expandtabs(1)
    start = max(span.column, 1)
    same_line = span.end_line == span.line and span.end_column > start
    width = span.end_column - start if same_line else 1
    width = max(1, min(width, max(len(line) - start + 1, 1)))
    number = str(span.line)
    pad = " " * len(number)
    underline = " " * (start - 1) + "^" + "~" * (width - 1)
    return f" {number} | {line}\n {pad} | {underline}"


def render(diagnostic: Diagnostic, text: str | None) -> str:
    """`file:line:col: severity CODE: message`, the source line with a caret, hint, related."""
    parts = [str(diagnostic)]
    if text is not None:
        excerpt = source_excerpt(text, diagnostic.span)
        if excerpt:
            parts.append(excerpt)
    if diagnostic.hint:
        parts.append(f"  = help: {diagnostic.hint}")
    if diagnostic.related:
        parts.append(f"  = note: {diagnostic.related.span}: {diagnostic.related.message}")
    return "\n".join(parts)


class PolicyError(Exception):
    """Raised when a policy set cannot be loaded; carries every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic] | tuple[Diagnostic, ...]) -> None:
        self.diagnostics = tuple(diagnostics)
        first = next((d for d in self.diagnostics if d.is_error), None)
        summary = str(first) if first else "policy set has errors"
        more = len([d for d in self.diagnostics if d.is_error]) - 1
        if more > 0:
            summary += f" (and {more} more error{'s' if more > 1 else ''})"
        super().__init__(summary)
