"""Timing: calibrated chunks, interleaved rounds, medians with min and max.

The machine is shared and noisy (2 vCPUs with steal time), so every comparison is made
in one process, engines interleaved A B C … A B C …, and reported as the median of the
rounds with the spread.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Series:
    name: str
    rounds_us: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rounds_us)

    @property
    def low(self) -> float:
        return min(self.rounds_us)

    @property
    def high(self) -> float:
        return max(self.rounds_us)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "median_us": self.median, "min_us": self.low,
                "max_us": self.high, "rounds_us": self.rounds_us, "calls": self.calls}


def _batch(fn: Callable[[Any], Any], arg: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn(arg)
    return time.perf_counter() - start


def calibrate(fn: Callable[[Any], Any], arg: Any, chunk_seconds: float) -> int:
    """Calls per chunk so that one chunk takes about `chunk_seconds`."""
    n = 1
    while True:
        elapsed = _batch(fn, arg, n)
        if elapsed >= chunk_seconds / 4 or n >= 10_000_000:
            return max(1, int(n * chunk_seconds / max(elapsed, 1e-9)))
        n *= 4


def measure(fn: Callable[[Any], Any], arg: Any, chunk: int, min_seconds: float
            ) -> tuple[float, int]:
    """Microseconds per call over whole chunks lasting at least `min_seconds`."""
    gc.collect()
    total = 0.0
    calls = 0
    while total < min_seconds:
        total += _batch(fn, arg, chunk)
        calls += chunk
    return total / calls * 1e6, calls


def interleaved(cases: list[tuple[str, Callable[[Any], Any], Any]], *, rounds: int,
                min_seconds: float, chunk_seconds: float) -> list[Series]:
    chunks = [calibrate(fn, arg, chunk_seconds) for _, fn, arg in cases]
    series = [Series(name) for name, _, _ in cases]
    for _ in range(rounds):
        for (_name, fn, arg), chunk, s in zip(cases, chunks, series, strict=True):
            us, calls = measure(fn, arg, chunk, min_seconds)
            s.rounds_us.append(us)
            s.calls.append(calls)
    return series
