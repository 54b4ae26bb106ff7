"""Generated table lookups and field reads (`codegen`'s half for the hottest calls).

The most common lookup, by an address on an equality index (a sender's or recipient's
row), is written out inline: memo check, key normalisation (`keys.address_key`, its ASCII
case), one map read, the result and its record, exactly as `table_lookups._address_key`
does it, which every other case (a none key, no local snapshot, a key that is not text,
an index the snapshot lacks) calls instead.  The request fields read most (`sender`,
`rcpt`, `client.ip`) read the context's cached value inline and call its method only the
first time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .addresses import comparison_form
from .context import EvalContext
from .decision import LookupRecord
from .table_lookups import ALL, EXISTS, FIRST

if TYPE_CHECKING:
    from .codegen_compare import Val

_MISSING = object()

FIELD_CACHES = {
    EvalContext.sender: ("ctx._sender", "ctx.sender()"),
    EvalContext.rcpt: ("ctx._rcpt", "ctx.rcpt()"),
    EvalContext.client_ip: ("ctx.request.context.client.parsed_ip", "ctx.client_ip()"),
}
"""Field getter → (the cached value, none until computed; the call that computes it or
raises).  Both are fixed source text, never policy text."""


def field_read(gen: Any, get: Any) -> Val | None:
    """A field read inline, or None when `get` has no inline form."""
    inline = FIELD_CACHES.get(get)
    if inline is None:
        return None
    cached, compute = inline
    local = gen.name("t")
    gen.emit(f"{local} = {cached}")
    gen.emit(f"if {local} is None:")
    gen.emit(f"    {local} = {compute}")
    return local, None


def address_lookup(gen: Any, by_key: Any, value: str) -> Val:
    """The address lookup `by_key` (a `table_lookups` by-key function with
    `address_parts`) of the local variable `value`, inline."""
    (label, tag, site, name, key_before, key_after, before, after, method,
     none_result) = by_key.address_parts
    t, key, bucket, memo, tables = (gen.name(p) for p in ("t", "key", "b", "m", "tb"))
    by, missing = gen.bind(by_key), gen.bind(_MISSING)
    tag_, site_, name_ = gen.bind(tag), gen.bind(site), gen.bind(name)
    if key_before is None:  # a one-column index is keyed by the key itself
        index_key = key
    else:
        index_key = "(" + ", ".join([*map(gen.bind, key_before), key,
                                     *map(gen.bind, key_after)]) + ",)"
    record_keys = "(" + ", ".join([*map(gen.bind, before), value,
                                   *map(gen.bind, after)]) + ",)"
    result = {EXISTS: f"bool({bucket})", FIRST: f"{bucket}[0] if {bucket} else None",
              ALL: f"list({bucket}) if {bucket} else []"}[method]
    for line in (
        f"if {value} is None:",
        f"    {t} = {gen.bind(none_result)}",
        "else:",
        f"    {memo} = {site_}.memo",
        f"    {t} = ctx.memo.get(({tag_}, {value}), {missing}) if {memo} else {missing}",
        f"    if {t} is {missing}:",
        f"        {tables} = ctx.tables",
        f"        if {tables} is None or {value}.__class__ is not str:",
        f"            {t} = {by}(ctx, {value})",
        "        else:",
        f"            {key} = {value}.strip()",
        f"            {key} = {key}.lower() if {key}.isascii() else "
        f"{gen.bind(comparison_form)}({key})",
        "            try:",
        f"                {bucket} = {tables}.maps[{name_}].get({index_key})",
        "            except Exception:",
        f"                {t} = {by}(ctx, {value})",
        "            else:",
        f"                {t} = {result}",
        f"                if {memo}:",
        f"                    ctx.memo[({tag_}, {value})] = {t}",
        f"                ctx.lookup_log.append({gen.bind(LookupRecord)}({gen.bind(label)}, "
        f"{record_keys}, {t}))",
    ):
        gen.emit(line)
    return t, None
