"""Running a table lookup inside a decision: `lookup`, `lookup_all`, `exists`.

The same rules as the helper lookups (`lookups.py`): memoised per decision by function,
index and keys (failures too); a none key matches nothing and reads nothing; timed and
deadline-checked on backends that may block; a failure becomes `LookupFailed`, so the
rule's `on error` or the settings' fallback applies.  The read itself is a dictionary (or
prefix) read of the decision's snapshot: `snapshot.tables.<method>(spec, keys)`.
"""

from __future__ import annotations

from typing import Any

from .context import EvalContext
from .decision import LookupRecord
from .directory import DirectoryError
from .directory.snapshot import IndexSpec, spec_name
from .lookups import failed, run_lookup
from .program import Closure

_MISSING = object()


def table_closure(label: str, method: str, spec: IndexSpec, getters: tuple[Closure, ...],
                  none_result: Any) -> Closure:
    """A compiled table lookup.  `label` names it in records and metrics."""
    name = spec_name(spec)

    def call_with(keys: tuple[Any, ...]) -> Any:
        def call(directory: Any) -> Any:
            return getattr(directory.tables, method)(name, keys)
        return call

    def slow(ctx: EvalContext, keys: tuple[Any, ...], memo_key: tuple[Any, ...]) -> Any:
        if ctx.timed or ctx.failures is not None:
            return run_lookup(ctx, label, method, keys, memo_key, call_with(keys))
        try:
            value = getattr(ctx.directory.tables, method)(name, keys)
        except Exception as exc:
            raise failed(ctx, label, keys, memo_key, exc, None) from exc
        ctx.memo[memo_key] = value
        ctx.lookup_log.append(LookupRecord(label, keys, value, None, None))
        return value

    if len(getters) == 1:
        (get,) = getters

        def table_lookup1(ctx: EvalContext) -> Any:
            key = get(ctx)
            if key is None:
                return none_result  # a none key matches nothing: no read at all
            memo_key = (label, key)
            value = ctx.memo.get(memo_key, _MISSING)
            if value is not _MISSING:
                return value
            return slow(ctx, (key,), memo_key)
        return table_lookup1

    def table_lookup(ctx: EvalContext) -> Any:
        keys = tuple([g(ctx) for g in getters])
        if None in keys:
            return none_result
        memo_key = (label, *keys)
        value = ctx.memo.get(memo_key, _MISSING)
        if value is not _MISSING:
            return value
        return slow(ctx, keys, memo_key)
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
