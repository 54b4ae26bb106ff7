"""Mail addresses as Stalwart sends them: validity, the one normal form, RFC 5322 lists.

Stalwart's SMTP parser (smtp-proto `address()`) lower-cases envelope addresses and removes
the quotes and backslashes of a quoted local part before a hook sees them, so
`<"odd user"@example.org>` arrives as `odd user@example.org` and `<"a@b"@example.org>` as
`a@b@example.org` (wire reference §12).  Everything here therefore splits an address at its
*last* `@`.

`normalize_address` / `normalize_domain` give the form every address comparison uses:
lower case, with the domain as lower-case A-labels (UTS #46 through the `idna` package), so
`spam@bücher.example` and `spam@xn--bcher-kva.example` are the same address.  Import them
wherever addresses are compared or looked up; they never raise.
"""

from __future__ import annotations

import ipaddress
import re

import idna

MAX_ADDRESS_OCTETS = 254
"""RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the angle brackets."""
MAX_LOCAL_OCTETS = 64
"""RFC 5321 §4.5.3.1.1, counted in UTF-8 octets (RFC 6531)."""
MAX_DOMAIN_OCTETS = 253
_MAX_IDNA_INPUT = 1024
"""Longer text is no domain IDNA could accept; it is only lower-cased."""

# A domain label: letters, digits, hyphens (not at either end); non-ASCII letters are
# allowed as U-labels (SMTPUTF8).  Top-level label: letters only, or an A-label.
_LABEL = re.compile(r"[A-Za-z0-9\u00a0-\U0010ffff](?:[A-Za-z0-9\u00a0-\U0010ffff-]{0,61}"
                    r"[A-Za-z0-9\u00a0-\U0010ffff])?")
_TOP_LABEL = re.compile(r"[A-Za-z\u00a0-\U0010ffff]{2,63}|xn--[A-Za-z0-9-]{1,59}")
_IPV4_LITERAL = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")

# The all-ASCII, no-literal case of `valid_domain` / `valid_address` as one regex: a fast
# path (one C match instead of a Python loop per label and character), taken only when it
# matches; everything else goes the full way.  Linear: the local part's repetition is
# bounded (64) and a domain cannot hold `@`, so the match's `@` is the last one.
_ASCII_DOMAIN_PART = (r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                      r"(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})")
_ASCII_DOMAIN = re.compile(_ASCII_DOMAIN_PART)
_ASCII_MAILBOX = re.compile(r"[\x20-\x7e]{1,64}@" + _ASCII_DOMAIN_PART)


def normalize_domain(domain: str) -> str:
    """A domain in the form addresses compare by: lower-case A-labels (UTS #46, non-transitional,
    via `idna`).  ASCII domains are only lower-cased; a domain IDNA refuses stays as sent,
    lower-cased.  Never raises."""
    lowered = domain.lower()
    if lowered.isascii() or len(domain) > _MAX_IDNA_INPUT:
        return lowered
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return lowered


def normalize_address(address: str) -> str:
    """`local@domain` lower-cased with the domain (after the last `@`) as A-labels; text
    without `@` (the null sender `""`, a bare local part) is only lower-cased.  Never
    raises."""
    if address.isascii():
        return address.lower()
    at = address.rfind("@")
    if at < 0:
        return address.lower()
    return address[:at].lower() + "@" + normalize_domain(address[at + 1:])


def comparison_form(text: str) -> str:
    """Plain text compared with an address value, in the same normal form: an address
    (text with `@`) as `normalize_address`, text without `@` as a domain
    (`normalize_domain`), so `"bücher.example"` equals `domain("a@xn--bcher-kva.example")`."""
    if text.isascii():
        return text.lower()
    return normalize_address(text) if "@" in text else normalize_domain(text)


def domain(address: str) -> str:
    """The part after the last `@`, normalised ("" when there is none)."""
    at = address.rfind("@")
    return normalize_domain(address[at + 1:]) if at >= 0 else ""


def local_part(address: str) -> str:
    """The part before the last `@` (the whole text when there is none)."""
    at = address.rfind("@")
    return address[:at] if at >= 0 else address


SUBADDRESS_SEPARATOR = "+"
"""RFC 5233 sub-addressing: the local part is `user+detail`; Stalwart's default separator."""


def _split_detail(address: str, separator: str) -> tuple[str, str | None, str]:
    """(user, detail or None without a separator, "@domain" or "") of an address split at
    its last `@`; the local part splits at the first `separator` (RFC 5233 §1: `a+b+c`
    has user `a`, detail `b+c`).  A local part that starts with the separator has no
    user, and an empty separator never matches: neither is split."""
    at = address.rfind("@")
    local, rest = (address[:at], address[at:]) if at >= 0 else (address, "")
    cut = local.find(separator) if separator else -1
    if cut <= 0:
        return local, None, rest
    return local[:cut], local[cut + len(separator):], rest


def user(address: str, separator: str = SUBADDRESS_SEPARATOR) -> str:
    """The local part without its `+detail` (RFC 5233 "user"): `user("gemuese+ernte@x")`
    is `gemuese`; without a `+` the whole local part.  Linear, never raises."""
    return _split_detail(address, separator)[0]


def detail(address: str, separator: str = SUBADDRESS_SEPARATOR) -> str:
    """The local part's text after its first `+` (RFC 5233 "detail"): `ernte` for
    `gemuese+ernte@x`, `b+c` for `a+b+c@x`; `""` without a `+` and for `a+@x`."""
    return _split_detail(address, separator)[1] or ""


def without_detail(address: str, separator: str = SUBADDRESS_SEPARATOR) -> str:
    """The address with its `+detail` removed (`gemuese+ernte@x` → `gemuese@x`), as written
    otherwise; unchanged without a `+`.  `separator`: another one, as Stalwart's
    sub-addressing setting may use (`-`); "" splits nothing.  Linear, never raises."""
    name, found, rest = _split_detail(address, separator)
    return address if found is None else name + rest


def _local_char_ok(ch: str) -> bool:
    code = ord(ch)
    # Printable ASCII including space (qtextSMTP and quoted-pairSMTP, RFC 5321 §4.1.2) and
    # non-ASCII (UTF8-non-ascii, RFC 6531 §3.3) except C1 controls and lone surrogates.
    return 0x20 <= code <= 0x7E or (code >= 0xA0 and not 0xD800 <= code <= 0xDFFF)


def valid_local_part(local: str) -> bool:
    """Valid as an RFC 5321 Dot-string or as the content of a Quoted-string after Stalwart's
    dequoting (SMTPUTF8 allowed): non-empty, printable, at most 64 octets in UTF-8.

    Every Dot-string is also valid Quoted-string content, so the test is on characters and
    length.  An empty local part (`""@domain` dequoted) is refused."""
    if not local or len(local) > MAX_LOCAL_OCTETS:
        return False
    if not all(_local_char_ok(ch) for ch in local):
        return False
    return local.isascii() or len(local.encode("utf-8")) <= MAX_LOCAL_OCTETS


def valid_domain(domain: str) -> bool:
    """A fully qualified domain (two labels at least; a single label is not valid) of LDH
    labels or U-labels, at most 253 octets; or an address literal with valid contents:
    `[192.0.2.1]` or `[IPv6:2001:db8::1]` (the tag case-insensitive), RFC 5321 §4.1.3."""
    if len(domain) <= MAX_DOMAIN_OCTETS and _ASCII_DOMAIN.fullmatch(domain) is not None:
        return True
    if domain.startswith("["):
        return _valid_literal(domain)
    if not domain or len(domain) > MAX_DOMAIN_OCTETS:
        return False
    if not domain.isascii() and any(0xD800 <= ord(ch) <= 0xDFFF for ch in domain):
        return False
    if not domain.isascii() and len(domain.encode("utf-8")) > MAX_DOMAIN_OCTETS:
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    if any(_LABEL.fullmatch(label) is None for label in labels[:-1]):
        return False
    return _TOP_LABEL.fullmatch(labels[-1]) is not None


def _valid_literal(literal: str) -> bool:
    if not literal.endswith("]") or len(literal) < 3:
        return False
    content = literal[1:-1]
    if content[:5].lower() == "ipv6:":
        if "%" in content:  # a scope id: not in RFC 5321's IPv6-addr (ipaddress takes one)
            return False
        try:
            ipaddress.IPv6Address(content[5:])
        except ValueError:
            return False
        return True
    if _IPV4_LITERAL.fullmatch(content) is None:
        return False
    return all(int(part) <= 255 for part in content.split("."))


def valid_address(address: str) -> bool:
    """A syntactically valid mailbox as Stalwart hands it over: split at the last `@`, a
    valid local part (`valid_local_part`) and domain (`valid_domain`), at most 254 octets.
    Source: RFC 5321 §4.1.2–§4.1.3 and §4.5.3.1, RFC 6531 §3.3."""
    if len(address) <= MAX_ADDRESS_OCTETS and _ASCII_MAILBOX.fullmatch(address) is not None:
        return True  # the domain is then at most 252 octets
    at = address.rfind("@")
    if at < 0 or len(address) > MAX_ADDRESS_OCTETS:
        return False
    if not address.isascii() and len(address.encode("utf-8", "replace")) > MAX_ADDRESS_OCTETS:
        return False
    return valid_local_part(address[:at]) and valid_domain(address[at + 1:])


def valid_address_or_domain(text: str) -> bool:
    """What an `address` column holds (schema file): a mailbox (`valid_address`) when the
    text has an `@`, else a domain (`valid_domain`); "" (no address, as the null sender)
    is valid.  Used alike by `db import` and by the replica, so both take the same rows."""
    if not text:
        return True
    return valid_address(text) if "@" in text else valid_domain(text)

