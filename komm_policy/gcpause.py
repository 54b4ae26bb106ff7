"""Python's cyclic garbage collector paused while many long-lived objects are built."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_gc_pauses() -> Iterator[None]:
    """The cyclic collector off for the block, on again afterwards (unless it was off).

    Loading a policy set or building a table creates hundreds of thousands of small
    containers that all stay alive and hold no reference cycles: the collections they
    trigger walk every tracked object and find nothing (about half of a 100k-row table
    build; load time grew faster than the policy)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
