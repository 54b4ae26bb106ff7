"""The service's side of the decision log: spool each decision, supervise the writer.

`DecisionLog.submit_decision` runs on the answer path before the answer is sent: it packs
the decision (`entries.EntryPacker`) and appends it to the spool (one `write`).  Once that
returned the record survives the service being killed.  The HTTP protocol's inline path stages
each decision instead (`stage_decision`) and commits once per event-loop turn
(`commit`: one `write` for all the answers of that turn), sending those answers after.
When the spool cannot be written (disk full, read-only) `on_spool_error` decides:
"tempfail" — `submit_decision` (`commit`) returns False and the hook answers 451 4.3.0
instead of the decision (Stalwart retries the message later); "accept" — the decision
stands and its entry is held in a bounded in-memory queue, written to the spool first
thing once it works again; past `queue_max` held entries, further ones are dropped,
counted and logged.

A supervisor thread watches the writer process (its exit, and a heartbeat in the spool's
state file) and restarts it with backoff, even when no request comes; the new writer
resumes from the positions it saved.  `status()` is what /metrics and /readyz show.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..decision import Decision
from ..wire import Request
from .ages import SpoolAges
from .entries import EntryPacker
from .liveness import Liveness
from .records import RecordIds
from .recovery import note_losses
from .settings import LogSettings, LogStatus
from .sinks import SinkSpec
from .spool import MAX_ENTRY, SpoolAppender, position_from, read_state, segments
from .writer import writer_main
from .writer_signals import group_signals_blocked, start_resource_tracker_deaf_to_sighup

log = logging.getLogger(__name__)


WRITER_GRACE = 5.0
"""Seconds a writer may be down (being restarted) before /readyz reports it."""


class DecisionLog:
    def __init__(self, specs: Sequence[SinkSpec], settings: LogSettings | None = None
                 ) -> None:
        self.settings = settings or LogSettings()
        self._specs = tuple(specs)
        self._names = [s.name for s in self._specs]
        self.spool_dir = Path(self.settings.spool).resolve()
        self._appender = SpoolAppender(self.spool_dir,
                                       fsync_interval=self.settings.fsync_interval,
                                       segment_bytes=self.settings.segment_bytes)
        self._ages = SpoolAges(self._appender.next_seq, time.time())
        self._ids = RecordIds()
        self._pack = EntryPacker().pack
        self._held: deque[bytes] = deque()
        self._staged: list[bytes] = []
        self.spool_errors = 0
        self.tempfails = 0
        self.unrecordable = 0
        self.dropped = 0
        self.restarts = 0
        self._failing: str | None = None
        self._last_error_log = 0.0
        self._context = multiprocessing.get_context("spawn")
        start_resource_tracker_deaf_to_sighup()
        self._stopping = threading.Event()
        self._process: Any = None
        self._dead_since: float | None = None
        self._process_lock = threading.Lock()
        self._heartbeat = self._context.Value("d", 0.0, lock=False)
        self._liveness = Liveness()  # late and not starved of CPU: hung
        self._start_writer()
        self._supervisor = threading.Thread(target=self._supervise, name="komm-log-supervisor",
                                            daemon=True)
        self._supervisor.start()

    # -- answer path ----------------------------------------------------------------------

    def submit_decision(self, request: Request, decision: Decision, duration_ms: float,
                        at: float, *, shadow: bool = False,
                        redact_client_ip: bool = False) -> bool:
        """Spool an answered request's decision; `at` is the answer's time.time().
        False means: not spooled, and on_spool_error = tempfail — answer 451 instead."""
        entry = self._entry(request, decision, duration_ms, at, shadow, redact_client_ip)
        if entry is None:
            return False
        return self._append([entry], at)

    def stage_decision(self, request: Request, decision: Decision, duration_ms: float,
                       at: float, *, shadow: bool = False,
                       redact_client_ip: bool = False) -> bool:
        """Like `submit_decision`, but the entry waits for `commit`, which writes every
        entry staged since the last one with one `write` (the HTTP protocol commits once
        per event-loop turn, then sends the answers of that turn).  False: the decision
        cannot be recorded (answer 451 now, nothing staged).  The answer must not leave
        before `commit` returned True."""
        entry = self._entry(request, decision, duration_ms, at, shadow, redact_client_ip)
        if entry is None:
            return False
        self._staged.append(entry)
        return True

    def commit(self) -> bool:
        """Spool the staged entries (one `write`).  False means: none of them was
        spooled, and on_spool_error = tempfail — answer all of them 451 instead."""
        staged = self._staged
        if not staged:
            return True
        self._staged = []
        if self._held or self._failing is not None:
            return self._append(staged, time.time())
        # The usual case, `_append` without what only a failing spool needs.
        appender = self._appender
        try:
            seq = (appender.append(staged[0]) if len(staged) == 1
                   else appender.append_batch(staged))
        except OSError as exc:
            return self._spool_failed(staged, exc)
        self._ages.note(seq, time.time())
        return True

    def _entry(self, request: Request, decision: Decision, duration_ms: float, at: float,
               shadow: bool, redact_client_ip: bool) -> bytes | None:
        """The spool entry, or None (counted, logged) when it cannot be recorded."""
        try:
            # The id's text is made by the writer (`entries`): prefix and number here.
            entry = self._pack(request, decision, duration_ms, at, self._ids.prefix,
                               next(self._ids.numbers), shadow=shadow,
                               redact_client_ip=redact_client_ip)
            if len(entry) > MAX_ENTRY:
                raise ValueError(f"record of {len(entry)} bytes over {MAX_ENTRY} bytes")
        except (ValueError, TypeError, OverflowError) as exc:
            self._unrecordable(request, exc)
            return None
        return entry

    def _append(self, entries: list[bytes], at: float) -> bool:
        try:
            if self._held:
                self._write_held()
            seq = self._appender.append_batch(entries)
        except OSError as exc:
            return self._spool_failed(entries, exc)
        if self._failing is not None:
            log.warning("decision log spool writable again")
            self._failing = None
        self._ages.note(seq, at)  # for the age of the oldest unwritten record
        return True

    def _unrecordable(self, request: Request, exc: Exception) -> bool:
        """A decision whose record cannot be encoded or is too large for the spool: never
        answered unlogged — the answer becomes 451 (Stalwart retries), counted in
        `unrecordable`, logged (rate-limited)."""
        self.unrecordable += 1
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:
            self._last_error_log = now
            log.error("decision log: a %s decision cannot be recorded (%s: %s); answered "
                      "451 so that nothing is accepted unlogged", request.context.stage,
                      type(exc).__name__, exc)
        return False

    def _write_held(self) -> None:
        held = self._held
        while held:
            self._appender.append(held[0])
            held.popleft()

    def _spool_failed(self, entries: list[bytes], exc: OSError) -> bool:
        self.spool_errors += 1
        self._failing = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:  # rate-limited
            self._last_error_log = now
            log.error("decision log spool %s cannot be written (%s); on_spool_error = %s",
                      self.spool_dir, self._failing, self.settings.on_spool_error)
        if self.settings.on_spool_error == "tempfail":
            self.tempfails += len(entries)
            return False
        for entry in entries:
            if len(self._held) < self.settings.queue_max:
                self._held.append(entry)
            else:
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.error("decision log: %d records dropped so far (spool failing, "
                              "%d held in memory)", self.dropped, len(self._held))
        return True

    @property
    def depth(self) -> int:
        """Entries held in memory (only while the spool cannot be written)."""
        return len(self._held)

    def _check_spool(self) -> None:
        """The spool removed under the service (`SpoolAppender.check`): repaired and
        logged, or a spool error (appends fail; /readyz 503 with the reason)."""
        try:
            repaired = self._appender.check()
        except OSError as exc:
            if self._failing is None or time.monotonic() - self._last_error_log >= 10.0:
                self._last_error_log = time.monotonic()
                log.error("decision log spool %s was removed and cannot be re-created "
                          "(%s); on_spool_error = %s", self.spool_dir, exc,
                          self.settings.on_spool_error)
            self._failing = f"removed and cannot be re-created: {type(exc).__name__}: {exc}"
            return
        if repaired is not None:
            log.error("decision log spool %s was removed while serving: %s; records in "
                      "segments the writer had not taken yet are counted as lost",
                      self.spool_dir, repaired)
            if self._failing is not None and self._failing.startswith("removed"):
                self._failing = None

    # -- the writer process ---------------------------------------------------------------

    def _start_writer(self) -> None:
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=writer_main, name="komm-decision-log",
            args=(str(self.spool_dir), self._specs, receiver, self.settings.poll,
                  self.settings.spool_keep, 20.0, self.settings.writer_nice,
                  self._heartbeat, self.settings.writer_sched_idle),
            daemon=True)
        with group_signals_blocked():
            process.start()
        receiver.close()
        old = getattr(self, "_control", None)
        self._control = sender  # closing it (or dying) tells the writer to finish
        if old is not None:
            with contextlib.suppress(OSError):
                old.close()
        self._writer_started = time.time()
        self._process = process

    @property
    def writer_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _supervise(self) -> None:
        from multiprocessing.connection import wait

        delay = 0.1
        while not self._stopping.is_set():
            process = self._process
            wait([process.sentinel], timeout=0.5)
            if self._stopping.is_set():
                return
            self._check_spool()
            if self._failing is not None and self._appender.broken is None:
                # readiness recovers without a request
                with contextlib.suppress(OSError):
                    self._appender.probe()
                    log.warning("decision log spool writable again (a probe succeeded)")
                    self._failing = None
            if process.is_alive():
                heartbeat = max(read_state(self.spool_dir).get("heartbeat", 0.0),
                                self._heartbeat.value, self._writer_started)
                if self._liveness.hung(process.pid, heartbeat, self.settings.writer_stall):
                    log.error("decision log writer %s stalled; restarting it", process.pid)
                    process.kill()
                    process.join(5)
                else:
                    delay = 0.1
                    continue
            if self._dead_since is None:
                self._dead_since = time.monotonic()
            if process.exitcode == -signal.SIGTERM:
                # A stop of the process group (systemd) before the writer ignores it.
                log.info("decision log writer %s ended by SIGTERM", process.pid)
                if self._stopping.wait(WRITER_GRACE):
                    return
            log.error("decision log writer %s exited (code %s); restarting it",
                      process.pid, process.exitcode)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 5.0)
            with self._process_lock:
                if self._stopping.is_set():
                    return
                self.restarts += 1
                self._start_writer()
                self._dead_since = None

    # -- state ----------------------------------------------------------------------------

    def status(self) -> LogStatus:
        state = read_state(self.spool_dir)
        positions = state.get("positions", {})
        sinks = state.get("sinks", {})
        next_seq = self._appender.next_seq
        status = LogStatus(
            alive=self._process is not None and self._process.is_alive(),
            restarts=self.restarts, next_seq=next_seq, held=len(self._held),
            spool_errors=self.spool_errors, spool_failing=self._failing,
            tempfails=self.tempfails, unrecordable=self.unrecordable,
            dropped=self.dropped)
        now = time.time()
        lowest = next_seq
        for name in self._names:
            position = position_from(positions.get(name))
            taken = position.seq if position is not None else self._oldest_seq()
            lowest = min(lowest, taken)
            status.backlog[name] = max(0, next_seq - taken) + len(self._held)
            status.oldest_age[name] = self._ages.age(taken, next_seq, now)
            info = sinks.get(name, {})
            status.sink_errors[name] = int(info.get("errors", 0))
            if info.get("failing"):
                status.failing_sinks[name] = str(info.get("last_error"))
            if info.get("blocked"):
                status.blocked_sinks[name] = str(info["blocked"])
            if isinstance(info.get("counters"), dict):
                status.sink_counters[name] = info["counters"]
        note_losses(status, state, now)
        self._ages.prune(lowest)
        return status

    def _oldest_seq(self) -> int:
        present = segments(self.spool_dir)
        return present[0] if present else self._appender.next_seq

    def problem(self, status: LogStatus | None = None) -> str | None:
        """Why /readyz should say 503, or None."""
        status = status or self.status()
        settings = self.settings
        if status.spool_failing:
            return f"decision log spool cannot be written: {status.spool_failing}"
        dead_since = self._dead_since
        if not status.alive and (dead_since is None
                                 or time.monotonic() - dead_since > WRITER_GRACE):
            return "decision log writer not running (restarting)"
        for name, reason in status.blocked_sinks.items():
            return f"decision log sink {name} refuses records, all kept in the spool: {reason}"
        for name, backlog in status.backlog.items():
            if backlog > settings.max_backlog_records:
                return f"decision log sink {name}: {backlog} records behind"
            age = status.oldest_age[name]
            if age > settings.max_backlog_age:
                reason = status.failing_sinks.get(name)
                return (f"decision log sink {name}: oldest unwritten record {age:.0f}s old"
                        + (f" ({reason})" if reason else ""))
        return None

    # -- control --------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every sink has taken everything spooled so far."""
        deadline = time.monotonic() + timeout
        target = self._appender.next_seq
        while True:
            positions = read_state(self.spool_dir).get("positions", {})
            taken = [position_from(positions.get(n)) for n in self._names]
            if all(p is not None and p.seq >= target for p in taken) and not self._held:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def close(self, timeout: float = 30.0) -> None:
        """Stop supervising, let the writer drain the spool, wait for it.  What a sink
        could not take stays in the spool for the next start."""
        self._stopping.set()
        self._supervisor.join(5)
        self._check_spool()  # removed since the last tick: write the live segment back
        if self._staged:  # (answers that were never sent: recorded all the same)
            self.commit()
        with contextlib.suppress(OSError):
            if self._held:
                self._write_held()
        if self._held:
            log.error("decision log: %d records held in memory could not be spooled",
                      len(self._held))
        self._appender.sync()
        with self._process_lock:
            if not self._process.is_alive():  # e.g. a group SIGTERM as it started: drain
                self._start_writer()
            process = self._process
            with contextlib.suppress(OSError):
                self._control.send_bytes(b"stop")
                self._control.close()
        process.join(timeout)
        if process.is_alive():
            log.error("decision log writer did not finish in %.0fs; the spool keeps the "
                      "rest for the next start", timeout)
            process.terminate()
            process.join(5)
        self._appender.close()
