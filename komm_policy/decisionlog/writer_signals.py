"""The writer process's signals: what it ignores, and starting it without a window in
which a signal meant for the service's process group kills it."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

GROUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Signals a service manager or terminal sends the whole process group; the writer
ignores them (the service stops it, after draining; only the service reloads)."""


def start_resource_tracker_deaf_to_sighup() -> None:
    """Start multiprocessing's resource tracker (every spawn needs it) with SIGHUP ignored,
    which it keeps across exec: a SIGHUP to the process group (a terminal hangup, a
    supervisor signalling the group to reload) otherwise kills it, and the next writer
    start relaunches it with a warning.  It ignores SIGINT and SIGTERM by itself.  Only
    from the main thread (signal dispositions are set there); elsewhere it starts as
    multiprocessing starts it."""
    from multiprocessing import resource_tracker

    if threading.current_thread() is not threading.main_thread():
        resource_tracker.ensure_running()
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def group_signals_blocked() -> Iterator[None]:
    """Around starting the writer: the calling thread blocks `GROUP_SIGNALS`, a mask the
    new process inherits across exec, so one arriving before the writer could ignore it
    waits (and is then ignored) instead of killing it.  Any thread may call it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)

