"""A schema-driven decoder for SpacetimeDB's JSON values (the SATS types: `sats_types`,
re-exported here).

SpacetimeDB writes a value's JSON without its type, and in two shapes (SpacetimeDB
`crates/sats/src/ser/serde.rs`, `crates/table/src/bflatn_from.rs`; see the reference note
`spacetimedb.md` §2.2, §4 and its "Corrections"):

- products (rows, structs, the special `Identity`/`Timestamp`… wrappers) as a positional JSON
  array, or as an object keyed by field name;
- sums (enums, `Option`) as `[tag, payload]`, or as `{"<name>": payload}` /
  `{"<tag>": payload}` in typed envelopes; the unit payload is `[]` or `{}`;
- u8…u64, i8…i64, u128, i128 as JSON numbers; u256/i256 as `"0x…"` strings (ethnum); bytes
  (`Array<U8>`) as a hex string without `0x`.

A decoder is compiled once per type (`Decoder.compile`) into nested closures, so decoding a
row costs one call per field.  Decoded Python values:

| SATS type | Python |
|---|---|
| Bool | `bool` |
| integers (all widths, incl. u128/u256) | `int` (range-checked) |
| F32/F64 | `float` (`null`, which serde writes for NaN/inf, becomes `nan`) |
| String | `str` |
| `Array<U8>` | `bytes` |
| other arrays | `tuple` |
| `Identity` (`__identity__`) | `str`, 64 lowercase hex digits, no `0x` |
| `ConnectionId` (`__connection_id__`) | `int` |
| `Timestamp` | `datetime` (aware, UTC) |
| `TimeDuration` | `timedelta` |
| `Uuid` (`__uuid__`) | `uuid.UUID` |
| `Option<T>` (sum `some`/`none`) | `T` or `None` |
| enum whose variants all carry unit | `str`: the variant's name |
| other sums | `Variant(name, value)` |
| other products | `tuple` of field values (in declared order) |

Everything read from the wire is hostile: wrong shapes raise `SatsError` with a JSON path
(`$[3].code`), numbers out of their type's range are refused, and nesting is bounded by the
type (recursive types through `Ref` are cut at `MAX_DEPTH`).
"""

from __future__ import annotations

import datetime as _dt
import math
import uuid
from collections.abc import Callable
from typing import Any

from .sats_types import (
    CONNECTION_ID,
    EPOCH,
    IDENTITY,
    INT_RANGES,
    MAX_DEPTH,
    PRIMITIVES,
    SPECIAL_NAMES,
    TIME_DURATION,
    TIMESTAMP,
    UNIT,
    UUID,
    ArrayType,
    Prim,
    ProductType,
    Ref,
    SatsError,
    SatsType,
    SumType,
    Typespace,
    Variant,
    option_inner,
    parse_option_str,
    parse_type,
    special_kind,
)

__all__ = [
    "CONNECTION_ID", "EPOCH", "IDENTITY", "INT_RANGES", "MAX_DEPTH", "PRIMITIVES",
    "SPECIAL_NAMES", "TIMESTAMP", "TIME_DURATION", "UNIT", "UUID", "ArrayType", "Decode",
    "Decoder", "Prim", "ProductType", "Ref", "SatsError", "SatsType", "SumType", "Typespace",
    "Variant", "option_inner", "parse_option_str", "parse_type", "special_kind",
]


# ---------------------------------------------------------------------------------------
# Decoder

Decode = Callable[[Any], Any]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


class Decoder:
    """Compiles SATS types into decode functions (JSON value → Python value)."""

    def __init__(self, typespace: Typespace | None = None, *,
                 micros: bool = False) -> None:
        self.typespace = typespace or Typespace()
        self.micros = micros
        """Timestamps and durations as int microseconds (what the directory replica holds)
        instead of `datetime`/`timedelta`."""

    def compile(self, t: SatsType, depth: int = 0) -> Decode:
        """A function decoding one JSON value of type `t`; it raises `SatsError`."""
        if depth > MAX_DEPTH:
            raise SatsError("type nests too deeply (recursive type?)")
        t = self.typespace.resolve(t)
        if isinstance(t, Prim):
            return _primitive(t.name)
        if isinstance(t, ArrayType):
            elem_type = self.typespace.resolve(t.elem)
            if elem_type == Prim("U8"):
                return _bytes
            return _array(self.compile(elem_type, depth + 1))
        kind = special_kind(t)
        if kind:
            if self.micros and kind in ("Timestamp", "TimeDuration"):
                kind = "Micros"
            return _special(kind, t.elements[0][0] or "")  # type: ignore[union-attr]
        if isinstance(t, SumType):
            inner = option_inner(t)
            if inner is not None:
                return _option(self.compile(inner, depth + 1))
            return self._sum(t, depth)
        return self.product(t, depth)

    def product(self, t: ProductType, depth: int = 0) -> Callable[[Any], tuple[Any, ...]]:
        """A function decoding a product (a row) into a tuple of its fields, from either a
        positional array or an object keyed by field names."""
        names = t.names
        fields = tuple(self.compile(et, depth + 1) for _, et in t.elements)
        count = len(fields)
        index = {name: i for i, name in enumerate(names)}
        pairs = tuple(zip(fields, names, strict=True))

        def decode(value: Any) -> tuple[Any, ...]:
            if type(value) is list:
                if len(value) != count:
                    raise SatsError(f"expected {count} fields, found {len(value)}")
                try:
                    return tuple([f(v) for f, v in zip(fields, value, strict=True)])
                except SatsError:
                    for i, (f, v) in enumerate(zip(fields, value, strict=True)):
                        try:
                            f(v)
                        except SatsError as e:
                            raise e.within(f"[{i}]") from None
                    raise
            if type(value) is dict:
                if len(value) != count or not all(k in index for k in value):
                    extra = sorted(set(value) - index.keys())
                    missing = [n for n in names if n not in value]
                    raise SatsError("fields do not match: " + "; ".join(
                        part for part in (
                            f"unknown {', '.join(map(repr, extra))}" if extra else "",
                            f"missing {', '.join(map(repr, missing))}" if missing else "")
                        if part))
                out = []
                for f, name in pairs:
                    try:
                        out.append(f(value[name]))
                    except SatsError as e:
                        raise e.within(f".{name}") from None
                return tuple(out)
            raise SatsError(f"expected a product (array or object), found {_kind(value)}")

        return decode

    def _sum(self, t: SumType, depth: int) -> Decode:
        names = tuple(name or str(i) for i, (name, _) in enumerate(t.variants))
        units = tuple(self.typespace.resolve(vt) == UNIT for _, vt in t.variants)
        payloads = tuple(self.compile(vt, depth + 1) for _, vt in t.variants)
        plain_enum = all(units)
        by_key = {name: i for i, name in enumerate(names)}
        by_key.update({str(i): i for i in range(len(names))})

        def decode(value: Any) -> Any:
            if type(value) is list and len(value) == 2:
                tag, payload = value
                if type(tag) is not int or not 0 <= tag < len(names):
                    raise SatsError(f"unknown variant tag {tag!r} "
                                    f"(the type has {len(names)} variants)")
            elif type(value) is dict and len(value) == 1:
                ((key, payload),) = value.items()
                tag = by_key.get(key)
                if tag is None:
                    raise SatsError(f"unknown variant {key!r}; expected one of "
                                    f"{', '.join(names)}")
            else:
                raise SatsError(f"expected a sum ([tag, value] or {{\"variant\": value}}), "
                                f"found {_kind(value)}")
            try:
                decoded = payloads[tag](payload)
            except SatsError as e:
                raise e.within(f".{names[tag]}") from None
            if plain_enum:
                return names[tag]
            return Variant(names[tag], None if units[tag] else decoded)

        return decode


def _primitive(name: str) -> Decode:
    if name == "Bool":
        def boolean(value: Any) -> bool:
            if type(value) is not bool:
                raise SatsError(f"expected a boolean, found {_kind(value)}")
            return value
        return boolean
    if name == "String":
        def string(value: Any) -> str:
            if type(value) is not str:
                raise SatsError(f"expected a string, found {_kind(value)}")
            return value
        return string
    if name in ("F32", "F64"):
        def number(value: Any) -> float:
            if value is None:
                return math.nan
            if type(value) not in (int, float):
                raise SatsError(f"expected a number, found {_kind(value)}")
            return float(value)
        return number
    low, high = INT_RANGES[name]
    wide = name in ("U128", "I128", "U256", "I256")

    def integer(value: Any) -> int:
        if type(value) is not int:
            if not (wide and type(value) is str):
                raise SatsError(f"expected {name} (a number), found {_kind(value)}")
            value = _parse_big(value, name)
        if not low <= value <= high:
            raise SatsError(f"{value} is out of range for {name}")
        return value

    return integer


def _parse_big(text: str, name: str) -> int:
    """A u128…i256 written as a string: `"0x…"`, `"-0x…"` (ethnum) or decimal."""
    if len(text) > 80:
        raise SatsError(f"{name} string too long ({len(text)} characters)")
    body = text[1:] if text.startswith("-") else text
    try:
        number = int(body[2:], 16) if body[:2] in ("0x", "0X") else int(body, 10)
    except ValueError:
        raise SatsError(f"{text!r} is not a {name} (expected \"0x…\" hex)") from None
    if "_" in body or " " in body:
        raise SatsError(f"{text!r} is not a {name} (expected \"0x…\" hex)")
    return -number if text.startswith("-") else number


def _bytes(value: Any) -> bytes:
    if type(value) is str:
        try:
            return bytes.fromhex(value[2:] if value.startswith("0x") else value)
        except ValueError:
            raise SatsError("expected bytes as a hex string") from None
    if type(value) is list and all(type(b) is int and 0 <= b <= 255 for b in value):
        return bytes(value)
    raise SatsError(f"expected bytes (a hex string), found {_kind(value)}")


def _array(elem: Decode) -> Decode:
    def decode(value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise SatsError(f"expected an array, found {_kind(value)}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(elem(v))
            except SatsError as e:
                raise e.within(f"[{i}]") from None
        return tuple(out)
    return decode


def _option(inner: Decode) -> Decode:
    def decode(value: Any) -> Any:
        if type(value) is list and len(value) == 2:
            tag, payload = value
        elif type(value) is dict and len(value) == 1:
            ((key, payload),) = value.items()
            tag = {"some": 0, "0": 0, "none": 1, "1": 1}.get(key)
        elif value is None:
            return None
        else:
            raise SatsError(f"expected an option ([0, value] or [1, []]), found "
                            f"{_kind(value)}")
        if tag == 0:
            try:
                return inner(payload)
            except SatsError as e:
                raise e.within(".some") from None
        if tag == 1 and payload in ([], {}):
            return None
        raise SatsError(f"expected an option ([0, value] or [1, []]), found {value!r:.60}")
    return decode


def _special(kind: str, field: str) -> Decode:
    convert: Callable[[Any], Any]
    if kind == "Identity":
        check = _primitive("U256")
        def convert(v: Any) -> str:
            return format(check(v), "064x")
    elif kind == "ConnectionId":
        convert = _primitive("U128")
    elif kind == "Micros":
        convert = _primitive("I64")
    elif kind == "Timestamp":
        check = _primitive("I64")
        def convert(v: Any) -> _dt.datetime:
            try:
                return EPOCH + _dt.timedelta(microseconds=check(v))
            except OverflowError:
                raise SatsError(f"timestamp {v} is out of range") from None
    elif kind == "TimeDuration":
        check = _primitive("I64")
        def convert(v: Any) -> _dt.timedelta:
            try:
                return _dt.timedelta(microseconds=check(v))
            except OverflowError:
                raise SatsError(f"duration {v} is out of range") from None
    else:
        check = _primitive("U128")
        def convert(v: Any) -> uuid.UUID:
            return uuid.UUID(int=check(v))

    def decode(value: Any) -> Any:
        if type(value) is list and len(value) == 1:
            inner = value[0]
        elif type(value) is dict and len(value) == 1 and field in value:
            inner = value[field]
        else:
            raise SatsError(f"expected {kind} ([value] or {{\"{field}\": value}}), "
                            f"found {_kind(value)}")
        try:
            return convert(inner)
        except SatsError as e:
            raise e.within(f".{field}") from None

    return decode
