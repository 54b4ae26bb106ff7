"""The in-memory `Directory`, and the `Snapshot` every local backend serves decisions from.

A `Snapshot` holds the policy set's tables (a `TablesSnapshot`), fixed for one decision;
backends publish a new one by one reference assignment.  Every lookup is a dictionary or
prefix read, so lookup time does not grow with the size of the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .schema import Schema
from .snapshot import Changes, Needs, TablesSnapshot

log = logging.getLogger(__name__)

TableRows = Mapping[str, "list[Mapping[str, Any]] | tuple[Mapping[str, Any], ...]"]
"""Rows of any tables: {table name: [{column: value}]}."""


class Snapshot:
    """What one decision reads: the policy set's tables, fixed."""

    __slots__ = ("tables",)

    def __init__(self, tables: TablesSnapshot | None) -> None:
        self.tables = tables

    def counts(self) -> dict[str, int]:
        """Rows per replicated table."""
        return self.tables.counts() if self.tables is not None else {}


class InMemoryDirectory:
    """A `Directory` over rows held in memory (tests, benchmarks, `komm-policy eval`).

    `table_rows` holds rows of any tables ({name: [{column: value}]}), indexed by
    `require` for what a policy set reads; `apply` publishes changes by one swap."""

    blocking = False
    """Lookups are dictionary reads; the runtime need not time them."""

    def __init__(self, tables: TableRows | None = None) -> None:
        self.table_rows = {name: list(rows) for name, rows in (tables or {}).items()}
        self.tables: TablesSnapshot | None = None
        self._serving = Snapshot(None)

    def require(self, schema: Schema, needs: Needs) -> None:
        """Index the tables a policy set reads (missing tables are empty)."""
        self.tables = TablesSnapshot.build(
            schema, needs, {name: self.table_rows.get(name, ()) for name in needs.tables},
            lambda table, key, reason: log.warning("skipping a row of %s (%s): %s", table,
                                                   key, reason))
        self._serving = Snapshot(self.tables)

    def apply(self, changes: Changes) -> None:
        """Apply table changes ({table: (deleted, inserted)}) and publish the result."""
        if self.tables is not None:
            self.tables = self.tables.apply(changes)
            self._serving = Snapshot(self.tables)

    def snapshot(self) -> Snapshot:
        """The current content, for one decision to read consistently."""
        return self._serving

    def counts(self) -> dict[str, int]:
        return self._serving.counts()
