"""What a replica reports about itself: bad rows skipped, refresh failures, recovery.

Every backend keeps one `ReplicaHealth` (the contract of issue #9 §3): a row that does not
fit the schema is skipped with one warning naming table, key and reason, and counted; an
error while refreshing is logged (rate-limited while it persists: the first, then at most
one line per `log_every` seconds), counted, and followed by a "recovered" line once a
refresh succeeds again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import NoReturn

from . import DirectoryError


class ReplicaHealth:
    """Counters and rate-limited log lines for one replica."""

    def __init__(self, log: logging.Logger, name: str, clock: Callable[[], float],
                 log_every: float = 60.0) -> None:
        self.log = log
        self.name = name
        self.clock = clock
        self.log_every = log_every
        self.bad_rows: dict[str, int] = {}
        """Distinct rows skipped per table, since start."""
        self.refresh_errors = 0
        """Failed refreshes since start (store unreachable, locked, or a bug)."""
        self.unexpected_errors = 0
        """Of those, errors of an unexpected kind (a bug): the refresher carried on."""
        self.failing_since: float | None = None
        self._last_line = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()

    def bad_row(self, table: str, key: str, reason: str) -> None:
        """Report a skipped row once (a row read again by a later reload is not reported
        again)."""
        with self._lock:
            if (table, key) in self._seen:
                return
            if len(self._seen) >= 100_000:  # bounded: forget, at worst warn again
                self._seen.clear()
            self._seen.add((table, key))
            self.bad_rows[table] = self.bad_rows.get(table, 0) + 1
        self.log.warning("directory %s: skipping a row of %s (%s): %s", self.name, table,
                         key, reason)

    def failed(self, message: str, *, expected: bool) -> None:
        now = self.clock()
        self.refresh_errors += 1
        if not expected:
            self.unexpected_errors += 1
        if self.failing_since is None:
            self.failing_since = now
        elif now - self._last_line < self.log_every:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} similar lines suppressed)" if self._suppressed else ""
        self._last_line = now
        self._suppressed = 0
        if expected:
            self.log.warning("directory %s unavailable: %s%s", self.name, message, more)
        else:
            self.log.error("directory %s: unexpected error while refreshing (will retry): "
                           "%s%s", self.name, message, more, exc_info=True)

    def ok(self) -> None:
        if self.failing_since is not None:
            self.log.warning("directory %s recovered after %.1fs", self.name,
                             self.clock() - self.failing_since)
            self.failing_since = None
            self._suppressed = 0


class Unavailable:
    """Stands in for a backend's snapshot while it cannot be served (store unreadable,
    replica older than `max_staleness`): every lookup raises `DirectoryError(message)`."""

    def __init__(self, message: str) -> None:
        self.message = message

    @property
    def tables(self) -> NoReturn:
        raise DirectoryError(self.message)
