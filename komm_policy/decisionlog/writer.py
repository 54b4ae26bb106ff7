"""The writer process: reads the spool and feeds every sink from its own position.

One loop: for each sink not waiting out a backoff, read the next batch after its
position, turn the raw entries into records (once per batch, shared by the sinks at the
same position), write them, and move the position.  Positions and the writer's status
go to the spool's `state.json` (atomic rename) after every batch, or in the writer
process every `SAVE_EVERY` seconds (sooner after `SAVE_RECORDS` / `SAVE_BYTES`, at once
when caught up); a restarted writer resumes from there.  A failed sink keeps its
position and is retried with backoff while the others go on: 0.5 s doubling up to
30 s, each delay drawn uniformly from its upper half ("equal jitter", `backoff_delay`),
so many writers that lost one server do not come back in step.  A segment every sink
has read past is removed as soon as the writer sees that (with `spool_keep` set, once
it is also that old; that check runs every `RETAIN_EVERY` seconds, with each sink's own
retention).

Why a process: building records, JSON encoding, SQLite inserts and file writes are
CPU-bound Python; in a thread they would hold the GIL against the event loop thread.
The writer ends when told to (after draining what the spool holds) or when its parent
is gone (the control pipe's end; after draining, so a killed service still gets its
records stored).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import random
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..logsetup import configure_logging
from .entries import record_from_raw
from .records import Timestamps, encode_record
from .recovery import resume, set_aside
from .sink_state import SinkState, backoff_delay
from .sinks import Sink, SinkBlocked, SinkSpec, SpooledRecord
from .spool import Position, load_state, position_from, write_state
from .spool_reader import SpoolReader
from .writer_signals import GROUP_SIGNALS

log = logging.getLogger(__name__)

BATCH = 2000
SAVE_EVERY = 0.5
"""Seconds between saves of the positions while the writer delivers (`writer_main`; it
saves at once when it has caught up, and before it ends)."""
SAVE_RECORDS = BATCH
SAVE_BYTES = 2 * 1024 * 1024
"""Records / bytes of JSON lines delivered after which the positions are saved sooner.
What a writer killed between saves delivers again is what it delivered since the last
save: fewer than `SAVE_RECORDS` records and `SAVE_BYTES` bytes, plus the batch that
crossed them (at most `BATCH` records); the JSONL sink recognises the ids in its last
`sinks.TAIL_BYTES` (10 MiB), so none is stored twice while a batch of `BATCH` records
holds less than 8 MiB (4 KB a record; the shipped RCPT decision's is 1.1 KB)."""
RETAIN_EVERY = 60.0


class SpoolWriter:
    """Drives the sinks from the spool.  Usable in-process (tests) or as the writer
    process's body (`writer_main`)."""

    def __init__(self, directory: str | Path, sinks: Sequence[SinkSpec | Sink], *,
                 clock: Callable[[], float] = time.monotonic,
                 batch: int = BATCH, rng: random.Random | None = None,
                 save_every: float = 0.0, beat: Callable[[], None] = lambda: None) -> None:
        self.directory = Path(directory)
        state, problem = load_state(self.directory)
        self.recovered: dict[str, Any] | None = state.get("state_recovered")
        """The last corrupt `state.json` set aside (`recovery.set_aside`), kept in the
        state the writer saves."""
        if problem is not None:
            self.recovered = set_aside(self.directory, problem, time.time())
        self.reader = SpoolReader(self.directory, known=state.get("corruption"))
        self._beat = beat
        self._recover: set[str] = set()
        """Sinks whose position was lost: found again before their first batch."""
        saved = state.get("positions", {})
        self.states = [SinkState(s, self._restored(s.name, saved.get(s.name),
                                                   lost=problem is not None))
                       for s in sinks]
        self._clock = clock
        self._batch = batch
        self._rng = rng or random.Random()
        self._timestamps = Timestamps()
        self.written = 0
        self.undecodable = 0
        self._last_retain = clock()
        self._collected_below: int | None = None  # the oldest position at the last collect
        self._saved = [s.position for s in self.states]
        """What `state.json` holds: only segments below it are collected (see `save`)."""
        self._last_save_error = 0.0
        self._save_every = save_every
        self._last_save = clock()
        self._unsaved_records = self._unsaved_bytes = 0
        self.behind = False  # the last step read a full batch: more is waiting

    def _restored(self, name: str, saved: object, *, lost: bool) -> Position | None:
        """A sink's saved position, or None with the sink marked for `recovery.resume`
        when it was `lost` (a corrupt `state.json`) or does not fit the spool
        (`SpoolReader.trusted`)."""
        position = position_from(saved)
        why = self.reader.trusted(position) if position is not None else None
        if why is None and not lost:
            return position
        if why is not None:
            log.warning("decision log sink %s: its saved position %s does not fit the spool "
                        "(%s)", name, position.as_json() if position else None, why)
        self._recover.add(name)
        return None

    def step(self, *, force: bool = False) -> bool:
        """One batch for every sink that can take one; True if any progress was made."""
        progress = False
        delivered = delivered_bytes = 0  # the most any sink was given in this step
        cache: dict[Position | None, tuple[list[SpooledRecord], Position | None, int]] = {}
        now = self._clock()
        for state in self.states:
            if not force and now < state.retry_at:
                continue
            if state.name in self._recover:
                try:
                    if state.sink is None:
                        state.sink = state.spec.open()  # type: ignore[union-attr]
                    resume(state, self.reader, self._batch, self._beat)
                except Exception as exc:  # retried like a failed write
                    self._failed(state, exc)
                    continue
                self._recover.discard(state.name)
            key = state.position
            if key not in cache:
                entries, after = self.reader.read(key, self._batch)
                records = self._records(entries)
                cache[key] = (records, after, sum([len(r.line) for r in records]))
            records, after, size = cache[key]
            if after == state.position:
                continue
            try:
                if records:
                    if state.sink is None:
                        state.sink = state.spec.open()  # type: ignore[union-attr]
                    state.sink.write(records)
            except Exception as exc:  # keep the position and retry later
                self._count(state)
                self._failed(state, exc)
                continue
            self._count(state)
            if state.failures:
                log.warning("decision log sink %s delivering again after %d failed "
                            "attempts", state.name, state.failures)
            state.failures = 0
            state.last_error = None
            state.blocked = None
            state.position = after
            if state is self.states[0]:
                self.written += len(records)
            delivered = max(delivered, len(records))
            delivered_bytes = max(delivered_bytes, size)
            progress = True
        self.behind = any(len(records) >= self._batch for records, _, _ in cache.values())
        if progress:
            self._unsaved_records += delivered
            self._unsaved_bytes += delivered_bytes
            if (self._unsaved_records >= SAVE_RECORDS or self._unsaved_bytes >= SAVE_BYTES
                    or self._clock() - self._last_save >= self._save_every):
                self.save()
        return progress

    @property
    def unsaved(self) -> bool:
        """Positions moved since the last save (`save_every` defers saving)."""
        return [s.position for s in self.states] != self._saved

    def _records(self, entries: list[tuple[int, bytes]]) -> list[SpooledRecord]:
        records = []
        for seq, payload in entries:
            try:
                record, at = record_from_raw(payload, self._timestamps)
                records.append(SpooledRecord(seq, record.id, at, record.time,
                                             encode_record(record)))
            except Exception:  # one bad entry must not cost the others
                self.undecodable += 1
                log.exception("decision log: spool entry %d cannot be decoded; skipped", seq)
        return records

    @staticmethod
    def _count(state: SinkState) -> None:
        counters = getattr(state.sink, "counters", None)
        if counters is not None:
            state.counters = dict(counters())

    def _failed(self, state: SinkState, exc: Exception) -> None:
        state.errors += 1
        state.blocked = str(exc) if isinstance(exc, SinkBlocked) else None
        state.failures += 1
        state.last_error = f"{type(exc).__name__}: {exc}"
        if state.sink is not None and state.sink is not state.spec:
            # Start over from the spec: a sink in a bad state (a closed file after a
            # failed rotation, a broken connection) is not reused.
            with contextlib.suppress(Exception):
                state.sink.close()
            state.sink = None
        delay = backoff_delay(state.failures, self._rng)
        state.retry_at = self._clock() + delay
        log.error("decision log sink %s failed (retrying in %.1fs, nothing lost): %s",
                  state.name, delay, state.last_error)

    def retain(self, now: float, *, keep: float = 0.0) -> None:
        self.reader.collect(self._saved, keep=keep, now=now)
        for state in self.states:
            if state.sink is not None:
                try:
                    state.sink.retain(now)
                except Exception as exc:
                    log.error("decision log sink %s: retention failed: %s", state.name, exc)

    def maybe_retain(self, keep: float) -> None:
        """Sinks' retention every `RETAIN_EVERY` s; without `keep` (seconds a taken
        segment stays), a taken segment goes as soon as every sink's position has left
        it: the spool's disk is freed by delivery itself, not by the next 60 s tick (a
        disk the spool filled otherwise stays full although every record was taken)."""
        if self._clock() - self._last_retain >= RETAIN_EVERY:
            self._last_retain = self._clock()
            self.retain(time.time(), keep=keep)
            return
        if keep > 0:
            return
        positions = self._saved
        if not positions or any(p is None for p in positions):
            return
        oldest = min(p.segment for p in positions if p is not None)
        if oldest != self._collected_below:
            self._collected_below = oldest
            self.reader.collect(positions)

    def next_retry_in(self) -> float | None:
        waiting = [s.retry_at for s in self.states if s.failures]
        return max(0.0, min(waiting) - self._clock()) if waiting else None

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "heartbeat": time.time(),
            "positions": {s.name: s.position.as_json() if s.position else None
                          for s in self.states},
            "sinks": {s.name: {"errors": s.errors, "failing": s.failures > 0,
                               "last_error": s.last_error, "blocked": s.blocked,
                               "counters": s.counters} for s in self.states},
            "undecodable": self.undecodable,
            "corruption": self.reader.corruption(),
            "state_recovered": self.recovered,
        }

    def save(self) -> None:
        positions = [s.position for s in self.states]
        try:
            try:
                write_state(self.directory, self.status())
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # A full disk (the spool itself, most often): free the segments every
                # sink has taken, then save.  Safe in this order: a crash in between
                # leaves saved positions in a removed segment, and the reader goes on
                # at the oldest one present (what it redelivers, record ids make a
                # no-op; the tombstones say nothing there was lost); were they saved
                # first, nothing would ever free the disk.
                if not self.reader.collect(positions, mark=True):
                    raise
                write_state(self.directory, self.status())
            self._saved = positions
            self._last_save = self._clock()
            self._unsaved_records = self._unsaved_bytes = 0
            self.reader.clear_tombs(positions)
        except OSError as exc:  # positions stay in memory meanwhile
            if time.monotonic() - self._last_save_error >= 10.0:
                self._last_save_error = time.monotonic()
                log.error("decision log: cannot save the sink positions: %s", exc)

    def close(self) -> None:
        self.reader.close()
        for state in self.states:
            if state.sink is not None:
                try:
                    state.sink.close()
                except Exception:  # closing is best effort
                    log.exception("closing decision log sink %s", state.name)


def adopt_orphans(own: Path, specs: Sequence[SinkSpec]) -> int:
    """Drain the spools of workers that are gone (`--workers N`: each worker spools into
    `spool/worker-PID`; a worker that exits leaves its directory behind).  A spool whose
    lock can be taken has no service; its entries go to this writer's sinks from the
    positions saved there, and the directory is removed once every sink took all of it.
    Returns how many records were moved."""
    moved = 0
    for other in sorted(own.parent.glob("worker-*")):
        if other == own or not other.is_dir():
            continue
        try:
            fd = os.open(other / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its worker is alive
            os.close(fd)
            continue
        try:
            writer = SpoolWriter(other, list(specs))
            try:
                while writer.step(force=True):
                    pass
                writer.save()
                moved += writer.written
                done = all(not writer.reader.read(state.position, 1)[0]
                           for state in writer.states)
            finally:
                writer.close()
            if done:
                log.info("decision log: %d records from the spool of an ended worker (%s) "
                         "written", writer.written, other.name)
                shutil.rmtree(other, ignore_errors=True)
        finally:
            os.close(fd)
    return moved


def writer_main(directory: str, specs: Sequence[SinkSpec], control: Any,
                poll: float = 0.05, keep: float = 0.0, drain_timeout: float = 20.0,
                nice: int = 10, heartbeat: Any = None, sched_idle: bool = False) -> None:
    """The writer process.  `control` is the read end of a pipe from the service: a
    message or its end (the service closed it, or died) means drain, then exit.  It runs
    at a lower CPU priority (`nice`, or SCHED_IDLE with `sched_idle`): answers come
    first, and the spool holds what the writer has not taken yet (its backlog is in
    /metrics and /readyz)."""
    configure_logging()  # the service's level (KOMM_LOG_LEVEL); httpx quiet
    # The writer ends when the service tells it or is gone, after draining.  A SIGTERM
    # or SIGINT to the whole process group (systemd's stop, Ctrl-C) reaches it too; it
    # keeps writing while the service finishes its requests and then stops it.
    # SIGHUP (the service's reload signal, or a terminal hangup sent to the group) too:
    # only the service reloads.
    for signum in GROUP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)  # blocked since birth
    with contextlib.suppress(OSError):
        if sched_idle and hasattr(os, "SCHED_IDLE"):  # Linux: CPU nothing else wants
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        elif nice:
            os.nice(nice)
    # The heartbeat the service watches: shared memory (`heartbeat`, a float), so a
    # writer that cannot save its state (a full disk) is not taken for a stalled one.
    beat = (lambda: setattr(heartbeat, "value", time.time())) if heartbeat is not None \
        else (lambda: None)
    writer = SpoolWriter(directory, specs, save_every=SAVE_EVERY, beat=beat)
    last_save = 0.0
    last_adopt = 0.0
    try:
        while True:
            beat()
            progressed = writer.step()
            writer.maybe_retain(keep)
            if Path(directory).name.startswith("worker-") and (
                    time.monotonic() - last_adopt >= RETAIN_EVERY):
                last_adopt = time.monotonic()
                try:
                    adopt_orphans(Path(directory), specs)
                except Exception:  # never the end of the writer
                    log.exception("decision log: draining an ended worker's spool failed")
            if progressed:
                last_save = time.monotonic()
            elif writer.unsaved or time.monotonic() - last_save >= 1.0:
                # Caught up: the positions saving deferred (`SAVE_EVERY`), or the
                # heartbeat in `state.json`.
                writer.save()
                last_save = time.monotonic()
            # Caught up: wait a poll interval, so batches are large (every batch costs a
            # transaction and a state save); behind: go on at once.
            if control.poll(0 if writer.behind else poll):
                break  # told to stop, or the service is gone
        # Drain: every sink gets what the spool holds, a failing one one more attempt;
        # what it cannot take stays in the spool for the next start.
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and writer.step(force=True):
            pass
        writer.save()
    finally:
        writer.close()
