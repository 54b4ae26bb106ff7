"""What a replica reports about itself: bad rows skipped, refresh failures, recovery.

Every backend keeps one `ReplicaHealth` (the contract of issue #9 §3): a row that does not
fit the schema is skipped with one warning naming table, key and reason, and counted; an
error while refreshing is logged and counted; repeats of one reason are rate-limited (the
first line, then at most one per `log_every` seconds), but a changed reason (the store came
back without a table the policies read, say) is logged at once; a "recovered" line follows
once a refresh succeeds again.
"""

from __future__ import annotations

import hashlib
import logging
import sys
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
        self._last_reason: str | None = None
        """The reason of the last line logged (a different one is logged at once)."""
        self._suppressed = 0
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()

    def bad_row(self, table: str, key: str, reason: str) -> None:
        """Report a skipped row once (a row read again by a later reload is not reported
        again).  A long key (a megabyte primary key) is logged and remembered as its first
        80 characters and a digest, so neither a log line nor memory grows with it."""
        if len(key) > 160:
            digest = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:16]
            key = f"{key[:80]}… ({len(key):,} characters, sha256 {digest})"
        if len(reason) > 400:
            reason = f"{reason[:400]}…"
        with self._lock:
            if (table, key) in self._seen:
                return
            if len(self._seen) >= 100_000:  # bounded: forget, at worst warn again
                self._seen.clear()
            self._seen.add((table, key))
            self.bad_rows[table] = self.bad_rows.get(table, 0) + 1
        self.log.warning("directory %s: skipping a row of %s (%s): %s", self.name, table,
                         key, reason)

    def failed(self, message: str, *, expected: bool, reason: str | None = None) -> None:
        """Count a failed refresh and log it unless it repeats the last line's reason
        within `log_every` seconds.  `reason` (default: `message`) is what identifies a
        repeat when the message carries varying details (a retry delay)."""
        now = self.clock()
        self.refresh_errors += 1
        if not expected:
            self.unexpected_errors += 1
        reason = message if reason is None else reason
        if self.failing_since is None:
            self.failing_since = now
        elif reason == self._last_reason and now - self._last_line < self.log_every:
            self._suppressed += 1
            return
        more = ""
        if self._suppressed:
            more = (f" ({self._suppressed} similar lines suppressed)"
                    if reason == self._last_reason else
                    f" ({self._suppressed} lines of the previous reason suppressed)")
        self._last_line = now
        self._last_reason = reason
        self._suppressed = 0
        if expected:
            self.log.warning("directory %s unavailable: %s%s", self.name, message, more)
        else:
            # The traceback when called while handling the exception (the SQLite
            # refresher); not otherwise (the subscription logged it where it caught it):
            # exc_info=True outside an `except` prints "NoneType: None".
            self.log.error("directory %s: unexpected error while refreshing (will retry): "
                           "%s%s", self.name, message, more, exc_info=sys.exception())

    def ok(self) -> None:
        if self.failing_since is not None:
            self.log.warning("directory %s recovered after %.1fs", self.name,
                             self.clock() - self.failing_since)
            self.failing_since = None
            self._last_reason = None
            self._suppressed = 0


class Unavailable:
    """Stands in for a backend's snapshot while it cannot be served (store unreadable,
    replica older than `max_staleness`): every lookup raises `DirectoryError(message)`."""

    def __init__(self, message: str) -> None:
        self.message = message

    @property
    def tables(self) -> NoReturn:
        raise DirectoryError(self.message)
