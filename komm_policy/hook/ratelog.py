"""Rate-limited warnings: hostile or broken clients must not be able to flood the log.

Each key (e.g. "header timeout") logs at most one line per interval; the next line
says how many were suppressed in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """`warning(key, message, *args)` (or `exception`) logs at most once per `interval`
    seconds per key."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def exception(self, key: str, message: str, *args: object) -> None:
        """An ERROR with the current exception's traceback, rate-limited like `warning`:
        for the backstops a client could otherwise trigger once per request."""
        self.log(logging.ERROR, key, message, *args, exc_info=True)

    def log(self, level: int, key: str, message: str, *args: object,
            exc_info: bool = False) -> None:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (%d more like this in the last %.0f s)"
            args = (*args, suppressed, now - last if last is not None else self.interval)
        self.logger.log(level, message, *args, exc_info=exc_info)
