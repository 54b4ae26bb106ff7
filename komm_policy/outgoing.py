"""Everything komm-policy sends back inside a modification is built here, and only here.

Stalwart applies modifications almost as given (wire reference §6 and §12, "More wire
facts", from `crates/smtp/src/inbound/milter/message.rs`): `addRecipient` and `changeFrom`
are only trimmed, stripped of `<>` and checked for an `@`, so a CR/LF inside one reaches the
outgoing `RCPT TO` / `MAIL FROM` and the Return-Path; header values are written as
`Name: value` CRLF, byte for byte.  So:

- **Addresses** (`changeFrom`, `addRecipient`, `deleteRecipient`) must be one valid address
  by the rules of `valid_address`, after trimming spaces, tabs, CR and LF at the ends.  A
  `deleteRecipient` may also name one of the message's own envelope recipients exactly (it
  is only compared, and the quarantine must be able to remove every recipient, including
  the `""` that a bare `RCPT TO:<Postmaster>` becomes), provided it holds no control
  character.  Anything else raises `UnsafeValue`: the runtime treats it as a rule error
  (the rule's `on error`, else the fallback), records the cause, and sends nothing of it.
- **Header values** are made safe, never refused (`header_value`): controls replaced
  (`text.clean_header_text`: CR and LF become spaces, other C0 controls, DEL, C1 controls
  and lone surrogates become `?`, TAB stays), trimmed, runs of more than
  `MAX_WHITESPACE_RUN` spaces/tabs shortened to one space, words with non-ASCII text (or
  that look like an encoded word, or are longer than `MAX_PLAIN_WORD`) written as RFC 2047
  encoded words (UTF-8, Q encoding with the phrase-safe alphabet of RFC 2047 §5(3), at most
  75 characters each), and the result folded at whitespace (RFC 5322 §2.2.3) so that lines
  aim for 78 octets (`Name: ` included) and never exceed 998.  Time and memory are linear
  in the value's length.

`replaceContents` carries a message body, not a header: it is sent as the policy built it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .addresses import normalize_address, valid_address
from .text import clean_header_text, has_controls, to_text
from .wire import (
    AddHeader,
    AddRecipient,
    ChangeFrom,
    ChangeHeader,
    DeleteHeader,
    DeleteRecipient,
    InsertHeader,
    ReplaceContents,
)

SOFT_LINE = 78
"""RFC 5322 §2.1.1: lines SHOULD be at most 78 characters (without CRLF)."""
HARD_LINE = 998
"""RFC 5322 §2.1.1: lines MUST be at most 998 octets (without CRLF)."""
MAX_HEADER_NAME = 76
"""Longest header name a policy may write (checked by `check`, E123): leaves room for the
first word on the first line."""
MAX_WHITESPACE_RUN = 64
"""A longer run of spaces/tabs inside a value becomes one space, so that a continuation
line (whitespace + one word) always fits."""
MAX_PLAIN_WORD = HARD_LINE - 2 - MAX_HEADER_NAME - MAX_WHITESPACE_RUN
"""A longer word without whitespace cannot be folded as it is: it is written as encoded
words, which can be split anywhere."""
MAX_ENCODED_WORD = 75
"""RFC 2047 §2: an encoded word is at most 75 characters."""
_PREFIX = "=?utf-8?q?"
_PAYLOAD = MAX_ENCODED_WORD - len(_PREFIX) - 2
_SHOWN = 120
"""How much of a refused value an error message quotes."""

_SPLIT = re.compile(r"([ \t]+)")
# RFC 2047 §5(3): in Q-encoded text only letters, digits and ! * + - / may stand for
# themselves when the word may end up in a phrase; everything else is =XX (space is _).
_Q_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_ASCII = {chr(c): (chr(c) if chr(c) in _Q_SAFE else f"={c:02X}") for c in range(128)}
_Q_ASCII[" "] = "_"


class UnsafeValue(ValueError):
    """A value that cannot be sent as it is (an address that is not one valid address)."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[:_SHOWN] + "…")


# ---------------------------------------------------------------------------------------
# Addresses


def envelope_address(value: Any, statement: str) -> str:
    """The text of `value` as one valid address for `changeFrom` / `addRecipient`.

    Raises `UnsafeValue` (naming `statement`) when, after trimming spaces, tabs, CR and LF
    at the ends, it is not one address by the rules of `valid_address`."""
    text = to_text(value).strip(" \t\r\n")
    if not valid_address(text):
        raise UnsafeValue(f"{statement}: {_shown(text)} is not one valid address; "
                          "nothing was sent")
    return text


def recipient_to_delete(value: Any, recipients: Sequence[str] = ()) -> str:
    """The text for `deleteRecipient`: the envelope recipient `value` names, as Stalwart
    stored it, or else the lower-cased `value` when it is one valid address.

    `recipients` are the envelope's recipients as Stalwart sent them, lower-cased.  Stalwart
    removes a recipient whose stored (lower-case, as received) address equals the value
    (`crates/smtp/src/inbound/milter/message.rs`), while policies see addresses in their
    normal form (A-label domains, `addresses.normalize_address`): so `value` is matched by
    normal form and the recipient is sent back as received, or `anna@bücher.example` would
    stay a recipient of a quarantined message.  A recipient holding a control character is
    never sent.  Raises `UnsafeValue`.  Linear in the number of recipients; a value that is
    exactly one of them (the quarantine's case) is found without normalising any, so
    removing every recipient stays cheap however many there are."""
    text = to_text(value).strip(" \t\r\n")
    if text in recipients:
        if has_controls(text):
            raise UnsafeValue(f"delete_recipient: {_shown(text)} holds a control character; "
                              "nothing was sent")
        return text
    key = normalize_address(text)
    for sent in recipients:
        if normalize_address(sent) == key:
            if has_controls(sent):
                break
            return sent
    else:
        lowered = text.lower()
        if valid_address(lowered):
            return lowered
    raise UnsafeValue(f"delete_recipient: {_shown(text)} is neither a valid address nor one "
                      "of the message's recipients; nothing was sent")


# ---------------------------------------------------------------------------------------
# Header values


def header_value(value: Any, name: str) -> str:
    """`value` as a header value Stalwart can write after `Name: `: no controls, 7-bit,
    folded (see the module docstring).  Never raises; linear in the length of the text."""
    text = clean_header_text(to_text(value)).strip(" \t")
    if len(text) + len(name) + 2 <= SOFT_LINE and text.isascii() and "=?" not in text:
        return text  # the common short value goes out unchanged
    return _fold(_atoms(_SPLIT.split(text)), len(name) + 2)


def _needs_encoding(word: str) -> bool:
    return not word.isascii() or "=?" in word or len(word) > MAX_PLAIN_WORD


def _atoms(parts: list[str]) -> list[tuple[str, str]]:
    """(whitespace before, atom) pairs: plain words, or encoded words for each run of words
    that need encoding (with the whitespace between them inside the encoding, since a
    reader drops whitespace between adjacent encoded words, RFC 2047 §6.2)."""
    atoms: list[tuple[str, str]] = []
    i, count = 0, len(parts)  # parts alternate word, whitespace, word, …, word
    while i < count:
        before = parts[i - 1] if i else ""
        if len(before) > MAX_WHITESPACE_RUN:
            before = " "
        word = parts[i]
        if not _needs_encoding(word):
            atoms.append((before, word))
            i += 2
            continue
        run = [word]
        j = i + 2
        while j < count and _needs_encoding(parts[j]):
            run.append(parts[j - 1])
            run.append(parts[j])
            j += 2
        for k, encoded in enumerate(_encoded_words("".join(run))):
            atoms.append((before if k == 0 else " ", encoded))
        i = j
    return atoms


def _encoded_words(text: str) -> list[str]:
    """UTF-8 Q encoded words of at most 75 characters; a character is never split."""
    words: list[str] = []
    piece: list[str] = []
    size = 0
    for ch in text:
        encoded = _Q_ASCII.get(ch)
        if encoded is None:
            encoded = "".join(f"={b:02X}" for b in ch.encode("utf-8"))
        if size + len(encoded) > _PAYLOAD:
            words.append(f"{_PREFIX}{''.join(piece)}?=")
            piece, size = [], 0
        piece.append(encoded)
        size += len(encoded)
    if piece:
        words.append(f"{_PREFIX}{''.join(piece)}?=")
    return words


def _fold(atoms: list[tuple[str, str]], first_line: int) -> str:
    """Join the atoms, starting a new line (CRLF, then the atom's own whitespace) before an
    atom that would take the line past 78 octets.  Each line holds at least one atom."""
    out: list[str] = []
    used = first_line
    for k, (before, atom) in enumerate(atoms):
        if k == 0:
            out.append(atom)
            used += len(atom)
            continue
        width = len(before) + len(atom)
        if used + width > SOFT_LINE:
            out.append("\r\n")
            used = 0
        out.append(before)
        out.append(atom)
        used += width
    return "".join(out)


# ---------------------------------------------------------------------------------------
# Address lists

# RFC 5322 §3.2.3 atext, with RFC 6532 §3.2's UTF8-non-ascii; a dot-atom is atext runs
# joined by single dots.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
POSTMASTER = "(Postmaster)"
"""How the `""` of a bare `RCPT TO:<Postmaster>` (RFC 5321 §4.1.1.3) appears in an address
list: it has no domain, so no addr-spec; an RFC 5322 comment stands in its place."""


def addr_spec(address: str) -> str:
    """An envelope address as Stalwart sends it (dequoted, split at the last `@`) as an RFC
    5322 §3.4.1 addr-spec: the local part as it is when it is a dot-atom, else re-quoted
    (`odd user@x.example` → `"odd user"@x.example`, `\\` and `"` escaped).  Non-ASCII stays
    UTF-8 (RFC 6532 §3.2): an address is never an encoded word (RFC 2047 §5(3)).  Controls
    are replaced (`text.clean_header_text`).  `""` gives `POSTMASTER`."""
    if not address:
        return POSTMASTER
    at = address.rfind("@")
    local, domain = (address[:at], address[at:]) if at >= 0 else (address, "")
    local = clean_header_text(local)
    if _DOT_ATOM.fullmatch(local) is None:
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return local + clean_header_text(domain)


def _cut(spec: str) -> str:
    if len(spec) * 4 <= MAX_PLAIN_WORD:
        return spec
    octets = spec.encode("utf-8", "replace")  # lone surrogates were replaced already
    if len(octets) <= MAX_PLAIN_WORD:
        return spec
    return octets[:MAX_PLAIN_WORD - 3].decode("utf-8", "ignore") + "..."


def address_list_value(addresses: Sequence[str], name: str) -> str:
    """A header value listing `addresses` (RFC 5322 §3.4 address-list): addr-specs
    (`addr_spec`) joined with `, `, folded between them (never inside one) so lines aim for
    78 octets.  7-bit unless a local part is not ASCII: such an address arrives only over
    SMTPUTF8 (RFC 6531), whose messages may carry UTF-8 header fields (RFC 6532 §3); RFC 2047
    forbids encoding an addr-spec.  An addr-spec longer than `MAX_PLAIN_WORD` octets (no
    SMTP path is: RFC 5321 allows 256) is cut there and ends in `...`, so no line passes
    998 octets.  Linear in the total length."""
    specs = [_cut(addr_spec(a)) for a in addresses]
    atoms = [("" if k == 0 else " ", spec + ("," if k < len(specs) - 1 else ""))
             for k, spec in enumerate(specs)]
    return _fold(atoms, len(name) + 2)


# ---------------------------------------------------------------------------------------
# The modifications


def add_header(name: str, value: Any) -> AddHeader:
    return AddHeader(name=name, value=header_value(value, name))


def add_address_list_header(name: str, addresses: Sequence[str]) -> AddHeader:
    """`addHeader` of an address list (`address_list_value`), not of free text."""
    return AddHeader(name=name, value=address_list_value(addresses, name))


def insert_header(name: str, value: Any, index: int) -> InsertHeader:
    return InsertHeader(index=index, name=name, value=header_value(value, name))


def change_header(name: str, value: Any, index: int) -> ChangeHeader:
    return ChangeHeader(index=index, name=name, value=header_value(value, name))


def delete_header(name: str, index: int) -> DeleteHeader:
    return DeleteHeader(index=index, name=name)


def change_from(value: Any) -> ChangeFrom:
    return ChangeFrom(value=envelope_address(value, "change_from"))


def add_recipient(value: Any) -> AddRecipient:
    return AddRecipient(value=envelope_address(value, "add_recipient"))


def delete_recipient(value: Any, recipients: Sequence[str] = ()) -> DeleteRecipient:
    return DeleteRecipient(value=recipient_to_delete(value, recipients))


def replace_contents(value: Any) -> ReplaceContents:
    return ReplaceContents(value=to_text(value))
