"""Lookup keys as the indexes hold them: one normal form per column meaning.

An address key is compared case-insensitively and by the domain's A-label (IDNA 2008 via
the `idna` package, UTS #46 mapping), so `Anna@BÜCHER.example`, `anna@bücher.example` and
`anna@xn--bcher-kva.example` are one key.  A text that is not a valid IDN keeps its
lower-case form (it can still match a stored value written the same way).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ..addresses import comparison_form
from .schema import BadValue, Column, decode_value


def address_key(text: str) -> str:
    """`local@domain` (or a bare domain) lower-cased with the domain as A-label (the
    language's one address normal form, `komm_policy.addresses`)."""
    return comparison_form(text.strip())


def column_key(column: Column, value: Any) -> Any:
    """The index key of a stored (decoded) value of `column`."""
    if value is None:
        return None
    if column.type == "address":
        key = address_key(value)
        return value if key == value else key  # one string per row, not two
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


def key_normalizer(column: Column) -> Callable[[Any], Any]:
    """`lookup_key` for one column, specialised once (the common cases without a call)."""
    kind = column.type
    if kind == "address":
        def address(value: Any) -> Any:
            if value.__class__ is not str:
                return None
            text = value.strip()  # `address_key`, its ASCII case without a call
            return text.lower() if text.isascii() else comparison_form(text)
        return address
    if kind in ("text", "enum"):
        def text(value: Any) -> Any:
            return value if value.__class__ is str else None
        return text
    if kind == "bool":
        def boolean(value: Any) -> Any:
            return value if value.__class__ is bool else lookup_key(column, value)
        return boolean
    if kind == "integer":
        def integer(value: Any) -> Any:
            return value if value.__class__ is int else lookup_key(column, value)
        return integer
    if kind == "identity":
        def identity(value: Any) -> Any:
            # an identity as the replica holds it is its own key; anything else is
            # decoded (`columns._identity`), about 2 µs
            if value.__class__ is str and len(value) == 64 and _IDENTITY_KEY.fullmatch(value):
                return value
            return lookup_key(column, value)
        return identity
    return lambda value: lookup_key(column, value)


_IDENTITY_KEY = re.compile("[0-9a-f]{64}")
"""An identity in its normal form (`columns._identity`: 64 lower-case hex digits)."""
