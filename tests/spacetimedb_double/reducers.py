"""Reducer calls in the double: argument checking and the decision-log reducer's effect.

`POST /v1/database/{db}/call/{reducer}` as SpacetimeDB answers it
(`crates/client-api/src/routes/database.rs` `call`, `crates/core/src/host/mod.rs`
`FunctionArgs`; reference note `spacetimedb.md` §2.3): 415 unless the Content-Type is JSON,
404 `No such procedure` for an unknown name, 400 `invalid arguments for reducer {name}: …`
when the body does not fit the parameters (a JSON array, positional, or an object by
parameter name), 530 with the reducer's error text when it fails, 200 with an empty body.

Every reducer of the double acts like the example reducer of the README (decision log):
each `(id, record)` pair in its arguments — top-level parameters `id` and `record`, or the
elements of an array parameter of structs with those fields — is inserted into the
database's `logged` table once; an id already there is success and changes nothing.
"""

from __future__ import annotations

from typing import Any

from .wire import PRIMITIVE, Module, split_generic

_INTS = {"U8", "U16", "U32", "U64", "U128", "I8", "I16", "I32", "I64", "I128"}


class ArgError(Exception):
    pass


def json_content_type(value: str | None) -> bool:
    """axum's `json_content_type`: `application/json` or `application/*+json`, any
    parameters."""
    if not value:
        return False
    mime = value.split(";", 1)[0].strip().lower()
    kind, _, sub = mime.partition("/")
    return kind == "application" and (sub == "json" or sub.endswith("+json"))


def check(module: Module, t: str, value: Any, path: str) -> Any:
    """`value` as the plain value of type `t`; `ArgError` with a serde-like message."""
    head, arg = split_generic(t)
    if t == "String":
        if not isinstance(value, str):
            raise ArgError(f"invalid type: {_kind(value)}, expected a string at {path}")
        return value
    if t == "Bool":
        if not isinstance(value, bool):
            raise ArgError(f"invalid type: {_kind(value)}, expected a boolean at {path}")
        return value
    if t in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ArgError(f"invalid type: {_kind(value)}, expected an integer at {path}")
        return value
    if t in PRIMITIVE:
        return value
    if head == "Array" and arg:
        if not isinstance(value, list):
            raise ArgError(f"invalid type: {_kind(value)}, expected a sequence at {path}")
        return [check(module, arg, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if t.startswith("Ref:"):
        declared = module.types.get(t[4:], {})
        fields = declared.get("struct")
        if fields is None:
            return value
        return product(module, list(fields.items()), value, path)
    return value


def product(module: Module, params: list[tuple[str, str]], value: Any, path: str
            ) -> dict[str, Any]:
    """A product given as a positional array or an object by field name."""
    if isinstance(value, list):
        if len(value) != len(params):
            raise ArgError(f"invalid length {len(value)}, expected {len(params)} "
                           f"elements at {path or '$'}")
        pairs = zip(params, value, strict=True)
        return {n: check(module, t, v, f"{path}.{n}") for (n, t), v in pairs}
    if isinstance(value, dict):
        out = {}
        for name, t in params:
            if name not in value:
                raise ArgError(f"missing field `{name}` at {path or '$'}")
            out[name] = check(module, t, value[name], f"{path}.{name}")
        return out
    raise ArgError(f"invalid type: {_kind(value)}, expected a product at {path or '$'}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    if isinstance(value, int | float):
        return f"number {value}"
    if value is None:
        return "null"
    return "sequence" if isinstance(value, list) else "map"


def logged_pairs(args: dict[str, Any]) -> list[tuple[str, str]]:
    """The `(id, record)` pairs a call carries (see the module docstring)."""
    if isinstance(args.get("id"), str) and isinstance(args.get("record"), str):
        return [(args["id"], args["record"])]
    pairs = []
    for value in args.values():
        if isinstance(value, list):
            pairs += [(v["id"], v["record"]) for v in value
                      if isinstance(v, dict) and isinstance(v.get("id"), str)
                      and isinstance(v.get("record"), str)]
    return pairs
