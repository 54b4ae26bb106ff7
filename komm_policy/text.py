"""How values become text: in templates, headers, log lines and SMTP replies."""

from __future__ import annotations

from typing import Any

_CONTROL = {c: "?" for c in range(0x20)} | {0x7F: "?"}
MAX_REPLY_TEXT = 400


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


def header_text(value: Any) -> str:
    """Header values may not break the header block: CR and LF become spaces."""
    return to_text(value).replace("\r", " ").replace("\n", " ")


def reply_text(text: str) -> str:
    """Make interpolated text safe for an SMTP reply: printable ASCII, one line, bounded."""
    if not text.isascii() or not text.isprintable():
        text = text.encode("ascii", "replace").decode("ascii").translate(_CONTROL)
    return text[:MAX_REPLY_TEXT]
