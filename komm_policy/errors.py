"""Positions, diagnostics and the error types every stage of the pipeline reports with.

Everything an operator sees about a policy (syntax errors, checker findings, load problems)
is a `Diagnostic`: a stable code, a severity, a span and a message, optionally a hint and a
related location.  Rendering adds the source line and a caret, so messages read the same
whether they come from the parser or from the checker.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from .text import shown, shown_in_place


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


# A word (a run without spaces) longer than this in a message or hint is shortened.
QUOTED_WIDTH = 80
_LONG_WORD = re.compile(r"\S{" + str(QUOTED_WIDTH + 1) + ",}")


def shorten_quoted(text: str) -> str:
    """`text` with every word over `QUOTED_WIDTH` characters cut to its first and last
    characters around `…` (its length in characters is added): a quoted multi-megabyte
    literal or name becomes one short word."""
    def cut(match: re.Match[str]) -> str:
        word = match.group(0)
        return f"{word[:QUOTED_WIDTH - 20]}…{word[-8:]} ({len(word)} characters)"
    return _LONG_WORD.sub(cut, text)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    span: Span
    hint: str | None = None
    related: Related | None = field(default=None)

    def __post_init__(self) -> None:
        # Messages quote names and values from the source; a multi-megabyte one is shown
        # shortened, so a diagnostic stays a few lines whatever the policy holds.
        object.__setattr__(self, "message", shorten_quoted(self.message))
        if self.hint:
            object.__setattr__(self, "hint", shorten_quoted(self.hint))

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def __str__(self) -> str:
        # Shown like `render` shows it (controls escaped): the same one line in a log, an
        # exception's text and a report, and never a raw control on a terminal.
        return shown(f"{self.span}: {self.severity} {self.code}: {self.message}")

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


# The widest excerpt of one source line a diagnostic shows, in characters; a longer line
# (a multi-megabyte string literal) is shown as a window around the span, cut with `…`.
EXCERPT_WIDTH = 100
_BEFORE = 40  # characters of context kept left of the span in a cut line


def _source_line(text: str, number: int) -> str | None:
    """Line `number` (1-based) of `text`, found without splitting the whole text."""
    start = 0
    for _ in range(number - 1):
        start = text.find("\n", start) + 1
        if start == 0:
            return None
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def source_excerpt(text: str, span: Span) -> str:
    """The span's source line with a caret underline, numbered like a compiler would.

    A line longer than `EXCERPT_WIDTH` characters is cut to a window around the span's
    start, with `…` where text was left out; the caret still points at the span.  The
    excerpt is at most about 2 × `EXCERPT_WIDTH` characters whatever the line's length.
    """
    if span.line < 1:
        return ""
    raw = _source_line(text, span.line)
    if raw is None:
        return ""
    start = max(span.column, 1)
    same_line = span.end_line == span.line and span.end_column > start
    width = span.end_column - start if same_line else 1
    line = raw.rstrip("\r")
    if len(line) > EXCERPT_WIDTH:
        first = max(0, min(start - 1 - _BEFORE, len(line) - EXCERPT_WIDTH))
        last = first + EXCERPT_WIDTH
        prefix = "…" if first > 0 else ""
        suffix = "…" if last < len(line) else ""
        line = prefix + line[first:last] + suffix
        start = start - first + len(prefix)
        width = min(width, last - (span.column - 1))
    line = shown_in_place(line.expandtabs(1))
    width = max(1, min(width, max(len(line) - start + 1, 1)))
    number = str(span.line)
    pad = " " * len(number)
    underline = " " * (start - 1) + "^" + "~" * (width - 1)
    return f" {number} | {line}\n {pad} | {underline}"


def render(diagnostic: Diagnostic, text: str | None) -> str:
    """`file:line:col: severity CODE: message`, the source line with a caret, hint, related.

    Controls in the message, hint and note are escaped (`text.shown`): a header name
    `"X-A\\n"` reads as `X-A\\n` on one line; in the source line each becomes `?`."""
    parts = [shown(diagnostic)]
    if text is not None:
        excerpt = source_excerpt(text, diagnostic.span)
        if excerpt:
            parts.append(excerpt)
    if diagnostic.hint:
        parts.append(f"  = help: {shown(diagnostic.hint)}")
    if diagnostic.related:
        related = diagnostic.related
        parts.append(f"  = note: {shown(related.span)}: {shown(related.message)}")
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
