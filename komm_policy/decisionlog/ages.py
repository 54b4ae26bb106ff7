"""How old the oldest record a sink has not taken is: (seq, time) samples of the spool.

The service notes the sequence number it appended at most every 10 ms (`note`); the age of
a sink's oldest unwritten record is then the time of the newest sample at or before the
sink's position (`age`, an upper bound, never an underestimate).  Samples every sink has
passed are dropped (`prune`, on each status read); without status reads they are thinned
to every other one past `max_samples`, so memory stays bounded whatever the traffic.
"""

from __future__ import annotations

import bisect

MAX_SAMPLES = 100_000
"""(seq, time) samples kept for the oldest-unwritten age (one per 10 ms of traffic)."""
SAMPLE_EVERY = 0.01
"""Seconds between samples."""


class SpoolAges:
    """Ages of unwritten records, in seconds, from samples of (seq, Unix time)."""

    def __init__(self, first_seq: int, started: float, max_samples: int | None = None
                 ) -> None:
        self.first_seq = first_seq  # the first seq this service appended
        self.started = started
        self.max_samples = MAX_SAMPLES if max_samples is None else max_samples
        self.seqs: list[int] = []
        self.times: list[float] = []
        self._last = 0.0

    def note(self, seq: int, at: float) -> None:
        """Record that `seq` was appended at `at` (kept if 10 ms after the last sample)."""
        if at - self._last < SAMPLE_EVERY:
            return
        self._last = at
        self.seqs.append(seq)
        self.times.append(at)
        if len(self.seqs) > self.max_samples:  # nobody reads /metrics: thin out
            self.seqs = self.seqs[::2]
            self.times = self.times[::2]

    def age(self, taken: int, next_seq: int, now: float) -> float:
        """Seconds the oldest record after `taken` (a sink's position) has waited."""
        if taken >= next_seq:
            return 0.0
        if taken < self.first_seq or not self.seqs:
            return now - self.started  # left from before this start: at least this old
        index = bisect.bisect_right(self.seqs, taken) - 1
        return now - self.times[max(index, 0)]

    def prune(self, lowest: int) -> None:
        """Drop the samples before `lowest`, the lowest position of any sink."""
        index = bisect.bisect_right(self.seqs, lowest) - 1
        if index > 0:
            del self.seqs[:index]
            del self.times[:index]
