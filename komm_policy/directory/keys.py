"""Lookup keys as the indexes hold them: one normal form per column meaning.

An address key is compared case-insensitively and by the domain's A-label (IDNA 2008 via
the `idna` package, UTS #46 mapping), so `Anna@BÜCHER.example`, `anna@bücher.example` and
`anna@xn--bcher-kva.example` are one key.  A text that is not a valid IDN keeps its
lower-case form (it can still match a stored value written the same way).
"""

from __future__ import annotations

from typing import Any

from ..addresses import normalize_address
from .schema import BadValue, Column, decode_value


def address_key(text: str) -> str:
    """`local@domain` (or a bare domain) lower-cased with the domain as A-label (the
    language's one address normal form, `komm_policy.addresses`)."""
    return normalize_address(text.strip())


def column_key(column: Column, value: Any) -> Any:
    """The index key of a stored (decoded) value of `column`."""
    if value is None:
        return None
    if column.type == "address":
        return address_key(value)
    return value


def lookup_key(column: Column, value: Any) -> Any:
    """The index key for a value a policy looks up, or `None` when it can match nothing
    (a none key, text that is no valid value of the column)."""
    if value is None:
        return None
    if column.type == "address":
        return address_key(value) if isinstance(value, str) else None
    if column.type in ("text", "enum"):
        return value if isinstance(value, str) else None
    try:
        return decode_value(Column(column.name, column.type, False, column.variants,
                                   column.element), value)
    except BadValue:
        return None
