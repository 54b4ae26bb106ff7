"""Policy regexes: RE2's dialect, run by RE2 (google-re2), in time linear in the text.

A policy regex `/pattern/flags` is checked here before RE2 sees it, so that every construct
RE2 cannot run is a positioned error with a hint rather than RE2's bare message:
backreferences (`\\1`, `(?P=name)`), look-around (`(?=`, `(?!`, `(?<=`, `(?<!`), atomic
groups, conditionals, `(?#…)` comments, possessive quantifiers, and unbalanced
parentheses.  Two things are rewritten, keeping their meaning: `\\Z` (Python's "end of
text") becomes RE2's `\\z`, and with the `x` flag unescaped whitespace and `#` comments
outside character classes are removed (RE2 has no verbose mode).  Flags `i`, `m`, `s`
become RE2's inline flags.  RE2 is told not to log, so a bad pattern prints nothing.

Dialect differences an operator meets are listed in docs/language.md §3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import re2

FLAGS = {"i": "ignore case", "m": "^ and $ match at every line", "s": ". matches a newline",
         "x": "verbose: whitespace and # comments ignored"}

_UNANCHORED = re2._re2.RE2.Anchor.UNANCHORED
MEMO_TEXT = 256
MEMO_ENTRIES = 1024
_REPEAT_END = re.compile(r"\{[0-9]+(?:,[0-9]*)?\}\Z")
_LINEAR_HINT = "RE2 runs every pattern in linear time and has no {what}"


class RegexError(ValueError):
    """A pattern komm-policy will not run; `offset` is 0-based in the pattern text (-1: the
    flags)."""

    def __init__(self, message: str, offset: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.hint = hint


@dataclass(frozen=True, slots=True, eq=False)
class Regex:
    """A compiled policy regex.  `search(text)` is True when it matches somewhere in the
    text, else None (RE2 `UNANCHORED` match; the text is searched as UTF-8).  Safe to share
    between threads: the memo's dict operations are atomic."""

    pattern: str
    """The pattern as written in the policy."""
    flags: str
    translated: str
    """The pattern RE2 runs (after `\\Z` and `x`-flag rewriting, with inline flags)."""
    _match: object
    _memo: dict[str, bool] = field(default_factory=dict, repr=False)
    """Results for short texts already searched.  A call into RE2 costs about 1 µs, two to
    three times Python's `re` on short text, and one SMTP transaction asks the same
    question many times (the sender and HELO at every RCPT and at DATA), so answers for
    texts up to `MEMO_TEXT` characters are kept, at most `MEMO_ENTRIES` of them (then the
    memo starts afresh).  A pure function's memo: results never depend on it."""

    def search(self, text: str) -> bool | None:
        if len(text) > MEMO_TEXT:
            return self._run(text) or None
        memo = self._memo
        found = memo.get(text)
        if found is None:
            found = self._run(text)
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[text] = found
        return found or None

    def _run(self, text: str) -> bool:
        data = text.encode("utf-8", "surrogatepass")
        spans = self._match(_UNANCHORED, data, 0, len(data))  # type: ignore[operator]
        return spans[0][0] >= 0

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Regex) and self.pattern == other.pattern
                and self.flags == other.flags)

    def __hash__(self) -> int:
        return hash((self.pattern, self.flags))

    def __repr__(self) -> str:
        return f"Regex(/{self.pattern}/{self.flags})"


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False       # nothing on stderr for a bad pattern
    options.never_capture = True     # only "does it match" is asked: cheaper
    return options


def compile_regex(pattern: str, flags: str = "") -> Regex:
    """Check and compile a policy regex.  Raises `RegexError` (with the offset in
    `pattern` and a hint) for an unknown flag or a construct RE2 cannot run."""
    for flag in flags:
        if flag not in FLAGS:
            raise RegexError(f"unknown regex flag `{flag}`", -1,
                             "regex flags are i (ignore case), m (multi-line), s (dot "
                             "matches newline) and x (verbose)")
    body = _translate(pattern, verbose="x" in flags)
    inline = "".join(f for f in "ims" if f in flags)
    translated = f"(?{inline}){body}" if inline else body
    compiled = re2._re2.RE2(translated.encode("utf-8", "surrogatepass"), _options())
    if not compiled.ok():
        message = compiled.error().decode("utf-8", "replace")
        fragment = message.rpartition(": ")[2]
        offset = pattern.find(fragment) if fragment else -1
        raise RegexError(_told(message), max(offset, 0),
                         "see docs/language.md §3 for the RE2 dialect")
    return Regex(pattern, flags, translated, compiled.Match)


MAX_REPEAT = 1000
"""RE2's limit on one repetition count, and on the product of nested ones
(`(a{10}){101}` is refused: 1,010 copies of `a`)."""
MAX_PROGRAM_MIB = _options().max_mem // (1024 * 1024)
"""RE2's memory budget for one compiled pattern (its default `max_mem`, 8 MiB)."""
_REPEAT = re.compile(r"invalid repetition size: (\{(\d+)(?:,(\d*))?\})")


def _told(message: str) -> str:
    """RE2's message for a pattern that is too large, said as what it means: RE2 names
    only the outermost count (`invalid repetition size: {3}` for `(\\pL{500}…){3}`)."""
    found = _REPEAT.fullmatch(message)
    if found is not None:
        counts = [int(c) for c in found.group(2, 3) if c]
        if max(counts) > MAX_REPEAT:
            return (f"invalid repetition size {found[1]}: a count is at most "
                    f"{MAX_REPEAT} (RE2's limit)")
        return (f"pattern too large: the repetition {found[1]} and the counts inside it "
                f"multiply to more than {MAX_REPEAT} copies (RE2's limit; invalid "
                "repetition size)")
    if message.startswith("pattern too large"):
        return (f"pattern too large: its compiled program needs more than "
                f"{MAX_PROGRAM_MIB} MiB (RE2's limit); use fewer or shorter repetitions "
                "of large classes such as \\pL")
    return message


_LOOK = {"(?=": "look-ahead", "(?!": "negative look-ahead", "(?<=": "look-behind",
         "(?<!": "negative look-behind"}


def _translate(pattern: str, verbose: bool) -> str:
    """Reject what RE2 cannot run (with positions); rewrite `\\Z` and the `x` flag."""
    out: list[str] = []
    opened: list[int] = []
    i, n = 0, len(pattern)
    after_quantifier = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1: i + 2]
            if nxt in "123456789" and nxt:
                raise RegexError(f"backreference `\\{nxt}` is not supported", i, (
                    _LINEAR_HINT.format(what="backreferences")
                    + "; match the alternatives explicitly, or use two rules"))
            out.append("\\z" if nxt == "Z" else pattern[i: i + 2])
            i += 2
            after_quantifier = False
            continue
        if ch == "[":
            end = _class_end(pattern, i)
            out.append(pattern[i:end])
            i = end
            after_quantifier = False
            continue
        if verbose and ch in " \t\n\r\f\v":
            i += 1
            continue
        if verbose and ch == "#":
            break                                   # a comment to the end of the pattern
        if ch == "(":
            _check_group(pattern, i)
            opened.append(i)
        elif ch == ")":
            if not opened:
                raise RegexError("unbalanced parenthesis: `)` without `(`", i,
                                 "escape a literal parenthesis as `\\)`")
            opened.pop()
        if ch in "*+?" and not (ch == "?" and pattern[i - 1: i] == "("):
            if after_quantifier and ch == "+":
                raise RegexError("possessive quantifiers are not supported", i,
                                 _LINEAR_HINT.format(what="backtracking")
                                 + ", so a plain quantifier does the same: drop this `+`")
            # `*?` is a lazy quantifier: the `?` ends it
            after_quantifier = not (after_quantifier and ch == "?")
        elif ch == "}":
            after_quantifier = _REPEAT_END.search("".join(out[-12:]) + "}") is not None
        else:
            after_quantifier = False
        out.append(ch)
        i += 1
    if opened:
        raise RegexError("missing `)`: this group is not closed", opened[-1],
                         "close the group, or escape a literal parenthesis as `\\(`")
    return "".join(out)


def _check_group(pattern: str, i: int) -> None:
    head = pattern[i: i + 4]
    for prefix, what in _LOOK.items():
        if head.startswith(prefix):
            raise RegexError(f"{what} `{prefix}…)` is not supported", i, (
                _LINEAR_HINT.format(what="look-around")
                + "; test the condition with a second `matches` (`and not … matches …`)"))
    if head.startswith("(?>"):
        raise RegexError("atomic groups `(?>…)` are not supported", i,
                         _LINEAR_HINT.format(what="backtracking")
                         + ", so a plain group `(?:…)` does the same")
    if head.startswith("(?P="):
        raise RegexError("named backreference `(?P=…)` is not supported", i,
                         _LINEAR_HINT.format(what="backreferences"))
    if head.startswith("(?("):
        raise RegexError("conditional groups `(?(…)…)` are not supported", i,
                         "write the alternatives with `|`")
    if head.startswith("(?#"):
        raise RegexError("comments `(?#…)` are not supported", i,
                         "remove the comment, or use a `#` comment on the policy line")


def _class_end(pattern: str, start: int) -> int:
    """The index after the `]` closing the character class at `start` (or the end)."""
    i = start + 1
    if pattern[i: i + 1] == "^":
        i += 1
    if pattern[i: i + 1] == "]":
        i += 1
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[" and pattern[i + 1: i + 2] == ":":        # [:alpha:]
            close = pattern.find(":]", i + 2)
            if close >= 0:
                i = close + 2
                continue
        if ch == "]":
            return i + 1
        i += 1
    return n
