"""SATS types and a schema-driven decoder for SpacetimeDB's JSON values.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

MAX_DEPTH = 32
"""How deep a type may nest (through `Ref`s included) before the decoder refuses it."""

EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)

INT_RANGES: dict[str, tuple[int, int]] = {
    "U8": (0, 2**8 - 1), "U16": (0, 2**16 - 1), "U32": (0, 2**32 - 1),
    "U64": (0, 2**64 - 1), "U128": (0, 2**128 - 1), "U256": (0, 2**256 - 1),
    "I8": (-(2**7), 2**7 - 1), "I16": (-(2**15), 2**15 - 1), "I32": (-(2**31), 2**31 - 1),
    "I64": (-(2**63), 2**63 - 1), "I128": (-(2**127), 2**127 - 1),
    "I256": (-(2**255), 2**255 - 1),
}
PRIMITIVES = frozenset({"Bool", "String", "F32", "F64", *INT_RANGES})

# Magic field names of the special product types (`crates/sats/src/product_type.rs`).
IDENTITY = "__identity__"
CONNECTION_ID = "__connection_id__"
TIMESTAMP = "__timestamp_micros_since_unix_epoch__"
TIME_DURATION = "__time_duration_micros__"
UUID = "__uuid__"
SPECIAL_NAMES = {IDENTITY: "Identity", CONNECTION_ID: "ConnectionId",
                 TIMESTAMP: "Timestamp", TIME_DURATION: "TimeDuration", UUID: "Uuid"}


class SatsError(ValueError):
    """A value (or a type) that does not have the expected SATS shape.

    `path` is a JSON path into the decoded document, e.g. `$[3].code`."""

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def within(self, step: str) -> SatsError:
        """The same error one level further out (`step` is `[3]` or `.name`)."""
        return SatsError(self.message, "$" + step + self.path[1:])

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class Variant(NamedTuple):
    """A value of a sum type that is neither an `Option` nor a plain enum."""

    name: str
    value: Any


# ---------------------------------------------------------------------------------------
# Types


@dataclass(frozen=True, slots=True)
class Prim:
    name: str  # one of PRIMITIVES


@dataclass(frozen=True, slots=True)
class ArrayType:
    elem: SatsType


@dataclass(frozen=True, slots=True)
class ProductType:
    elements: tuple[tuple[str | None, SatsType], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name or str(i) for i, (name, _) in enumerate(self.elements))


@dataclass(frozen=True, slots=True)
class SumType:
    variants: tuple[tuple[str | None, SatsType], ...]


@dataclass(frozen=True, slots=True)
class Ref:
    index: int


SatsType = Prim | ArrayType | ProductType | SumType | Ref

UNIT = ProductType(())


def parse_type(raw: Any, path: str = "$") -> SatsType:
    """An `AlgebraicType` from its typed SATS-JSON: `{"U64": []}`, `{"Ref": 3}`,
    `{"Array": T}`, `{"Product": {"elements": [...]}}`, `{"Sum": {"variants": [...]}}`
    (`crates/sats/src/algebraic_type.rs`).  The stale `{"Builtin": …}` wrapper of the
    docs is accepted too.  Raises `SatsError`."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise SatsError("expected a type: an object with one key", path)
    ((kind, body),) = raw.items()
    if kind == "Builtin":
        return parse_type(body, path + ".Builtin")
    if kind in PRIMITIVES:
        return Prim(kind)
    if kind == "Ref":
        if not isinstance(body, int) or isinstance(body, bool) or body < 0:
            raise SatsError("a Ref is a non-negative number", path + ".Ref")
        return Ref(body)
    if kind == "Array":
        return ArrayType(parse_type(body, path + ".Array"))
    if kind == "Map":  # pre-1.0 servers; a map is an array of key/value products here
        raise SatsError("Map types are not supported", path)
    if kind in ("Product", "Sum"):
        key = "elements" if kind == "Product" else "variants"
        if not isinstance(body, dict) or not isinstance(body.get(key), list):
            raise SatsError(f"a {kind} type has a `{key}` list", f"{path}.{kind}")
        members = tuple(_parse_member(m, f"{path}.{kind}.{key}[{i}]")
                        for i, m in enumerate(body[key]))
        return ProductType(members) if kind == "Product" else SumType(members)
    raise SatsError(f"unknown type kind {kind!r}", path)


def _parse_member(raw: Any, path: str) -> tuple[str | None, SatsType]:
    if not isinstance(raw, dict) or "algebraic_type" not in raw:
        raise SatsError("expected {\"name\": …, \"algebraic_type\": …}", path)
    return parse_option_str(raw.get("name"), path + ".name"), parse_type(
        raw["algebraic_type"], path + ".algebraic_type")


def parse_option_str(raw: Any, path: str) -> str | None:
    """An `Option<String>` in typed SATS-JSON: `{"some": "x"}` or `{"none": []}`."""
    if raw is None or raw == {"none": []} or raw == {"none": {}}:
        return None
    if isinstance(raw, dict) and isinstance(raw.get("some"), str) and len(raw) == 1:
        return raw["some"]
    raise SatsError("expected {\"some\": name} or {\"none\": []}", path)


def special_kind(t: SatsType) -> str | None:
    """`Identity`, `Timestamp`, … when `t` is one of the special wrapper products."""
    if isinstance(t, ProductType) and len(t.elements) == 1:
        return SPECIAL_NAMES.get(t.elements[0][0] or "")
    return None


def option_inner(t: SatsType) -> SatsType | None:
    """The `T` of `Option<T>` (a sum of exactly `some: T`, `none: ()`), else None."""
    if (isinstance(t, SumType) and len(t.variants) == 2 and t.variants[0][0] == "some"
            and t.variants[1][0] == "none" and t.variants[1][1] == UNIT):
        return t.variants[0][1]
    return None


class Typespace:
    """The module's types (`RawModuleDefV9.typespace`), resolving `Ref`s; `names` maps a
    type index to its declared name (from `types`), for messages."""

    def __init__(self, types: Sequence[SatsType] = (),
                 names: Mapping[int, str] | None = None) -> None:
        self.types = tuple(types)
        self.names = dict(names or {})

    def resolve(self, t: SatsType, path: str = "$") -> SatsType:
        """`t` with its outer `Ref`s followed (a chain longer than MAX_DEPTH is refused)."""
        for _ in range(MAX_DEPTH):
            if not isinstance(t, Ref):
                return t
            if t.index >= len(self.types):
                raise SatsError(f"Ref {t.index} is not in the typespace "
                                f"({len(self.types)} types)", path)
            t = self.types[t.index]
        raise SatsError("Ref chain too long (recursive type?)", path)

    def describe(self, t: SatsType, depth: int = 0) -> str:
        """A readable, structural name: `U64`, `Option<String>`, `Identity`,
        `Array<U8>`, `Status(Active|Blocked)`, `(a: U8, b: String)`.  Two columns of the
        same shape describe the same, whatever their `Ref` numbers."""
        if depth > MAX_DEPTH:
            return "…"
        name = self.names.get(t.index) if isinstance(t, Ref) else None
        t = self.resolve(t)
        if isinstance(t, Prim):
            return t.name
        if isinstance(t, ArrayType):
            return f"Array<{self.describe(t.elem, depth + 1)}>"
        kind = special_kind(t)
        if kind:
            return kind
        inner = option_inner(t)
        if inner is not None:
            return f"Option<{self.describe(inner, depth + 1)}>"
        if isinstance(t, SumType):
            parts = [v or str(i) if self.resolve(vt) == UNIT
                     else f"{v or i}({self.describe(vt, depth + 1)})"
                     for i, (v, vt) in enumerate(t.variants)]
            return f"{name or 'enum'}({'|'.join(parts)})"
        assert isinstance(t, ProductType)
        parts = [f"{n or i}: {self.describe(et, depth + 1)}"
                 for i, (n, et) in enumerate(t.elements)]
        return f"{name or ''}({', '.join(parts)})"


    def to_json(self, t: SatsType, depth: int = 0) -> Any:
        """`t` as typed SATS-JSON with every `Ref` resolved (the form `/sql` answers
        carry), e.g. for `directory.schema.column_from_sats`."""
        if depth > MAX_DEPTH:
            raise SatsError("type nests too deeply (recursive type?)")
        t = self.resolve(t)
        if isinstance(t, Prim):
            return {t.name: []}
        if isinstance(t, ArrayType):
            return {"Array": self.to_json(t.elem, depth + 1)}
        key, members = (("elements", t.elements) if isinstance(t, ProductType)
                        else ("variants", t.variants))
        return {type(t).__name__.removesuffix("Type"): {key: [
            {"name": {"some": n} if n is not None else {"none": []},
             "algebraic_type": self.to_json(mt, depth + 1)} for n, mt in members]}}


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
