"""Running one directory lookup inside a decision: memo, timing, timeout, deadline.

Lookups are memoised per decision (failures too, so a broken backend is asked once).  A
lookup that raises becomes `LookupFailed`, which the runtime turns into the rule's
`on error` action or the settings' fallback.  Lookups on backends that may block are timed
and checked against `lookup_timeout` and the decision's deadline; the local indexes
(in-memory, replicas) declare `blocking = False` and skip the clock, since a dictionary read
cannot overrun a timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .context import EvalContext
from .decision import LookupRecord


class LookupFailed(Exception):
    """A lookup raised, or took longer than `lookup_timeout`."""


class DeadlineExceeded(Exception):
    """The decision ran past its `deadline`; no further lookups are started."""


def run_lookup(ctx: EvalContext, name: str, method: str, args: tuple[Any, ...],
               key: tuple[Any, ...], call: Callable[[Any], Any]) -> Any:
    """Perform a lookup that is not in the memo yet (the caller checked the memo).
    `call(directory)` performs it."""
    failures = ctx.failures
    if failures is not None and key in failures:
        raise LookupFailed(failures[key])
    if not ctx.timed:
        try:
            result = call(ctx.directory)
        except Exception as exc:
            raise failed(ctx, name, args, key, exc, None) from exc
        ctx.memo[key] = result
        ctx.lookup_log.append(LookupRecord(name, args, result, None, None))
        return result
    settings = ctx.settings
    clock = ctx.clock
    start = clock()
    if ctx.deadline_at is None:
        ctx.deadline_at = start + settings.deadline
    elif start > ctx.deadline_at:
        raise DeadlineExceeded(f"deadline of {settings.deadline * 1000:g} ms passed before "
                               f"{name}() could run")
    try:
        result = call(ctx.directory)
    except Exception as exc:
        raise failed(ctx, name, args, key, exc, (clock() - start) * 1000) from exc
    end = clock()
    elapsed_ms = (end - start) * 1000
    if end - start > settings.lookup_timeout:
        message = (f"timed out after {elapsed_ms:.0f} ms "
                   f"(limit {settings.lookup_timeout * 1000:g} ms)")
        raise failed(ctx, name, args, key, None, elapsed_ms, message)
    ctx.memo[key] = result
    ctx.lookup_log.append(LookupRecord(name, args, result, None, elapsed_ms))
    if end > ctx.deadline_at:
        raise DeadlineExceeded(f"deadline of {settings.deadline * 1000:g} ms passed during "
                               f"{name}()")
    return result


def failed(ctx: EvalContext, name: str, args: tuple[Any, ...], key: tuple[Any, ...],
            exc: BaseException | None, elapsed_ms: float | None,
            message: str | None = None) -> LookupFailed:
    detail = message or f"failed: {type(exc).__name__}: {exc}"
    failure = LookupFailed(f"{name}({describe_args(args)}) {detail}")
    if ctx.failures is None:
        ctx.failures = {}
        ctx.tables = None  # from now on every lookup checks the failures first
    ctx.failures[key] = str(failure)
    ctx.lookup_log.append(LookupRecord(name, args, None, str(failure), elapsed_ms))
    return failure


def describe_args(args: tuple[Any, ...]) -> str:
    """Lookup arguments as people read them, in the policy language's spelling: text
    quoted, `true`/`false`/`none`, numbers bare, directory records by name."""
    return ", ".join(_arg_text(a) for a in args)


def _arg_text(arg: Any) -> str:
    if arg is None or isinstance(arg, bool):
        return {None: "none", True: "true", False: "false"}[arg]
    if isinstance(arg, int | float):
        return str(arg)
    if hasattr(arg, "id") and hasattr(arg, "name"):
        return str(arg.name)
    return repr(str(arg))

