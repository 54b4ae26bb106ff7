"""Running a table lookup inside a decision: `lookup`, `lookup_all`, `exists`.

The same rules as the helper lookups (`lookups.py`): memoised per decision by call (its
label and constant keys) and dynamic keys, failures too; a none key matches nothing and
reads nothing; timed and deadline-checked on backends that may block; a failure becomes
`LookupFailed`, so the rule's `on error` or the settings' fallback applies; every lookup
performed is recorded in the decision.

Fast path: a decision on a local snapshot that is not timed has `ctx.tables` (until a
lookup fails); a call then reads it with a reader specialised when compiled
(`table_readers`), in the closure itself.  A call the compiler proved to run at most once
per decision, with no other call sharing its memo entries, skips the memo
(`LookupSite`).  Everything else (a blocking backend, a trace, a remembered failure, a
stand-in for the tables, other call shapes) takes the generic path:
`snapshot.tables.<method>(index name, keys)` through `run_lookup`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from .context import EvalContext
from .decision import LookupRecord
from .directory import DirectoryError
from .directory.keys import lookup_key
from .directory.schema import Column
from .directory.snapshot import IndexSpec, spec_name
from .lookups import failed, run_lookup
from .program import Closure, Compiled, Const
from .table_readers import address_plan, address_reader, reader

FIRST, ALL, EXISTS = "first", "all", "exists"

_MISSING = object()


class LookupSite:
    """One compiled table lookup call.  Memoised unless the compiler proved that it runs
    at most once per decision and that no other call shares its memo entries
    (`settle_sites`): then a memo would only cost a key, a read and a write."""

    __slots__ = ("memo", "repeated")

    def __init__(self, repeated: bool) -> None:
        self.memo = True
        self.repeated = repeated
        """Inside a quantifier body or a function argument (a parameter may be read
        several times): may run more than once per decision."""


Sites = dict[str, list[LookupSite]]
"""Every compiled table lookup call of a policy set, by memo tag."""


def settle_sites(sites: Sites, elsewhere: Collection[str] = ()) -> None:
    """After compiling a whole set (or a generated stage): a tag with one call that is
    not `repeated`, and no call `elsewhere` (tags also read by code outside `sites` that
    the same decision may run: a generated stage's closures), is read at most once per
    decision and needs no memo."""
    for tag, calls in sites.items():
        if len(calls) == 1 and not calls[0].repeated and tag not in elsewhere:
            calls[0].memo = False


Slow = Callable[[EvalContext, tuple[Any, ...], tuple[Any, ...]], Any]


def table_closure(label: str, method: str, spec: IndexSpec, keys: Sequence[Compiled],
                  columns: Sequence[Column] | None, none_result: Any,
                  sites: Sites | None = None, repeated: bool = True,
                  index: tuple[IndexSpec, tuple[int, ...]] | None = None) -> Compiled:
    """A compiled table lookup.  `label` names it in records and metrics; `keys` are the
    compiled key expressions in the column order of `spec`; `columns` their columns in
    the compiled set's schema (None: no specialisation).  `index`: the index read and
    the positions of its columns in `keys` (`tablecheck.TableCall`: a partial index has
    the call's literal keys folded in), `spec` itself by default.  The call registers in
    `sites` (see `LookupSite`; without `sites` it is always memoised).  Records name the
    call's keys in the order of `spec`, constants included, whatever index is read."""
    read_spec, positions = index if index is not None else (spec, tuple(range(len(keys))))
    name = spec_name(read_spec)
    constants: dict[int, Any] = {i: k.value for i, k in enumerate(keys) if isinstance(k, Const)}
    if any(v is None for v in constants.values()):
        return Const(none_result)  # a constant none key: the lookup matches nothing
    dynamic = tuple(i for i in range(len(keys)) if i not in constants)
    getters = tuple(keys[i] for i in dynamic)  # type: ignore[misc]
    tag = label if not constants else f"{label} {sorted(constants.items())!r}"
    """The memo key's first part: two calls share memo entries when they read the same
    index with the same constant keys."""
    site = LookupSite(repeated)
    if sites is not None:
        sites.setdefault(tag, []).append(site)
    record_keys = _record_keys(len(keys), constants)
    partial = len(positions) != len(keys)
    # the index's view of the call: its constants and dynamic keys by index position
    index_constants = {j: constants[p] for j, p in enumerate(positions) if p in constants}
    index_dynamic = tuple(j for j, p in enumerate(positions) if p not in constants)
    index_columns = (tuple(columns[p] for p in positions) if columns is not None else None)

    def slow(ctx: EvalContext, values: tuple[Any, ...], memo_key: tuple[Any, ...]) -> Any:
        """Through the snapshot's `first`/`all`/`exists`, timed when the backend may
        block; failures recorded and remembered."""
        args = record_keys(values)
        index_args = tuple(args[p] for p in positions) if partial else args

        def call(directory: Any) -> Any:
            return getattr(directory.tables, method)(name, index_args)
        if ctx.timed or ctx.failures is not None:
            return run_lookup(ctx, label, method, args, memo_key, call)
        try:
            value = call(ctx.directory)
        except Exception as exc:
            raise failed(ctx, label, args, memo_key, exc, None) from exc
        ctx.memo[memo_key] = value
        ctx.lookup_log.append(LookupRecord(label, args, value))
        return value

    read = reader(read_spec, name, index_constants, index_dynamic, index_columns)
    if read is None:
        return _generic(tag, getters, none_result, slow)
    if len(getters) == 1:
        (i,) = dynamic
        before = tuple(constants[k] for k in range(i))
        after = tuple(constants[k] for k in range(i + 1, len(keys)))
        if read_spec.kind == "net" and index_dynamic == (0,) and read is not None:
            rest = tuple(lookup_key(index_columns[k], index_constants[k])  # type: ignore[index]
                         for k in range(1, len(positions)))
            return _ip_key(label, tag, site, getters[0], read, name, rest, after, method,
                           none_result, slow)
        plan = address_plan(read_spec, index_constants, index_dynamic, index_columns)
        if plan is not None:
            return _address_key(label, tag, site, getters[0], name, plan, (before, after),
                                method, none_result, slow)
        return _one_key(label, tag, site, getters[0], read, (before, after), method,
                        none_result, slow)
    return _two_keys(label, tag, site, getters, read, record_keys, method, none_result, slow)


def _one_key(label: str, tag: str, site: LookupSite, get: Closure, read: Any,
             around: tuple[tuple[Any, ...], tuple[Any, ...]], method: str,
             none_result: Any, slow: Slow) -> Closure:
    """One dynamic key; `around`: the constant keys before and after it (for records)."""
    records = LookupRecord
    before, after = around
    first, exists = method == FIRST, method == EXISTS

    def table_lookup1(ctx: EvalContext, value: Any) -> Any:
        if value is None:
            return none_result  # a none key matches nothing: no read at all
        memo = site.memo
        if memo:
            result = ctx.memo.get((tag, value), _MISSING)
            if result is not _MISSING:
                return result
        tables = ctx.tables
        if tables is not None:
            try:
                bucket = read(tables, value)
            except Exception:  # e.g. an index this snapshot lacks: the slow path fails it
                return slow(ctx, (value,), (tag, value))
            if exists:
                result = bool(bucket)
            elif first:
                result = bucket[0] if bucket else None
            else:
                result = list(bucket) if bucket else []
            if memo:
                ctx.memo[(tag, value)] = result
            ctx.lookup_log.append(records(label, (*before, value, *after), result))
            return result
        return slow(ctx, (value,), (tag, value))
    # what `codegen_lookups` needs to write this lookup inline (with its reader's `parts`)
    table_lookup1.one_key_parts = (  # type: ignore[attr-defined]
        label, tag, site, read, before, after, method, none_result)
    return _keyed(get, table_lookup1)


def _address_key(label: str, tag: str, site: LookupSite, get: Closure, name: str,
                 plan: tuple[tuple[Any, ...], tuple[Any, ...]],
                 around: tuple[tuple[Any, ...], tuple[Any, ...]], method: str,
                 none_result: Any, slow: Slow) -> Closure:
    """`_one_key` for an address key of an equality index, read by `table_readers`'
    address reader: `plan` holds the index keys of the constant columns around it,
    `around` their values as written (for records).  Its `by_keys` carries what
    `codegen_lookups` needs to write the lookup's common case inline (the most common
    lookup: by a sender or recipient)."""
    key_before, key_after = plan
    wide = bool(key_before or key_after)  # a one-column index is keyed by the key itself
    closure = _one_key(label, tag, site, get, address_reader(name, key_before, key_after),
                       around, method, none_result, slow)
    closure.by_keys.address_parts = (  # type: ignore[attr-defined]
        label, tag, site, name, key_before if wide else None, key_after, *around,
        method, none_result)
    return closure


def _ip_key(label: str, tag: str, site: LookupSite, get: Closure, read: Any, name: str,
            rest: tuple[Any, ...], after: tuple[Any, ...], method: str, none_result: Any,
            slow: Slow) -> Closure:
    """`_one_key` for an IP in a network index (the other columns constant), read by
    `table_readers`' network reader (one map read per prefix length in use, most specific
    first).  `rest`: the index keys of the constant columns, `after` their values as
    written.  Its `by_keys` carries what `codegen_lookups` needs to write it inline."""
    closure = _one_key(label, tag, site, get, read, ((), after), method, none_result, slow)
    closure.by_keys.ip_parts = (  # type: ignore[attr-defined]
        label, tag, site, name, rest, after, method, none_result)
    return closure


def _two_keys(label: str, tag: str, site: LookupSite, getters: tuple[Closure, ...],
              read: Any, record_keys: Callable[[tuple[Any, ...]], tuple[Any, ...]],
              method: str, none_result: Any, slow: Slow) -> Closure:
    one, other = getters
    records = LookupRecord
    first, exists = method == FIRST, method == EXISTS

    def table_lookup2(ctx: EvalContext, a: Any, b: Any) -> Any:
        if a is None or b is None:
            return none_result
        memo = site.memo
        if memo:
            result = ctx.memo.get((tag, a, b), _MISSING)
            if result is not _MISSING:
                return result
        tables = ctx.tables
        if tables is not None:
            try:
                bucket = read(tables, a, b)
            except Exception:
                return slow(ctx, (a, b), (tag, a, b))
            if exists:
                result = bool(bucket)
            elif first:
                result = bucket[0] if bucket else None
            else:
                result = list(bucket) if bucket else []
            if memo:
                ctx.memo[(tag, a, b)] = result
            ctx.lookup_log.append(records(label, record_keys((a, b)), result))
            return result
        return slow(ctx, (a, b), (tag, a, b))

    table_lookup2.two_key_parts = (  # type: ignore[attr-defined]
        label, tag, site, read, method, none_result)

    def table_lookup2_closure(ctx: EvalContext) -> Any:
        return table_lookup2(ctx, one(ctx), other(ctx))
    table_lookup2_closure.by_keys = table_lookup2  # type: ignore[attr-defined]
    return table_lookup2_closure


def _record_keys(width: int, constants: dict[int, Any]
                 ) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """The lookup's keys in column order (for its record) from the dynamic ones."""
    if not constants:
        return lambda values: values
    dynamic = [i for i in range(width) if i not in constants]
    if dynamic and dynamic == list(range(dynamic[0], dynamic[-1] + 1)):  # one run
        before = tuple(constants[i] for i in range(dynamic[0]))
        after = tuple(constants[i] for i in range(dynamic[-1] + 1, width))
        return lambda values: (*before, *values, *after)

    def merge(values: tuple[Any, ...]) -> tuple[Any, ...]:
        it = iter(values)
        return tuple(constants[i] if i in constants else next(it) for i in range(width))
    return merge


def _generic(tag: str, getters: tuple[Closure, ...], none_result: Any, slow: Slow
             ) -> Closure:
    """Any number of dynamic keys, read through the snapshot's `first`/`all`/`exists`."""
    if not getters:
        memo_key = (tag,)

        def table_lookup0(ctx: EvalContext) -> Any:
            result = ctx.memo.get(memo_key, _MISSING)
            return slow(ctx, (), memo_key) if result is _MISSING else result
        return table_lookup0

    def table_lookup_n(ctx: EvalContext, *values: Any) -> Any:
        if None in values:
            return none_result
        memo_key = (tag, *values)
        result = ctx.memo.get(memo_key, _MISSING)
        if result is not _MISSING:
            return result
        return slow(ctx, values, memo_key)

    def table_lookup(ctx: EvalContext) -> Any:
        return table_lookup_n(ctx, *[g(ctx) for g in getters])
    table_lookup.by_keys = table_lookup_n  # type: ignore[attr-defined]
    return table_lookup


def _keyed(get: Closure, by_key: Callable[[EvalContext, Any], Any]) -> Closure:
    """The closure of a one-key lookup: its key read, then the lookup by that value.
    `by_keys` (ctx, key values…) is what generated stage code (`codegen`) calls, having
    computed the keys itself: both paths run the same lookup."""
    def table_lookup(ctx: EvalContext) -> Any:
        return by_key(ctx, get(ctx))
    table_lookup.by_keys = by_key  # type: ignore[attr-defined]
    return table_lookup


def unchecked_table_closure(function: str) -> Closure:
    """A table lookup in a policy set without a schema file (W209): it cannot know the
    columns' meanings, so it fails, and the rule's `on error` or the fallback applies."""
    label = f"{function}(?)"

    def no_schema(ctx: EvalContext) -> Any:
        error = DirectoryError("no schema file beside the policies: table lookups cannot "
                               "run (see `komm-policy db schema`)")
        raise failed(ctx, label, (), (label,), error, None)
    return no_schema
