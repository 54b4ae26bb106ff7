"""SATS (the SpacetimeDB Algebraic Type System) types as SpacetimeDB's JSON describes them.

`parse_type` reads an `AlgebraicType` of a module definition (`crates/sats/src/
algebraic_type.rs`; reference note `spacetimedb.md` §2.2) into `Prim`, `ArrayType`,
`ProductType`, `SumType` or `Ref`; a `Typespace` resolves `Ref`s, describes types for
messages and writes them back as JSON.  `SatsError` carries the JSON path of what was
wrong.  The decoder of values of these types is `sats.Decoder`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
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
