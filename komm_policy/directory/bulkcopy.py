"""Copies of large mappings in short C calls (the SpacetimeDB replica's big updates).

A C routine that copies a mapping holds the interpreter lock throughout; copying one of
hundreds of thousands of entries in one call pauses every other thread (the hook's
answers) for that long, so these copy in slices of `C_CALL_ITEMS` items.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import islice
from typing import Any

import immutables

C_CALL_ITEMS = 2048
"""Items per call into a C routine that copies a mapping.  Such a call holds the
interpreter lock throughout: `immutables.Map(rows)` of 200,000 text keys took 0.25–0.37 s
and `dict(map.items())` 0.15 s on a 2-core machine, pausing every other thread (the
hook's answers) that long; in calls of 2,048 items no pause exceeded ~15-30 ms and the
whole copy took about as long."""


def frozen_map(rows: Mapping[Any, Any]) -> immutables.Map:
    """An `immutables.Map` of `rows`, built in calls of `C_CALL_ITEMS` items."""
    if len(rows) <= C_CALL_ITEMS:
        return immutables.Map(rows)
    mutation = immutables.Map().mutate()
    items = iter(rows.items())
    while chunk := dict(islice(items, C_CALL_ITEMS)):
        mutation.update(chunk)
    return mutation.finish()


def copied_map(rows: immutables.Map) -> dict[Any, Any]:
    """A dict of `rows`, copied in calls of `C_CALL_ITEMS` items."""
    out: dict[Any, Any] = {}
    items = iter(rows.items())
    while True:
        size = len(out)
        out.update(islice(items, C_CALL_ITEMS))
        if len(out) == size:
            return out
