"""The writer's state of each sink, and the backoff after failures."""

from __future__ import annotations

import random

from .sinks import Sink, SinkSpec
from .spool import Position

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


def backoff_delay(failures: int, rng: random.Random, *, first: float = BACKOFF_FIRST,
                  cap: float = BACKOFF_MAX) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1, 2, …): the capped
    exponential `first * 2**(failures-1)` with equal jitter, uniform in [cap/2, cap]
    (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015).  Never below half
    the step, so a dead server is not hammered; never above `cap`."""
    step = min(cap, first * 2 ** min(max(failures, 1) - 1, 16))
    return step / 2 + rng.uniform(0.0, step / 2)


class SinkState:
    """What the writer knows of one sink: its position, the sink once opened, failures,
    backoff and what its status shows."""

    __slots__ = ("blocked", "counters", "errors", "failures", "last_error", "name",
                 "position", "retry_at", "sink", "spec")

    def __init__(self, spec: SinkSpec | Sink, position: Position | None) -> None:
        self.spec = spec
        # A spec is opened on first use, so a sink that cannot open yet (store missing,
        # directory not writable) is retried like a failed write.
        self.sink: Sink | None = None if hasattr(spec, "open") else spec  # type: ignore[assignment]
        self.name: str = spec.name
        self.position = position
        self.failures = 0
        self.errors = 0
        self.retry_at = 0.0
        self.last_error: str | None = None
        self.blocked: str | None = None  # SinkBlocked's message until a write succeeds
        self.counters: dict[str, int] = {}
