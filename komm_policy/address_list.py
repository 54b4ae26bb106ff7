"""The addresses of an RFC 5322 address-list (`From`, `To`, `X-BeenThere`, …), linear time.

RFC 5322 §3.4: `address-list = address *("," address)`, an address being a mailbox
(`addr-spec`, or `[display-name] <addr-spec>`) or a group (`name: mailbox-list ;`).
Comments are skipped, display names and group names are ignored, quoted local parts are
dequoted the way Stalwart's SMTP parser dequotes envelope addresses (so `"a b"@x` gives
`a b@x`), and an obsolete route (`<@relay:user@x>`) is dropped.  The field is read as sent,
unfolded: encoded words are never decoded, so a display name can never turn into an address.
Entries that are not valid addresses (`valid_address`: no `@`, an empty side, a bad
domain, …) are left out.  Each
address comes back once, normalised (`normalize_address`), in order of first appearance.
"""

from __future__ import annotations

import re

from .addresses import normalize_address, valid_address
from .headers import comment_end

# One token at the top level: quoted string, domain literal, atom run, or a single special.
# Possessive quantifiers: no backtracking on hostile input.
_TOKEN = re.compile(r'''
    (?P<quoted>"(?:[^"\\]++|\\.?)*+"?)
  | (?P<literal>\[(?:[^\[\]\\]++|\\.?)*+\]?)
  | (?P<space>[ \t]++)
  | (?P<atom>[^ \t"()<>\[\],;:@\\]++)
  | (?P<special>.)
''', re.VERBOSE | re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.?)", re.DOTALL)


def _addr_spec(pieces: list[str]) -> str | None:
    """`local@domain` from the pieces of one addr-spec, or None when it is not one."""
    text = "".join(pieces)
    if ":" in text and text.startswith("@"):     # obsolete route: @a,@b:user@x
        text = text.rpartition(":")[2]
    return normalize_address(text) if valid_address(text) else None


_STRUCTURE = ('"', "(", ")", "<", ">", "[", "]", "\\", ":", ";")


def _plain_list(text: str) -> list[str]:
    """A list of bare addr-specs (no quotes, comments, brackets or groups): split in C,
    duplicates dropped before anything is judged."""
    found: dict[str, None] = {}
    for piece in dict.fromkeys(text.split(",")):
        address = "".join(piece.split())   # CFWS around the dots: obsolete, but read
        if address and valid_address(address):
            found.setdefault(normalize_address(address), None)
    return list(found)


def address_list(text: str) -> list[str]:
    """The addr-specs of an unfolded address field, normalised, each once (see the module
    docstring).  Linear in the length of `text`."""
    if "@" not in text:
        return []
    if not any(special in text for special in _STRUCTURE):
        return _plain_list(text)
    found: dict[str, None] = {}
    outside: list[str] = []        # the current mailbox's pieces outside <…>
    angle: list[str] | None = None  # the pieces of its last <…>, if any
    inside = False                 # between < and >

    def flush() -> None:
        nonlocal angle
        address = _addr_spec(angle if angle is not None else outside)
        if address is not None:
            found.setdefault(address, None)
        outside.clear()
        angle = None

    pos, end = 0, len(text)
    while pos < end:
        if text[pos] == "(":
            pos = comment_end(text, pos)
            continue
        match = _TOKEN.match(text, pos)
        assert match is not None
        pos = match.end()
        kind, value = match.lastgroup, match.group()
        if kind == "space":
            continue
        if kind == "quoted":
            value = value[1:-1] if value.endswith('"') and len(value) > 1 else value[1:]
            if "\\" in value:
                value = _QUOTED_PAIR.sub(r"\1", value)
        elif kind == "special":
            if value == "<" and not inside:
                inside, angle = True, []
                continue
            if value == ">" and inside:
                inside = False
                continue
            if not inside and value in ",;":
                flush()
                continue
            if not inside and value == ":":   # a group's name: not part of an address
                outside.clear()
                continue
        (angle if inside and angle is not None else outside).append(value)
    flush()
    return list(found)
