"""Whether a writer whose heartbeat is late is hung, or only waiting for CPU.

The writer runs at a low CPU priority (`LogSettings.writer_nice`, or SCHED_IDLE with
`writer_sched_idle`): under a load that takes every CPU it may get almost none for a
while, and its heartbeat falls behind although nothing is wrong.  The service must not
kill such a writer (a new one would be starved the same way, and the restarts cost
more CPU): it kills a late writer only when it is not starved (`starved`).  Linux only
(`/proc`); elsewhere every late writer counts as hung, as before.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

STARVED_CPU_SHARE = 0.1
"""A late writer that used less CPU than this share of the time since its last
heartbeat, and is runnable, is waiting for CPU; one that used more is spinning."""


class ProcessSample(NamedTuple):
    """A process's scheduler state (the one letter of `/proc/PID/stat`, proc(5): R
    runnable, S sleeping, D waiting for a disk, T stopped, Z ended) and the CPU it used
    so far (user + system, seconds)."""

    state: str
    cpu: float


def sample(pid: int | None, proc: Path = Path("/proc")) -> ProcessSample | None:
    """The process's state and CPU, or None (no such process, no `/proc`)."""
    if pid is None:
        return None
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # After the command name in parentheses (which may hold spaces and parentheses):
    # state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt, majflt,
    # cmajflt, utime, stime (clock ticks).
    fields = text[text.rfind(")") + 2:].split()
    try:
        return ProcessSample(fields[0], (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    except (IndexError, ValueError):
        return None


def starved(now: ProcessSample | None, at_beat: ProcessSample | None, late: float) -> bool:
    """True when a writer whose heartbeat is `late` seconds old is waiting for CPU, not
    hung: runnable now (`now`), and it used less than `STARVED_CPU_SHARE` of `late` in
    CPU since its last heartbeat (`at_beat`, sampled then).  A writer that sleeps, waits
    for a disk, is stopped, or spins without beating is not starved; without samples,
    none is."""
    if now is None or at_beat is None:
        return False
    return now.state == "R" and now.cpu - at_beat.cpu < STARVED_CPU_SHARE * late


class Liveness:
    """The supervisor's judgment of one writer after another: remembers the CPU a writer
    had used when its heartbeat last moved (sampled at the supervisor's next look)."""

    def __init__(self) -> None:
        self._beat: tuple[int | None, float, ProcessSample | None] = (None, 0.0, None)

    def hung(self, pid: int | None, heartbeat: float, stall: float,
             now: float | None = None) -> bool:
        """True when writer `pid`, last heartbeat at `heartbeat` (time.time()), is more
        than `stall` seconds late and not waiting for CPU (`starved`)."""
        if self._beat[:2] != (pid, heartbeat):
            self._beat = (pid, heartbeat, sample(pid))
        late = (time.time() if now is None else now) - heartbeat
        return late > stall and not starved(sample(pid), self._beat[2], late)
