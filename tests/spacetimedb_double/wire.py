"""The double's own SATS types and value encoder (independent of komm_policy's decoder, so a
wrong decoder fails the tests instead of agreeing with itself).

Types are written as short strings: `U64`, `String`, `Bool`, `Identity`, `Timestamp`,
`ConnectionId`, `TimeDuration`, `Array<U8>`, `Option<T>`, `Array<T>`, and `Ref:Name` for a
module-defined enum or struct.  Module types are declared as `{"enum": ["A", "B"]}`,
`{"enum": {"A": null, "B": "String"}}` (variant payloads) or `{"struct": {"f": "U8"}}`.

Plain values (what the control API and specs hold): numbers, strings, booleans; identities
as hex strings; timestamps as microseconds; options as `null` or the value; enums as the
variant name (unit) or `[name, payload]`; structs and arrays as lists; bytes as hex strings.

Encodings (SpacetimeDB `crates/sats/src/ser/serde.rs`, `crates/table/src/bflatn_from.rs`):
- "array" (the `/sql` rows and transaction deltas): products positional, sums
  `[tag, payload]` with unit `[]`, specials one-element arrays, u256 `"0x…"` (no leading
  zeros), u128 bare numbers, bytes hex;
- "object" (rows read from table pages, in `InitialSubscription`): products as objects by
  field name (specials `{"__identity__": …}`), sums `[tag, payload]` with unit `{}`, arrays
  positional.
"""

from __future__ import annotations

import json
from typing import Any

PRIMITIVE = {"Bool", "String", "F32", "F64", "U8", "U16", "U32", "U64", "U128", "U256",
             "I8", "I16", "I32", "I64", "I128", "I256"}
SPECIAL = {"Identity": ("__identity__", "U256"), "ConnectionId": ("__connection_id__", "U128"),
           "Timestamp": ("__timestamp_micros_since_unix_epoch__", "I64"),
           "TimeDuration": ("__time_duration_micros__", "I64")}
UNIT_JSON = {"Product": {"elements": []}}


def split_generic(text: str) -> tuple[str, str | None]:
    if text.endswith(">") and "<" in text:
        head, _, rest = text.partition("<")
        return head, rest[:-1]
    return text, None


class Module:
    """Named module types (`{"Status": {"enum": [...]}}`) and their typespace order."""

    def __init__(self, types: dict[str, Any] | None = None) -> None:
        self.types = dict(types or {})

    # -- typed JSON (what /schema and /sql carry) -------------------------------------------
    def type_json(self, t: str, refs: dict[str, int] | None = None) -> Any:
        """The typed SATS-JSON of `t`; `refs` given → module types become `{"Ref": n}`
        (as in /schema), else they are written out (as in /sql)."""
        head, arg = split_generic(t)
        if t in PRIMITIVE:
            return {t: []}
        if t in SPECIAL:
            field, inner = SPECIAL[t]
            return {"Product": {"elements": [{"name": {"some": field},
                                              "algebraic_type": {inner: []}}]}}
        if head == "Option" and arg:
            return {"Sum": {"variants": [
                {"name": {"some": "some"}, "algebraic_type": self.type_json(arg, refs)},
                {"name": {"some": "none"}, "algebraic_type": UNIT_JSON}]}}
        if head == "Array" and arg:
            return {"Array": self.type_json(arg, refs)}
        if t.startswith("Ref:"):
            name = t[4:]
            if refs is not None:
                return {"Ref": refs[name]}
            return self.declared_json(name, None)
        raise ValueError(f"unknown type {t!r}")

    def declared_json(self, name: str, refs: dict[str, int] | None) -> Any:
        decl = self.types[name]
        if "enum" in decl:
            variants = decl["enum"]
            if isinstance(variants, list):
                variants = dict.fromkeys(variants)
            return {"Sum": {"variants": [
                {"name": {"some": v}, "algebraic_type": UNIT_JSON if p is None
                 else self.type_json(p, refs)} for v, p in variants.items()]}}
        return {"Product": {"elements": [
            {"name": {"some": f}, "algebraic_type": self.type_json(ft, refs)}
            for f, ft in decl["struct"].items()]}}

    def variants(self, name: str) -> list[tuple[str, str | None]]:
        variants = self.types[name]["enum"]
        if isinstance(variants, list):
            return [(v, None) for v in variants]
        return list(variants.items())

    # -- values ---------------------------------------------------------------------------
    def encode(self, t: str, value: Any, form: str) -> Any:
        """`value` (plain) as JSON in `form` ("array" or "object")."""
        head, arg = split_generic(t)
        unit: Any = {} if form == "object" else []
        if t in ("U256", "I256"):
            return hex_u256(value)
        if t in PRIMITIVE:
            return value
        if t in SPECIAL:
            field, _inner = SPECIAL[t]
            raw = hex_u256(int(value, 16)) if t == "Identity" else value
            return {field: raw} if form == "object" else [raw]
        if head == "Option" and arg:
            return [1, unit] if value is None else [0, self.encode(arg, value, form)]
        if head == "Array" and arg == "U8":
            return value  # hex already
        if head == "Array" and arg:
            return [self.encode(arg, v, form) for v in value]
        name = t[4:]
        decl = self.types[name]
        if "enum" in decl:
            variants = self.variants(name)
            names = [v for v, _ in variants]
            if isinstance(value, str):
                return [names.index(value), unit]
            tag = names.index(value[0])
            payload_type = variants[tag][1]
            payload = unit if payload_type is None else self.encode(payload_type, value[1], form)
            return [tag, payload]
        fields = list(decl["struct"].items())
        if form == "object":
            return {f: self.encode(ft, v, form) for (f, ft), v in zip(fields, value, strict=True)}
        return [self.encode(ft, v, form) for (f, ft), v in zip(fields, value, strict=True)]

    def encode_row(self, columns: list[tuple[str, str]], row: list[Any], form: str) -> Any:
        if form == "object":
            return {n: self.encode(t, v, form) for (n, t), v in zip(columns, row, strict=True)}
        return [self.encode(t, v, form) for (_, t), v in zip(columns, row, strict=True)]


def hex_u256(value: int | str) -> str:
    """ethnum's `{:#x}`: lowercase, no leading zeros, `-` before a negative."""
    if isinstance(value, str):
        value = int(value, 16)
    return ("-" if value < 0 else "") + format(abs(value), "#x")


def dumps(value: Any) -> str:
    """JSON as serde_json writes it: compact, non-ASCII raw."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
