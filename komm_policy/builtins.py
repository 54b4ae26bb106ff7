"""The built-in functions policies can call: signatures for the checker, code for the compiler.

Three kinds: `pure` functions of their arguments (folded at load time when the arguments are
constants), `request` functions that read the current message (`header`, `headers`), and
`table` lookups answered by the directory's tables (`lookup`, `lookup_all`, `exists`:
memoised per decision, subject to the lookup timeout and the policy's `on error` fallback).
The organisation's helpers are policy-defined functions over tables, not built-ins.  The
registry is a read-only mapping passed to the checker and compiler, so tests can hand in
their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from . import types as t
from .address_list import address_list
from .addresses import detail, domain, local_part, user, valid_address, without_detail

Kind = Literal["pure", "request", "table"]


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    kinds: frozenset[str]
    """Accepted type kinds; `string` and `address` are interchangeable."""

    def accepts(self, type_: t.Type) -> bool:
        if type_.is_any or type_.kind == "none":
            return True
        kinds = self.kinds
        if type_.is_text:
            return bool(kinds & {"string", "address"})
        return type_.kind in kinds

    def describe(self) -> str:
        return " or ".join(sorted(t.kind_name(kind) for kind in self.kinds))


@dataclass(frozen=True, slots=True)
class Builtin:
    name: str
    params: tuple[Param, ...]
    returns: t.Type
    kind: Kind
    impl: Callable[..., Any] | str
    """pure: f(*args); request: f(ctx, *args); table: the name of the `TablesSnapshot`
    method (`first`, `all`, `exists`)."""
    doc: str
    none_result: Any = None
    """What the call gives when an optional argument is none (no lookup is made)."""
    stages: frozenset[str] | None = None
    """Stages where the function is available (None: everywhere)."""
    required: int | None = None
    """How many leading params a call must give (None: all); the rest are optional."""

    @property
    def min_args(self) -> int:
        return len(self.params) if self.required is None else self.required

    @property
    def signature(self) -> str:
        if self.kind == "table":
            return f'{self.name}("table", column = key, …) -> {self.returns}'
        params = ", ".join(f"{p.name}: {p.describe()}" if i < self.min_args
                           else f"[{p.name}: {p.describe()}]"
                           for i, p in enumerate(self.params))
        return f"{self.name}({params}) -> {self.returns}"


def _text(name: str) -> Param:
    return Param(name, frozenset({"string", "address"}))


def _header(ctx: Any, name: str) -> str | None:
    return ctx.headers().first(name)


def _headers(ctx: Any, name: str) -> list[str]:
    return ctx.headers().all(name)


def _addresses(ctx: Any, name: str) -> list[str]:
    found: dict[str, None] = {}
    for text in ctx.headers().unfolded(name):
        found.update(dict.fromkeys(address_list(text)))
    return list(found)


_DATA = frozenset({"data"})
_LIST_OR_TEXT = Param("value", frozenset({"string", "address", "list"}))
_SUBADDRESS = (_text("address"), _text("separator"))

DEFAULT_BUILTINS: Mapping[str, Builtin] = MappingProxyType({
    b.name: b for b in (
        Builtin("lower", (_text("text"),), t.STRING, "pure", str.lower,
                "the text in lower case"),
        Builtin("upper", (_text("text"),), t.STRING, "pure", str.upper,
                "the text in upper case"),
        Builtin("len", (_LIST_OR_TEXT,), t.INT, "pure", len,
                "the number of characters of a text or items of a list", none_result=0),
        Builtin("domain", (_text("address"),), t.ADDRESS, "pure", domain,
                'the domain of an address: domain("a@Example.org") is "example.org"'),
        Builtin("local_part", (_text("address"),), t.STRING, "pure", local_part,
                'the local part of an address: local_part("a.b@example.org") is "a.b"'),
        Builtin("user", _SUBADDRESS, t.STRING, "pure", user,
                'the local part without its +detail (RFC 5233): user("gemuese+ernte@x") is '
                '"gemuese"; the separator may be given: user("a-b@x", "-") is "a"',
                required=1),
        Builtin("detail", _SUBADDRESS, t.STRING, "pure", detail,
                'the local part after its first + (RFC 5233): detail("gemuese+ernte@x") is '
                '"ernte"; "" without a +; the separator may be given', required=1),
        Builtin("without_detail", _SUBADDRESS, t.ADDRESS, "pure", without_detail,
                'the address without its +detail: without_detail("gemuese+ernte@x") is '
                '"gemuese@x"; the separator may be given', required=1),
        Builtin("valid_address", (_text("address"),), t.BOOL, "pure", valid_address,
                "true when the text is a valid mailbox local@domain as Stalwart sends it "
                "(split at the last @; see docs/language.md)",
                none_result=False),
        Builtin("header", (_text("name"),), t.STRING.opt(), "request", _header,
                "the first header field of that name, unfolded and decoded; none if absent",
                stages=_DATA),
        Builtin("headers", (_text("name"),), t.list_of(t.STRING), "request", _headers,
                "every header field of that name, unfolded and decoded", stages=_DATA,
                none_result=[]),
        Builtin("addresses", (_text("name"),), t.list_of(t.ADDRESS), "request", _addresses,
                "the addresses (addr-specs) in every header field of that name, read as an "
                "RFC 5322 address-list: display names and comments left out, each address "
                "once, lower-case with an A-label domain", stages=_DATA, none_result=[]),
        Builtin("lookup", (), t.Type("row", optional=True), "table", "first",
                "the first row of the table whose columns equal the keys (lowest primary "
                "key first; for an ip key on a network column, the most specific network), "
                "or none"),
        Builtin("lookup_all", (), t.list_of(t.Type("row")), "table", "all",
                "every row of the table whose columns equal the keys, in that order",
                none_result=[]),
        Builtin("exists", (), t.BOOL, "table", "exists",
                "true when the table has a row whose columns equal the keys",
                none_result=False),
    )
})
