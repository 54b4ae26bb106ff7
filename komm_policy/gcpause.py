"""Python's cyclic garbage collector kept from long pauses while many long-lived objects
are built."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def no_gc_pauses(freeze: bool = False) -> Iterator[None]:
    """The cyclic collector off for the block, on again afterwards (unless it was off).

    Loading a policy set or building a table creates hundreds of thousands of small
    containers that all stay alive and hold no reference cycles: the collections they
    trigger walk every tracked object and find nothing (about half of a 100k-row table
    build; load time grew faster than the policy).

    `freeze` (a rare, large build in a worker thread while other threads serve): the
    collector stays on instead, and what survives each collection of the middle or
    oldest generation moves into the permanent generation (`gc.freeze`), where no later
    collection walks it; what the block built last is frozen when it ends.  So each
    object is walked a few times while young, never everything the block built at once
    (which after a 200k-row table held every thread for half a second).  Why not the
    collector off and one freeze at the end: the reference cycles other threads drop
    meanwhile (about 46 objects a hook request) are garbage at that moment and would be
    kept forever, every big build adding its window's worth (8 transactions of 60,000
    rows kept 461,000 such objects on a 2-core machine; this way 13,200: the cycles
    alive at a freeze that die later).  The cost, measured interleaved on a 200k-row
    table: build CPU 6.5 -> 7.1 s (median), longest collection 21 ms.  Frozen objects
    are still freed when their last reference goes.  A block inside a freezing one
    (any thread) leaves the collector on."""
    if freeze:
        gc.callbacks.append(_freeze_survivors)
        try:
            yield
            gc.freeze()
        finally:
            gc.callbacks.remove(_freeze_survivors)
        return
    if _freeze_survivors in gc.callbacks:  # inside a freezing block (any thread)
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    """A `gc.callbacks` entry: after a collection of the middle or oldest generation
    (every ~7,000 allocations: a walk of at most as many objects), freeze what survived."""
    if phase == "stop" and info["generation"] >= 1:
        gc.freeze()
