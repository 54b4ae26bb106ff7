"""Checks on what komm-policy sends, written independently of `komm_policy.outgoing`.

`read_back` reads a header value the way a recipient's mail reader does (unfold, then the
standard library's RFC 2047 decoder); `header_problems` lists every way a header line would
break RFC 5322 §2.1.1/§2.2 or our promise (7-bit, no controls, folded at whitespace);
`address_problems` does the same for an envelope address we send.
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header

from komm_policy.builtins import valid_address

_FOLD = re.compile(r"\r\n(?=[ \t])")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def read_back(value: str) -> str:
    """The text a reader shows for a header value we sent."""
    unfolded = _FOLD.sub("", value)
    return str(make_header(decode_header(unfolded)))


def header_problems(name: str, value: str) -> list[str]:
    """Empty when `Name: value` CRLF is a clean, folded, 7-bit header field."""
    problems = []
    if not value.isascii():
        problems.append("not 7-bit")
    lines = f"{name}: {value}".split("\r\n")
    for i, line in enumerate(lines):
        if _CONTROL.search(line):
            problems.append(f"line {i + 1} holds a control character: {line[:60]!r}")
        if len(line.encode("utf-8")) > 998:
            problems.append(f"line {i + 1} is {len(line)} octets long")
        if i and (line[:1] not in (" ", "\t") or not line.strip(" \t")):
            problems.append(f"line {i + 1} is not a continuation line: {line[:60]!r}")
    for word in re.findall(r"=\?[^?]*\?[qQbB]\?[^?]*\?=", value):
        if len(word) > 75:
            problems.append(f"encoded word longer than 75: {word[:40]}…")
    return problems


def address_problems(value: str) -> list[str]:
    """Empty when `value` is one clean address we may send."""
    problems = []
    if _CONTROL.search(value) or "\t" in value:
        problems.append(f"control character in {value!r}")
    if not valid_address(value):
        problems.append(f"not one valid address: {value!r}")
    return problems
