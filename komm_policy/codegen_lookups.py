"""Generated table lookups and field reads (`codegen`'s half for the hottest calls).

The most common lookup, by an address on an equality index (a sender's or recipient's
row), is written out inline: memo check, key normalisation (`keys.address_key`, its ASCII
case), one map read (a `versioned.Since` entry resolved), the result and its record,
exactly as `table_lookups._address_key` does it, which every other case (a none key, no
local snapshot, a key that is not text, an index the snapshot lacks) calls instead; so
are network, other one-key and two-key lookups (`ip_lookup`, `one_key_lookup`,
`two_key_lookup`).  The
request fields read most (`sender`, `rcpt`, `client.ip`) read the context's cached value
inline and call its method only the first time.
"""

from __future__ import annotations

import keyword
import re
from typing import TYPE_CHECKING, Any

from .addresses import comparison_form
from .context import EvalContext
from .decision import LookupRecord
from .directory.versioned import Since
from .fields import FIELDS
from .ipset import IP
from .program import Const
from .table_lookups import ALL, EXISTS, FIRST, table_closure, unchecked_table_closure

if TYPE_CHECKING:
    from . import nodes as n
    from .codegen_compare import Val

INLINE_LOOKUPS = 64
"""Lookups written inline per stage (later ones are calls): an inline lookup is ~25 lines
and Python's `compile()` costs ~15 µs a line (see `codegen.STAGE_LINES`)."""


ROW_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
"""A row field name written into the source as an attribute read (`row.email`); any
other name (a leading underscore, a keyword, non-ASCII) is read with `attrgetter`."""


def row_field_read(gen: Any, obj: str, name: str, getter: Any) -> Val:
    """`row.name` of the row in local `obj` (none stays none), as an attribute read when
    the name can be written as one."""
    if ROW_FIELD.fullmatch(name) and not keyword.iskeyword(name):
        return gen.tmp(f"None if {obj} is None else {obj}.{name}")
    return gen.tmp(f"None if {obj} is None else {gen.bind(getter)}({obj})")


def _no_key(ctx: Any) -> Any:  # a dynamic key's placeholder: generated code passes keys
    raise AssertionError("generated code passes the key values")

_MISSING = object()

FIELD_CACHES = {
    EvalContext.sender: ("ctx._sender", "ctx.sender()"),
    EvalContext.rcpt: ("ctx._rcpt", "ctx.rcpt()"),
    EvalContext.client_ip: ("ctx.request.context.client.parsed_ip", "ctx.client_ip()"),
}
"""Field getter → (the cached value, none until computed; the call that computes it or
raises).  Both are fixed source text, never policy text."""

NORMALISED = frozenset({EvalContext.sender, EvalContext.rcpt})
"""Field getters whose value is an address in its normal form (`normalize_address`):
lower case when it is ASCII, so its lookup key needs no `lower()` (`address_lookup`)."""

FIELD_PATHS = {FIELDS["client.helo"].get: "ctx.request.context.client.helo"}
"""Field getter → the same read as fixed source text."""


def field_read(gen: Any, get: Any) -> Val | None:
    """A field read inline, or None when `get` has no inline form."""
    path = FIELD_PATHS.get(get)
    if path is not None:
        return gen.tmp(path)
    inline = FIELD_CACHES.get(get)
    if inline is None:
        return None
    cached, compute = inline
    local = gen.name("t")
    if get in NORMALISED:
        gen.normalised.add(local)
    gen.emit(f"{local} = {cached}")
    gen.emit(f"if {local} is None:")
    gen.emit(f"    {local} = {compute}")
    return local, None


def _result(method: str, found: str, net: bool = False) -> str:
    """The lookup's value from the bucket `found` (`table_readers.RESULTS`; a network
    read's `found` is None when nothing matched)."""
    if method == EXISTS:
        return f"{found} is not None" if net else f"bool({found})"
    if method == FIRST:
        return f"{found}[0] if {found} else None"
    return f"list({found}) if {found} else []"


def _memo_lines(gen: Any, t: str, site: Any, key: str) -> tuple[str, str, str]:
    """(memo read, the miss test, memo write) for the key tuple source `key`, built
    once for the read and the write.  Read and write are settled when the stage is
    written (`StageGenerator.memo_choice`): a memo-less call only sets `t` to the
    missing marker, and writes nothing."""
    missing, local = gen.bind(_MISSING), gen.name("mk")
    read = gen.memo_choice(site, f"{t} = ctx.memo.get(({local} := {key}), {missing})",
                           f"{t} = {missing}")
    write = gen.memo_choice(site, f"ctx.memo[{local}] = {t}", "pass")
    return read, f"if {t} is {missing}:", write


def _tuple(gen: Any, items: list[str]) -> str:
    return "(" + ", ".join(items) + ",)"


def address_lookup(gen: Any, by_key: Any, value: str) -> Val:
    """The address lookup `by_key` (a `table_lookups` by-key function with
    `address_parts`) of the local variable `value`, inline."""
    (label, tag, site, name, key_before, key_after, before, after, method,
     none_result) = by_key.address_parts
    t, key, bucket, tables = (gen.name(p) for p in ("t", "key", "b", "tb"))
    by = gen.bind(by_key)
    tag_, name_ = gen.bind(tag), gen.bind(name)
    read, test, write = _memo_lines(gen, t, site, f"({tag_}, {value})")
    if key_before is None:  # a one-column index is keyed by the key itself
        index_key = key
    else:
        index_key = "(" + ", ".join([*map(gen.bind, key_before), key,
                                     *map(gen.bind, key_after)]) + ",)"
    record_keys = "(" + ", ".join([*map(gen.bind, before), value,
                                   *map(gen.bind, after)]) + ",)"
    result = {EXISTS: f"bool({bucket})", FIRST: f"{bucket}[0] if {bucket} else None",
              ALL: f"list({bucket}) if {bucket} else []"}[method]
    lower = f"{key}" if value in gen.normalised else f"{key}.lower()"  # see NORMALISED
    for line in (
        f"if {value} is None:",
        f"    {t} = {gen.bind(none_result)}",
        "else:",
        f"    {read}",
        f"    {test}",
        f"        {tables} = ctx.tables",
        f"        if {tables} is None or {value}.__class__ is not str:",
        f"            {t} = {by}(ctx, {value})",
        "        else:",
        f"            {key} = {value}.strip()",
        f"            {key} = {lower} if {key}.isascii() else "
        f"{gen.bind(comparison_form)}({key})",
        "            try:",
        f"                {bucket} = {tables}.maps[{name_}].get({index_key})",
        f"                if {bucket}.__class__ is {gen.bind(Since)}:",
        f"                    {bucket} = {tables}.resolve({name_}, {bucket})",
        "            except Exception:",
        f"                {t} = {by}(ctx, {value})",
        "            else:",
        f"                {t} = {result}",
        f"                {write}",
        f"                ctx.lookup_log.append({gen.bind(LookupRecord)}({gen.bind(label)}, "
        f"{record_keys}, {t}))",
    ):
        gen.emit(line)
    return t, None


def ip_lookup(gen: Any, by_key: Any, ip: str) -> Val:
    """The network lookup `by_key` (with `ip_parts`) of the local variable `ip`, inline:
    one map read per prefix length in use, most specific first, as
    `table_lookups._ip_key`; `lookup` and `exists` stop at the first matching length
    (its first row is the most specific match)."""
    label, tag, site, name, rest, after, method, none_result = by_key.ip_parts
    t, found, bucket, tables, maps, lengths, length, shift, version, value = (
        gen.name(p) for p in ("t", "f", "b", "tb", "mp", "ln", "l", "s", "v", "x"))
    by, tag_ = gen.bind(by_key), gen.bind(tag)
    read, test, write = _memo_lines(gen, t, site, f"({tag_}, {ip})")
    name_ = gen.bind(name)
    key = _tuple(gen, [version, length, f"{value} >> {shift}", *map(gen.bind, rest)])
    if method == ALL:
        collect = [f"                        {found} = {bucket} if {found} is None else "
                   f"(*{found}, *{bucket})"]
    else:
        collect = [f"                        {found} = {bucket}",
                   "                        break"]
    for line in (
        f"if {ip} is None:",
        f"    {t} = {gen.bind(none_result)}",
        "else:",
        f"    {read}",
        f"    {test}",
        f"        {tables} = ctx.tables",
        f"        if {tables} is None or {ip}.__class__ is not {gen.bind(IP)}:",
        f"            {t} = {by}(ctx, {ip})",
        "        else:",
        f"            {version} = {ip}.version",
        f"            {value} = {ip}.value",
        "            try:",
        f"                {maps} = {tables}.maps[{name_}]",
        f"                {lengths} = {tables}.nets[{name_}].get({version}, ())",
        "            except Exception:",
        f"                {t} = {by}(ctx, {ip})",
        "            else:",
        f"                {found} = None",
        f"                for {length}, {shift} in {lengths}:",
        f"                    {bucket} = {maps}.get({key})",
        f"                    if {bucket}.__class__ is {gen.bind(Since)}:",
        f"                        {bucket} = {tables}.resolve({name_}, {bucket})",
        f"                    if {bucket}:",
        *collect,
        f"                {t} = {_result(method, found, net=True)}",
        f"                {write}",
        f"                ctx.lookup_log.append({gen.bind(LookupRecord)}({gen.bind(label)}, "
        f"{_tuple(gen, [ip, *map(gen.bind, after)])}, {t}))",
    ):
        gen.emit(line)
    return t, None


def one_key_lookup(gen: Any, by_key: Any, value: str) -> Val:
    """The one-key lookup `by_key` (with `one_key_parts`, its reader with `parts`) of the
    local variable `value`, inline, as `table_lookups._one_key` with
    `table_readers._plain_reader`: a value of the column's plain class is its own key,
    any other goes through the column's normaliser (`keys.key_normalizer`)."""
    label, tag, site, read, before, after, method, none_result = by_key.one_key_parts
    name, plain, normalize, key_before, key_after = read.parts
    t, key, bucket, tables = (gen.name(p) for p in ("t", "key", "b", "tb"))
    by, tag_, name_ = gen.bind(by_key), gen.bind(tag), gen.bind(name)
    read_memo, test, write = _memo_lines(gen, t, site, f"({tag_}, {value})")
    index_key = key if key_before is None else _tuple(
        gen, [*map(gen.bind, key_before), key, *map(gen.bind, key_after)])
    record = _tuple(gen, [*map(gen.bind, before), value, *map(gen.bind, after)])
    for line in (
        f"if {value} is None:",
        f"    {t} = {gen.bind(none_result)}",
        "else:",
        f"    {read_memo}",
        f"    {test}",
        f"        {tables} = ctx.tables",
        f"        if {tables} is None:",
        f"            {t} = {by}(ctx, {value})",
        "        else:",
        "            try:",
        f"                {key} = ({value} if {value}.__class__ is {gen.bind(plain)} "
        f"else {gen.bind(normalize)}({value}))",
        f"                if {key} is None:",
        f"                    {bucket} = None",
        "                else:",
        f"                    {bucket} = {tables}.maps[{name_}].get({index_key})",
        f"                    if {bucket}.__class__ is {gen.bind(Since)}:",
        f"                        {bucket} = {tables}.resolve({name_}, {bucket})",
        *_settled(gen, t, f"{by}(ctx, {value})", _result(method, bucket), write, label,
                  record),
    ):
        gen.emit(line)
    return t, None


def _settled(gen: Any, t: str, fallback: str, result: str, write: str, label: Any,
             record: str) -> tuple[str, ...]:
    """The end of an inline lookup's `try:` (at 12 spaces): on any exception the
    closure's own call `fallback` (which fails into the policy's fallback as it
    should), else the result `result` is memoised (`write`) and logged as a
    `LookupRecord` with the arguments `record`."""
    return ("            except Exception:",
            f"                {t} = {fallback}",
            "            else:",
            f"                {t} = {result}",
            f"                {write}",
            f"                ctx.lookup_log.append({gen.bind(LookupRecord)}({gen.bind(label)}, "
            f"{record}, {t}))")


def two_key_lookup(gen: Any, by_keys: Any, keys: list[Val]) -> Val:
    """The two-key lookup `by_keys` (with `two_key_parts`, its reader with `parts`) of the
    keys `keys` (index column order: two local variables, constants between), inline
    when both values have their columns' plain classes, as `table_lookups._two_keys`."""
    label, tag, site, read, method, none_result = by_keys.two_key_parts
    name, first_class, second_class, before, between, after = read.parts
    a, b = (code for code, _ in keys if code is not None)
    t, bucket, tables = (gen.name(p) for p in ("t", "b", "tb"))
    by, tag_ = gen.bind(by_keys), gen.bind(tag)
    read_memo, test, write = _memo_lines(gen, t, site, f"({tag_}, {a}, {b})")
    index_key = _tuple(gen, [*map(gen.bind, before), a, *map(gen.bind, between), b,
                             *map(gen.bind, after)])
    record = _tuple(gen, [code if code is not None else gen.bind(value)
                          for code, value in keys])
    for line in (
        f"if {a} is None or {b} is None:",
        f"    {t} = {gen.bind(none_result)}",
        "else:",
        f"    {read_memo}",
        f"    {test}",
        f"        {tables} = ctx.tables",
        f"        if ({tables} is None or {a}.__class__ is not {gen.bind(first_class)}"
        f" or {b}.__class__ is not {gen.bind(second_class)}):",
        f"            {t} = {by}(ctx, {a}, {b})",
        "        else:",
        "            try:",
        f"                {bucket} = {tables}.maps[{gen.bind(name)}].get({index_key})",
        f"                if {bucket}.__class__ is {gen.bind(Since)}:",
        f"                    {bucket} = {tables}.resolve({gen.bind(name)}, {bucket})",
        *_settled(gen, t, f"{by}(ctx, {a}, {b})", _result(method, bucket), write, label,
                  record),
    ):
        gen.emit(line)
    return t, None


def table_lookup(gen: Any, expr: n.Call, builtin: Any) -> Val:
    """The code for a table lookup call (`lookup`, `lookup_all`, `exists`) in the stage
    `gen` (a `codegen.StageGenerator`) writes: the first `INLINE_LOOKUPS` of a stage
    inline (address, ip and two-key reads), later ones as a call of their closure."""
    call = gen.c.analysis.table_calls.get(id(expr))
    if call is None:  # no schema file (W209): the lookup fails into the fallback
        return gen.tmp(f"{gen.bind(unchecked_table_closure(expr.func))}(ctx)")
    schema = gen.c.analysis.schema
    table = schema.tables.get(call.spec.table) if schema is not None else None
    columns = (tuple(table.by_name[c] for c in call.spec.columns)
               if table is not None else None)
    lines, keys = gen.capture(lambda: [gen.expr(k) for k in call.keys])
    compiled = table_closure(call.label, str(builtin.impl), call.spec,
                             tuple(Const(v) if c is None else _no_key for c, v in keys),
                             columns, builtin.none_result, gen.sites,
                             repeated=gen.depth > 0 or gen.arguments > 0,
                             index=(call.index, call.positions))
    if isinstance(compiled, Const):  # a none constant key: no key runs, nothing read
        return None, compiled.value
    gen.splice(lines)
    by_keys = getattr(compiled, "by_keys", None)
    if by_keys is None:
        return gen.tmp(f"{gen.bind(compiled)}(ctx)")
    dynamic = ", ".join(c for c, _ in keys if c is not None)
    gen.inlined += 1  # ~25 lines each: past the budget, a call (load time)
    if gen.inlined <= INLINE_LOOKUPS:
        if hasattr(by_keys, "address_parts"):
            return address_lookup(gen, by_keys, dynamic)
        if hasattr(by_keys, "ip_parts"):
            return ip_lookup(gen, by_keys, dynamic)
        if hasattr(by_keys, "one_key_parts") and hasattr(by_keys.one_key_parts[3], "parts"):
            return one_key_lookup(gen, by_keys, dynamic)
        if (hasattr(by_keys, "two_key_parts")
                and hasattr(by_keys.two_key_parts[3], "parts")):
            return two_key_lookup(gen, by_keys, keys)
    return gen.tmp(f"{gen.bind(by_keys)}(ctx, {dynamic})")
