"""Python's cyclic garbage collector paused while many long-lived objects are built."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_gc_pauses(freeze: bool = False) -> Iterator[None]:
    """The cyclic collector off for the block, on again afterwards (unless it was off).

    Loading a policy set or building a table creates hundreds of thousands of small
    containers that all stay alive and hold no reference cycles: the collections they
    trigger walk every tracked object and find nothing (about half of a 100k-row table
    build; load time grew faster than the policy).

    `freeze`: when the block ends without an exception, move every object the collector
    tracks into its permanent generation (`gc.freeze`), where no later collection walks
    them.  Without it the first collections after the block walk everything the block
    built, in one go and holding the interpreter lock (about 0.4 µs an object on a 2-core
    machine: half a second after a 200k-row table, a pause of every thread).  Frozen
    objects are still freed when their last reference goes; what freezing keeps forever
    is garbage *in reference cycles* that exists at that moment (none of a table's
    objects are in cycles), so it is meant for rare, large builds.  That includes the
    cycles other threads drop while the block runs (the collector is off for the whole
    process): a hook request drops ~46 such objects (server and client in one process),
    and 8 transactions of 60,000 rows under a thread dropping 30,000 cycles a second kept
    461,000 objects (+148 MB RSS) on a 2-core machine.  Freezing instead what survives
    each older-generation collection with the collector on kept 13,200, but cost 0.6 s
    more CPU on a 200k-row build and made the real service's 200k-row apply slower in 5
    of 6 interleaved pairs (median 32 vs 26 s and 47 vs 32 s, `bench.spacetimedb_big`
    at load average 10-25), its answers' p99 worse in 4 of 6: not kept."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        if freeze:
            gc.freeze()
    finally:
        if was_enabled:
            gc.enable()


FULL_COLLECTIONS_OFF = 1 << 30
"""A third threshold no count reaches: the collector's full collections wait."""


@contextlib.contextmanager
def frozen_build() -> Iterator[None]:
    """Build long-lived objects beside a serving event loop: young collections go on (each
    walks at most a few thousand objects: a few ms), full collections wait until the block
    ends, and then what the block built moves into the permanent generation
    (`gc.freeze`) after a last young collection (the garbage in cycles of the last
    moments).  No collection then walks the build in one go, holding the interpreter lock
    (`no_gc_pauses` leaves it to the first collection after it: 100-230 ms for a
    20,000-term policy on a 2-core machine).

    Frozen objects are freed when their last reference goes, never by the collector:
    garbage in reference cycles must not be left behind (free it with
    `release.release` before the block ends, and a retired build after it)."""
    with full_collections_paused():
        yield
        if gc.isenabled():
            gc.collect(1)
        gc.freeze()


@contextlib.contextmanager
def full_collections_paused() -> Iterator[None]:
    """Young collections only during the block (each walks a few thousand objects at
    most); a full collection walks every object not frozen, in one go.  Nests: only the
    outermost block restores the thresholds."""
    thresholds = gc.get_threshold()
    if thresholds[2] == FULL_COLLECTIONS_OFF:
        yield
        return
    gc.set_threshold(thresholds[0], thresholds[1], FULL_COLLECTIONS_OFF)
    try:
        yield
    finally:
        if gc.get_threshold()[2] == FULL_COLLECTIONS_OFF:
            gc.set_threshold(*thresholds)
