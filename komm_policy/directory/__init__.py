"""The directory as policies see it: named tables of rows, read from a local replica.

Lookups (`lookup`, `lookup_all`, `exists`) are synchronous reads of an immutable snapshot
of the tables a policy set reads (an in-memory index, a replica of SQLite or SpacetimeDB
tables), never a network round trip on the hook path.  A backend that cannot answer raises
`DirectoryError`; the runtime turns that into the policy's fallback.  The engine knows
tables, rows and column types, never one organisation's schema: the organisation's helpers
are policy functions over its tables (`policies/00-directory.policy`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class DirectoryError(Exception):
    """A lookup could not be answered (backend down, stale replica, locked database)."""


@runtime_checkable
class Directory(Protocol):
    """What decisions read.  Implementations must be fast local reads.

    `snapshot()` returns an object whose `tables` (a `TablesSnapshot`, or a property that
    raises `DirectoryError` while the backend is unavailable) stays fixed for one decision,
    so a directory updated meanwhile is never read half old, half new.  Optional:
    `blocking = False` for local indexes that need no timing, and `require(schema, needs)`
    to replicate and index what a policy set reads."""

    def snapshot(self) -> Any:
        """What one decision reads."""
        ...


__all__ = ["Directory", "DirectoryError"]
