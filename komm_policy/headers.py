"""The message's header fields as policies read them, in time linear in their length.

Stalwart sends each field raw: `[name, value]` with the value's leading space, folded lines
and trailing CRLF, encoded words undecoded.  A field is read the way Stalwart's own message
parser (mail-parser) reads unstructured text: CR is dropped, each line is trimmed of spaces
and tabs, and the lines are joined with one space (`casino\\r\\n\\tbonus` reads
`casino bonus`); whitespace inside a line stays as sent.  RFC 2047 encoded words are then
decoded only where RFC 2047 §5 allows them, by the kind of field:

- address fields (`ADDRESS_FIELDS`): in display-name phrases and comments only, never in a
  quoted string or inside `<…>`; everything else stays as sent (comments, quotes, spacing);
- identifier, date, trace and MIME fields (`VERBATIM_FIELDS`): never;
- every other field (Subject, Comments, Keywords, X-… and unknown fields) is unstructured
  text (RFC 5322 §3.6.5, §3.6.8): every whitespace-separated encoded word.

The standard library's structured-header parsers (`email.policy.default`,
`email.headerregistry`) are never used on request data: they are superlinear on hostile
input and rewrite values.  Names match case-insensitively, ignoring surrounding whitespace.
"""

from __future__ import annotations

import re

from .encoded_words import PHRASE_RUN, decode_comment, decode_phrase, decode_unstructured

ADDRESS_FIELDS = frozenset({
    "from", "sender", "reply-to", "to", "cc", "bcc",                       # RFC 5322 §3.6.2-3
    "resent-from", "resent-sender", "resent-to", "resent-cc", "resent-bcc",  # §3.6.6
    "disposition-notification-to",                                          # RFC 8098
    "mail-followup-to", "mail-reply-to", "errors-to", "return-receipt-to",
    "list-id",                                                              # RFC 2919
})
"""Fields of phrases, comments and addresses: encoded words only in phrases and comments."""

VERBATIM_FIELDS = frozenset({
    "message-id", "in-reply-to", "references", "resent-message-id", "content-id",
    "date", "resent-date", "received", "return-path", "mime-version", "content-type",
    "content-transfer-encoding", "content-disposition", "dkim-signature",
    "domainkey-signature", "arc-seal", "arc-message-signature",
    "arc-authentication-results", "authentication-results", "received-spf",
    "list-post", "list-help", "list-subscribe", "list-unsubscribe", "list-owner",
    "list-archive", "list-unsubscribe-post",
})
"""Identifiers, dates, trace and MIME fields: read unfolded and trimmed, nothing decoded."""


def unfold(raw: str) -> str:
    """Join folded lines as mail-parser does: drop CR, trim each line's spaces and tabs,
    join the non-empty lines with one space.  Linear in the length."""
    text = raw.replace("\r", "") if "\r" in raw else raw
    if "\n" not in text:
        return text.strip(" \t")
    return " ".join([line for line in (part.strip(" \t") for part in text.split("\n"))
                     if line])


# Everything of an address field up to a comment or a possible encoded word: quoted
# strings and <…> (kept as sent) and plain text.  Possessive quantifiers: one C-level
# match however many quoted strings follow each other, and no backtracking.
_PLAIN = re.compile(r'(?:"(?:[^"\\]++|\\.?)*+"?|<[^>]*+>?|[^"<(=]++|=(?!\?))++')
# Comment content up to the next parenthesis, skipping quoted pairs.
_CTEXT = re.compile(r"(?:[^()\\]++|\\.?)++")


def read_address_field(text: str) -> str:
    """An unfolded address field with encoded words decoded in phrases and comments only."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pos, end = 0, len(text)
    while pos < end:
        if text[pos] == "(":
            pos = _read_comment(text, pos, out)
            continue
        if text.startswith("=?", pos):
            run = PHRASE_RUN.match(text, pos)
            if run is not None:
                out.append(decode_phrase(run.group()))
                pos = run.end()
            else:
                out.append("=?")
                pos += 2
            continue
        match = _PLAIN.match(text, pos)
        assert match is not None  # any other character starts plain text
        out.append(match.group())
        pos = match.end()
    return "".join(out)


def comment_end(text: str, pos: int) -> int:
    """The index just after the (possibly nested, possibly unclosed) RFC 5322 §3.2.2
    comment that starts at `text[pos] == "("`; linear in its length."""
    depth, end = 0, len(text)
    while pos < end:
        ch = text[pos]
        if ch == "(":
            depth += 1
            pos += 1
        elif ch == ")":
            depth -= 1
            pos += 1
            if depth == 0:
                return pos
        else:
            match = _CTEXT.match(text, pos)
            assert match is not None
            pos = match.end()
    return pos


def _read_comment(text: str, pos: int, out: list[str]) -> int:
    """Copy the (possibly nested, possibly unclosed) comment at `pos`, decoding its words."""
    start = pos
    pos = comment_end(text, pos)
    out.append(decode_comment(text[start:pos]))
    return pos


def read_field(name: str, raw: str) -> str:
    """One field's value as policies see it (see the module docstring)."""
    text = unfold(raw)
    if "=?" not in text:
        return text
    if name in ADDRESS_FIELDS:
        return read_address_field(text)
    if name in VERBATIM_FIELDS:
        return text
    return decode_unstructured(text)


class Headers:
    """The message's header fields by lower-case name, in message order; each field is read
    (`read_field`) only when a rule asks for it, and once per decision."""

    __slots__ = ("_raw", "_read", "_unfolded")

    def __init__(self, raw: tuple[tuple[str, str], ...]) -> None:
        grouped: dict[str, list[str]] = {}
        for name, value in raw:
            grouped.setdefault(name.strip(" \t\r\n").lower(), []).append(value)
        self._raw = grouped
        self._read: dict[str, list[str]] = {}
        self._unfolded: dict[str, list[str]] = {}

    def all(self, name: str) -> list[str]:
        """Every field of that name, read; [] when there is none."""
        key = name.strip(" \t").lower()
        values = self._read.get(key)
        if values is None:
            values = self._read[key] = [read_field(key, raw) for raw in self._raw.get(key, ())]
        return values

    def first(self, name: str) -> str | None:
        """The first field of that name, read; None when there is none."""
        values = self.all(name)
        return values[0] if values else None

    def unfolded(self, name: str) -> list[str]:
        """Every field of that name unfolded and trimmed, nothing decoded (for parsers of
        structured values such as address lists)."""
        key = name.strip(" \t").lower()
        values = self._unfolded.get(key)
        if values is None:
            values = self._unfolded[key] = [unfold(raw) for raw in self._raw.get(key, ())]
        return values
