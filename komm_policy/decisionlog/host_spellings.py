"""The spellings of one IP address inside host names, as `records.redact` replaces them.

A PTR or HELO name often carries the client address in a form no address parser reads:
octets joined by dashes or dots (`host-192-0-2-66.example.net`, `192.0.2.66.dyn.example`),
in reverse order (`66-2-0-192.pool.example`, `66.2.0.192.in-addr.arpa`, RFC 1035 §3.5),
zero-padded (`192-000-002-066`), as 8 hex or 12 decimal digits (`pC0000242.dip.example`,
`ip192000002066.example`); an IPv6 address as its 32 nibbles joined by dots, forward or
reversed (`…8.b.d.0.1.0.0.2.ip6.arpa`, RFC 3596 §2.5), or as its groups joined by
dashes, with or without zeros compressed (`2001-db8-4860--1`,
`2001-0db8-4860-0000-0000-0000-0000-0001`).  Any case.

`host_spellings(version, value)` builds the regular expressions of one client address
(memoised: the writer sees the same few clients over and over).  Where an address ends is
all a host name says about it, so a match that is one piece of a longer run of the same
kind is refused: four octets with a fifth all-digit label beside them (`10.192.0.2.6` is
not `192.0.2.6`), 32 nibbles with a 33rd one-character label beside them, 8 hex digits
inside a longer hex word, dashed groups with a further 1-4 hex digit word beside them
(`2001-db8--1-0` is 2001:db8::1:0).  Letters before octets are a label's prefix
(`ip192-0-2-66`, `v4-192-0-2-66`, `ipv6-2001-db8--1`) and do not refuse a match.  Every
alternative has a bounded length, so a search is linear in the text.

No match starts inside a JSON escape (`\\u00XX`, the only escape with hex digits that
`msgspec` writes), where a replacement would break the record: it would start with `00`
right after the `u`, and no alternative does (a 0.x.x.x address has no hex form here;
decimal octets and IPv6 groups do not start right after a letter or digit).
"""

from __future__ import annotations

import functools
import re

_SEP = "[-.]"
_NO_NUMBER_BEFORE = (
    r"(?<![0-9])(?<![^0-9A-Za-z][0-9][-.])(?<![^0-9A-Za-z][0-9]{2}[-.])"
    r"(?<![^0-9A-Za-z][0-9]{3}[-.])")
"""Not preceded by a digit, nor by an all-digit label of 1-3 digits and a separator."""
_NO_NUMBER_AFTER = r"(?![0-9])(?![-.][0-9]{1,3}(?![0-9A-Za-z]))"
_NO_NIBBLE_BEFORE = r"(?<![0-9A-Za-z])(?<![^0-9A-Za-z][0-9A-Za-z][-.])"
_NO_NIBBLE_AFTER = r"(?![0-9A-Za-z])(?![-.][0-9A-Za-z](?![0-9A-Za-z]))"
_NO_GROUP_BEFORE = r"(?<![0-9A-Za-z])" + "".join(
    rf"(?<![^0-9A-Za-z][0-9A-Fa-f]{{{n}}}-)" for n in range(1, 5))
"""Not preceded by a letter or digit, nor by a word of 1-4 hex digits and a dash (another
group of a longer address; `ipv6-` and `v6-` are not such words)."""
_NO_GROUP_AFTER = r"(?![0-9A-Za-z])(?!-[0-9A-Fa-f]{1,4}(?![0-9A-Za-z]))"


def _octet(value: int) -> str:
    """One decimal octet, with up to 3 digits of zero padding."""
    digits = str(value)
    return (f"0{{0,{3 - len(digits)}}}" if len(digits) < 3 else "") + digits


Part = tuple[str, str]
"""One family of spellings: a literal every one of them contains (lower case) and the
regular expression that finds them."""


def _ipv4(value: int) -> list[Part]:
    octets = [(value >> shift) & 0xFF for shift in (24, 16, 8, 0)]
    spelled = [_octet(o) for o in octets]
    numbers = [_SEP.join(spelled), _SEP.join(reversed(spelled))]
    digits = "".join(f"{o:03d}" for o in octets)
    parts = [(max((str(o) for o in octets), key=len),
              f"{_NO_NUMBER_BEFORE}(?:{'|'.join(numbers)}){_NO_NUMBER_AFTER}"),
             (digits, rf"(?<![0-9]){digits}(?![0-9])")]
    if octets[0]:  # `00…` could start inside a JSON `\u00XX` escape (module docstring)
        parts.append((f"{value:08x}", rf"(?<![0-9A-Fa-f]){value:08x}(?![0-9A-Fa-f])"))
    return parts


def _group(value: int) -> str:
    """One IPv6 group in a dashed spelling, with up to 4 digits of zero padding."""
    digits = f"{value:x}"
    return (f"0{{0,{4 - len(digits)}}}" if len(digits) < 4 else "") + digits


def _ipv6(value: int) -> list[Part]:
    nibbles = f"{value:032x}"
    parts = [(dotted, rf"{_NO_NIBBLE_BEFORE}{re.escape(dotted)}{_NO_NIBBLE_AFTER}")
             for dotted in (".".join(nibbles), ".".join(reversed(nibbles)))]
    groups = [(value >> (112 - 16 * i)) & 0xFFFF for i in range(8)]
    spelled = [_group(g) for g in groups]
    dashed = ["-".join(spelled)]
    for start in range(8):  # every run of zero groups may be the one written `--`
        for end in range(start + 1, 9):
            if groups[end - 1]:
                break
            dashed.append("-".join(spelled[:start]) + "--" + "-".join(spelled[end:]))
    dashed.sort(key=len, reverse=True)  # the alternation takes the first that matches
    parts.append((max((f"{g:x}" for g in groups), key=len),
                  f"{_NO_GROUP_BEFORE}(?:{'|'.join(dashed)}){_NO_GROUP_AFTER}"))
    return parts


class HostSpellings:
    """The host-name spellings of one address, replaced in a text (`sub`)."""

    __slots__ = ("_parts",)

    def __init__(self, parts: list[Part]) -> None:
        self._parts = tuple((literal, re.compile(pattern, re.IGNORECASE))
                            for literal, pattern in parts)

    def sub(self, replacement: str, text: str) -> str:
        """`text` with every spelling replaced by `replacement`.  A family's pattern runs
        only when its literal is in the text: a `str` search, where the pattern's
        look-behinds at every character cost about 200 µs for a 400-byte record."""
        lower = text.lower()
        for literal, pattern in self._parts:
            if literal in lower:
                # one leading space: the look-behinds see a boundary at the text's start
                text = pattern.sub(replacement, " " + text)[1:]
                lower = text.lower()
        return text


@functools.lru_cache(maxsize=256)
def host_spellings(version: int, value: int) -> HostSpellings:
    """The host-name spellings of the address `(version, value)` (`IP.key`: 4 or 6, the
    address as an integer), in any case; see the module docstring."""
    return HostSpellings(_ipv4(value) if version == 4 else _ipv6(value))
