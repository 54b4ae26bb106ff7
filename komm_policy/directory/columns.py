"""A directory column's meaning, and the values the replica holds for each meaning.

A backend stores columns as its own types; the *meaning* (the schema file's `type`, see
`schema`) says how a value is read and compared.

Column types (meanings) and the values the replica holds for them (`decode_value`):

=========  ============================================  ================================
meaning    value in a row                                SQLite / SATS storage
=========  ============================================  ================================
text       str                                           TEXT / String
address    str, lower-case                               TEXT / String
network    `ipaddress` network (a host is a /32, /128)   TEXT / String
enum       str, the variant name                         TEXT / sum of unit variants
bool       bool                                          INTEGER 0/1 / Bool
integer    int                                           INTEGER / I8…I256, U8…U256
float      float                                         REAL / F32, F64
timestamp  int, microseconds since the Unix epoch        INTEGER seconds / Timestamp
identity   str, 64 lower-case hex digits                 TEXT hex / Identity
list       tuple of `element` values                     (JSON text) / Array, Vec
=========  ============================================  ================================

`optional = true` allows none (SQL NULL, SATS `Option`).  A value that does not fit its
column raises `BadValue`; the replica skips such a row with a warning, `db import` refuses
the whole file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..addresses import valid_address_or_domain
from ..ipset import normalize_network

MEANINGS = ("text", "address", "network", "enum", "bool", "integer", "float", "timestamp",
            "identity", "list")
"""Every column meaning the schema file may name."""

INDEXABLE = frozenset({"text", "address", "network", "enum", "bool", "integer",
                       "timestamp", "identity"})
"""Meanings a lookup key can use (a float or a list column has no usable index)."""


class BadValue(ValueError):
    """A stored or imported value does not fit its column (message says why)."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its name, meaning, and for enums the variants, for lists the element."""

    name: str
    type: str
    optional: bool = False
    variants: tuple[str, ...] = ()
    element: str | None = None
    storage: str = ""
    """The backend's own type as `db schema` read it (a comment in the file)."""


# -- values ------------------------------------------------------------------------------


SHOWN_CHARS = 80
"""A value in a `BadValue` message is cut to this many characters (a megabyte cell must
not become a megabyte log line or error)."""


def _clipped(text: str) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}… ({len(text):,} characters)"


def _shown(value: Any) -> str:
    """`repr(value)` for messages, at most about `SHOWN_CHARS` characters."""
    if isinstance(value, str | bytes) and len(value) > SHOWN_CHARS:
        return f"{value[:SHOWN_CHARS]!r}… ({len(value):,} characters)"
    return _clipped(repr(value))


def decode_value(column: Column, value: Any) -> Any:
    """A backend's value for `column` as the replica holds it (see the table above).
    Raises `BadValue` naming what is wrong."""
    if value is None:
        if column.optional:
            return None
        raise BadValue(f"column {column.name} is not optional but has no value (NULL)")
    return _DECODERS[column.type](column, value)


def _text(column: Column, value: Any) -> str:
    if not isinstance(value, str):
        raise BadValue(f"column {column.name} wants text, got {_shown(value)}")
    return value


_SPACE = re.compile(r"\s")
"""Unicode white space, as `str.isspace` (one C scan instead of a generator per row)."""


def _address(column: Column, value: Any) -> str:
    text = _text(column, value).strip()
    # "" stays: no address (as the null sender).  The language's own check, so the
    # replica holds what `db import` would take (a row it refuses is skipped, counted).
    if _SPACE.search(text) or not valid_address_or_domain(text):
        raise BadValue(f"column {column.name}: {_shown(value)} is not an address or domain "
                       "(as valid_address checks it: local@domain, or a domain)")
    return text.lower()


def _network(column: Column, value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        if getattr(value.network_address, "scope_id", None) is None:
            return normalize_network(value)
        value = str(value)  # refused below, with the text
    text = _text(column, value).strip()
    if "%" in text:
        # `ipaddress` takes an RFC 4007 scope id and drops it from comparisons, so the
        # row would block the address on every interface; the wire refuses one in
        # client.ip (Stalwart never sends it), and so does the store.
        scope = text[text.index("%"):].split("/", 1)[0]
        raise BadValue(f"column {column.name}: {_shown(text)} is not an IP address or network "
                       f"(a scope id ({_clipped(scope)}) names an interface; client "
                       "addresses never carry one)")
    try:
        return normalize_network(ipaddress.ip_network(text, strict=True))
    except ValueError as exc:
        raise BadValue(f"column {column.name}: {_shown(text)} is not an IP address or network "
                       f"({_clipped(str(exc))})") from None


def _enum(column: Column, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(
            column.variants):
        return column.variants[value]  # a SATS sum tag
    if isinstance(value, str) and value in column.variants:
        return value
    raise BadValue(f"column {column.name}: {_shown(value)} is not one of "
                   f"{', '.join(column.variants)}")


def _bool(column: Column, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise BadValue(f"column {column.name} wants a bool (or 0/1), got {_shown(value)}")


def _integer(column: Column, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)  # SATS sends u256 and wide ints as decimal text
    raise BadValue(f"column {column.name} wants an integer, got {_shown(value)}")


def _float(column: Column, value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise BadValue(f"column {column.name} wants a number, got {_shown(value)}")


def _timestamp(column: Column, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        # SQLite stores Unix seconds (strftime('%s')); SATS sends microseconds.  Values
        # below 10^11 cannot be microseconds of any date after 1970-01-02.
        return value * 1_000_000 if abs(value) < 10**11 else value
    if isinstance(value, Mapping) and "__timestamp_micros_since_unix_epoch__" in value:
        return _timestamp(column, value["__timestamp_micros_since_unix_epoch__"])
    raise BadValue(f"column {column.name} wants a timestamp, got {_shown(value)}")


_HEX = re.compile(r"(?:0x)?([0-9a-fA-F]{1,64})")


def _identity(column: Column, value: Any) -> str:
    if isinstance(value, Mapping) and len(value) == 1:
        (value,) = value.values()
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"{value:064x}"
    if isinstance(value, str):
        match = _HEX.fullmatch(value.strip())
        if match:
            return match.group(1).lower().rjust(64, "0")
    raise BadValue(f"column {column.name} wants an identity (hex), got {_shown(value)}")


def _list(column: Column, value: Any) -> tuple[Any, ...]:
    if isinstance(value, str):
        import json
        try:
            value = json.loads(value)
        except ValueError:
            raise BadValue(f"column {column.name} wants a list, got {_shown(value)}") from None
    if not isinstance(value, list | tuple):
        raise BadValue(f"column {column.name} wants a list, got {_shown(value)}")
    element = Column(column.name, column.element or "text")
    return tuple(decode_value(element, v) for v in value)


_DECODERS = {
    "text": _text, "address": _address, "network": _network, "enum": _enum, "bool": _bool,
    "integer": _integer, "float": _float, "timestamp": _timestamp, "identity": _identity,
    "list": _list,
}


def encode_value(column: Column, value: Any) -> Any:
    """A replica value as JSON (`db export`): networks and identities as text."""
    if value is None:
        return None
    if column.type == "network":
        net = value
        return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    if column.type == "list":
        element = Column(column.name, column.element or "text")
        return [encode_value(element, v) for v in value]
    return value
