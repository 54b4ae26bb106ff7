"""How values become text: in templates, headers, log lines and SMTP replies.

One table says which characters may never leave komm-policy inside a line of text: the C0
controls, DEL, the C1 controls and lone surrogates all become `?`.  Replies (`reply_text`)
apply it to every control, TAB, CR and LF included, and to non-ASCII, giving one printable
ASCII line.  Header values (`clean_header_text`) keep TAB (RFC 5322 allows it) and turn CR
and LF into spaces, so a value never starts a new header line; `outgoing.header_value`
then encodes and folds them.  Operator-facing text (`check`, `test`, `replay`, `eval`
reports, JUnit XML) goes through `shown`, which writes each such character as a visible
escape instead, so a value from the wire or a policy never moves the terminal's cursor,
starts a line of its own or makes XML ill-formed.
"""

from __future__ import annotations

import re
from typing import Any

_UNSENDABLE: dict[int, str | None] = {
    **{c: "?" for c in range(0x20)}, 0x7F: "?", **{c: "?" for c in range(0x80, 0xA0)},
    **{c: "?" for c in range(0xD800, 0xE000)},
}
"""Controls and lone surrogates: never sent in a reply or a header value."""
_REPLY = _UNSENDABLE
_HEADER = {c: r for c, r in _UNSENDABLE.items() if c != 0x09} | {0x0A: " ", 0x0D: " "}
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_REPLY_TEXT = 400
_SHOWN_NAMES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_NOT_XML = re.compile("[\ufffe\uffff]")  # XML 1.0 Char excludes them; not controls


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    named = _SHOWN_NAMES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def to_text(value: Any) -> str:
    """How a value reads inside a template, a header or a log line."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, list | tuple):
        return ", ".join(to_text(v) for v in value)
    return str(value)


def has_controls(text: str) -> bool:
    """True when the text holds a C0 control (TAB, CR, LF included), DEL, a C1 control or
    a lone surrogate."""
    return _CONTROLS.search(text) is not None


def shown(text: object) -> str:
    """`text` (any value, made `str`) for an operator's terminal or a report file: every
    C0 control (TAB, CR, LF included), DEL, C1 control and lone surrogate written as a
    Python-style escape (`\\n`, `\\x1b`, `\\x9b`, `\\ud800`), and U+FFFE/U+FFFF as
    `\\ufffe`/`\\uffff` (XML 1.0 forbids them).  The result is one line, valid XML 1.0
    character data, and as long as the input plus three characters per escape.  Linear
    in the text's length."""
    text = text if isinstance(text, str) else str(text)
    if text.isascii() and text.isprintable():
        return text
    return _NOT_XML.sub(_escape, _CONTROLS.sub(_escape, text))


def shown_in_place(text: str) -> str:
    """`text` with each character `shown` would escape replaced by one `?`: for a source
    excerpt, whose caret underline must keep its columns."""
    if text.isascii() and text.isprintable():
        return text
    return _NOT_XML.sub("?", _CONTROLS.sub("?", text))


def clean_header_text(text: str) -> str:
    """Header text without controls: CR and LF become spaces, TAB stays, every other C0
    control, DEL, C1 control and lone surrogate becomes `?`."""
    if text.isascii() and text.isprintable():
        return text
    return text.translate(_HEADER)


def reply_text(text: str) -> str:
    """Make interpolated text safe for an SMTP reply: printable ASCII, one line, bounded."""
    if not text.isascii() or not text.isprintable():
        text = text.translate(_REPLY).encode("ascii", "replace").decode("ascii")
    return text[:MAX_REPLY_TEXT]
