"""The spool: an append-only local journal of raw decision entries, in segments.

The service appends each entry before it answers (`SpoolAppender.append`, one `write`
to a file opened O_APPEND); a writer process reads the segments (`SpoolReader`) and
feeds the sinks, each from its own position.  Because the entry is in the kernel's page
cache before the answer leaves, killing either process loses nothing; what a power loss
can take is bounded by the fsync policy (`fsync_interval`, see the README).

Layout of a spool directory:

- `NNNNNNNNNNNNNNNNNNNN.seg` — a segment; its name is the sequence number of its first
  entry.  A service opens a new segment when it starts and after `segment_bytes`; it
  never appends to a segment it did not open.
- a frame per entry (`spoolframe`: magic, length, seq, payload CRC, header CRC, the
  payload).  A bad stretch in the middle of a segment (a flipped byte, a bad sector) is
  skipped up to the next intact frame; its bytes and the entries it held (by seq) are
  counted (`SpoolReader.corruption`) and logged.  A frame not complete at the end of the
  segment being written is waited for; once a later frame or segment exists it is a gap
  like any other.
- `lock` — flock'ed by the service that appends, so two services cannot share a spool.
- `state.json` — written by the writer: each sink's position and the writer's status.

Positions are `(segment, offset, seq)`; a sink's backlog is the spool's next sequence
number minus the sink's `seq`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spoolframe import HEADER_SIZE, MAX_ENTRY, Frame, Gap, frame, frames, header_at, last_seq, scan

log = logging.getLogger(__name__)

SUFFIX = ".seg"


class SpoolError(OSError):
    """The spool cannot be used (locked by another process, not writable)."""


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def segments(directory: Path) -> list[int]:
    """First sequence numbers of the segments present, in order."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            name = entry.name
            if name.endswith(SUFFIX) and name[:-len(SUFFIX)].isdigit():
                found.append(int(name[:-len(SUFFIX)]))
    return sorted(found)


def next_seq_after(path: Path, first: int) -> int:
    """The seq after the last entry a segment holds (whose header checks), or `first`."""
    try:
        found = last_seq(path.read_bytes())
    except FileNotFoundError:
        return first
    return first if found is None else max(first, found + 1)


class SpoolAppender:
    """The service's end: append entries, fsync in the background.

    `append` and `append_batch` are called on the event loop thread; each is one `write`
    syscall (no lock, no fsync).  A failed write is taken back (truncate), and the next
    append starts a new segment, so a reader never sees a frame cut short followed by
    more frames."""

    def __init__(self, directory: str | Path, *, fsync_interval: float = 0.2,
                 segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.fsync_interval = fsync_interval
        self.segment_bytes = segment_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {self.directory} is in use by another komm-policy "
                             "process; give each service its own (serve --log-spool DIR, "
                             "log.spool, KOMM_LOG_SPOOL)") from None
        existing = segments(self.directory)
        self.next_seq = next_seq_after(self.directory / segment_name(existing[-1]),
                                       existing[-1]) if existing else 0
        self._fd = -1
        self._size = 0
        self._roll_lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync_interval > 0:
            self._syncer = threading.Thread(target=self._sync_loop, name="komm-spool-fsync",
                                            daemon=True)
            self._syncer.start()

    def append(self, payload: bytes) -> int:
        """Write one entry; returns its sequence number.  Raises OSError (ENOSPC, EROFS,
        EIO …) with nothing of the entry left in the spool, ValueError for an entry over
        MAX_ENTRY bytes (the reader would take its length field for corruption)."""
        if len(payload) > MAX_ENTRY:
            raise ValueError(f"a spool entry of {len(payload)} bytes is over the "
                             f"{MAX_ENTRY}-byte limit")
        return self._write(frame(payload, self.next_seq), 1)

    def append_batch(self, payloads: list[bytes]) -> int:
        """Write several entries with one `write`; returns the last one's sequence number
        (-1 for none).  All or nothing: raises like `append`, with none of them left in
        the spool."""
        for payload in payloads:
            if len(payload) > MAX_ENTRY:
                raise ValueError(f"a spool entry of {len(payload)} bytes is over the "
                                 f"{MAX_ENTRY}-byte limit")
        if not payloads:
            return self.next_seq - 1
        return self._write(frames(payloads, self.next_seq), len(payloads))

    def _write(self, data: bytes, count: int) -> int:
        """Append `count` whole frames (`data`); the last one's sequence number."""
        if self._fd < 0 or self._size >= self.segment_bytes:
            self._roll()
        fd = self._fd
        try:
            written = os.write(fd, data)
            while written < len(data):  # a short write (disk filling up): finish or fail
                written += os.write(fd, data[written:])
        except OSError:
            self._take_back()
            raise
        self._size += len(data)
        self._dirty = True
        self.next_seq += count
        return self.next_seq - 1

    def _take_back(self) -> None:
        with self._roll_lock:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            self._close_segment()  # the next append starts a new segment

    def _roll(self) -> None:
        with self._roll_lock:
            self._close_segment()
            path = self.directory / segment_name(self.next_seq)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            # A segment left by an earlier failed open of the same number is reused from
            # its intact frames only (there are none: it was opened at this seq).
            os.ftruncate(fd, 0)
            self._fd = fd
            self._size = 0
            with contextlib.suppress(OSError):
                _fsync_directory(self.directory)

    def _close_segment(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                if self.fsync_interval > 0 and self._dirty:
                    os.fsync(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            self._dirty = False

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            self.sync()

    def sync(self) -> None:
        """fsync the current segment if anything was appended since the last one."""
        if not self._dirty:
            return
        with self._roll_lock:
            if self._fd >= 0:
                self._dirty = False
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    self._dirty = True
                    log.error("decision log spool: fsync failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(5)
        with self._roll_lock:
            self._close_segment()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Position:
    segment: int
    offset: int
    seq: int

    def as_json(self) -> list[int]:
        return [self.segment, self.offset, self.seq]


@dataclass(frozen=True)
class Corruption:
    """A stretch of a segment that held no intact frame, skipped by the reader."""

    segment: int
    """The segment's name (its first seq)."""
    offset: int
    skipped_bytes: int
    lost_records: int
    """Entries the stretch held (by seq): records that reach no sink."""
    at: float
    """When the reader met it (time.time())."""

    def as_json(self) -> dict[str, Any]:
        return {"segment": self.segment, "offset": self.offset, "bytes": self.skipped_bytes,
                "records": self.lost_records, "at": self.at}


KEEP_EVENTS = 20
"""Recent corruptions kept in the writer's state (the totals are kept whole)."""


class SpoolReader:
    """The writer's end: entries after a position, in order.

    A stretch that is no intact frame is skipped: the reader goes on at the next frame
    whose header and payload check (`spoolframe.scan`).  Each stretch is counted once
    (also when sinks at different positions meet it, and across writer restarts through
    `known`, the state the writer saved): `skipped_bytes`, `lost_records` (the entries it
    held, from the sequence numbers around it) and `events`, the recent ones."""

    def __init__(self, directory: str | Path, *, read_bytes: int = 1024 * 1024,
                 known: dict[str, Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.read_bytes = read_bytes
        self._clock = clock
        known = known if isinstance(known, dict) else {}
        self.skipped_bytes = int(known.get("bytes", 0))
        self.lost_records = int(known.get("records", 0))
        self.events: deque[Corruption] = deque(maxlen=KEEP_EVENTS)
        for event in known.get("events", ()):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                self.events.append(Corruption(int(event["segment"]), int(event["offset"]),
                                              int(event["bytes"]), int(event["records"]),
                                              float(event["at"])))
        self._seen: dict[tuple[int, int], None] = {
            (e.segment, e.offset): None for e in self.events}

    def corruption(self) -> dict[str, Any]:
        """The counts as the writer saves them (and `known` takes them back)."""
        return {"bytes": self.skipped_bytes, "records": self.lost_records,
                "events": [e.as_json() for e in self.events]}

    def _skipped(self, segment: int, offset: int, skipped: int, lost: int,
                 why: str) -> None:
        if skipped <= 0 and lost <= 0:
            return
        key = (segment, offset)
        if key in self._seen:  # another sink (or an earlier writer) met it already
            return
        self._seen[key] = None
        if len(self._seen) > 4 * KEEP_EVENTS:
            del self._seen[next(iter(self._seen))]
        lost = max(lost, 0)
        self.skipped_bytes += skipped
        self.lost_records += lost
        self.events.append(Corruption(segment, offset, skipped, lost, self._clock()))
        if lost:
            log.error("decision log spool: %s in %s at offset %d: %d bytes unreadable, "
                      "%d records lost; delivery goes on after them", why,
                      segment_name(segment), offset, skipped, lost)
        else:
            log.warning("decision log spool: %s in %s at offset %d: %d bytes skipped, no "
                        "record lost", why, segment_name(segment), offset, skipped)

    def start(self) -> Position | None:
        """Where a sink with no position starts: the oldest segment present."""
        present = segments(self.directory)
        return Position(present[0], 0, present[0]) if present else None

    def _window(self, path: Path, offset: int) -> tuple[bytes, int] | None:
        """The bytes from `offset` (a read window, widened to hold a whole frame that
        starts there and a window after it), and the file's size before they were
        read; None when the file does not exist."""
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                file.seek(offset)
                data = file.read(self.read_bytes)
                header = header_at(data, 0)
                if header is not None and len(data) < HEADER_SIZE + header.length:
                    data += file.read(HEADER_SIZE + header.length + self.read_bytes
                                      - len(data))
                return data, size
        except FileNotFoundError:
            return None

    def read(self, position: Position | None, limit: int
             ) -> tuple[list[tuple[int, bytes]], Position | None]:
        """Up to `limit` (seq, payload) after `position`, and the position after them."""
        if position is None:
            position = self.start()
            if position is None:
                return [], None
        entries: list[tuple[int, bytes]] = []
        while len(entries) < limit:
            segment, offset, seq = position.segment, position.offset, position.seq
            window = self._window(self.directory / segment_name(segment), offset)
            if window is None and not self.directory.exists():
                return entries, position
            data, size = window or (b"", offset)
            consumed = 0
            for item in scan(data):
                if isinstance(item, Gap):
                    self._skipped(segment, offset + item.start, item.end - item.start,
                                  item.next_seq - seq, "a corrupt stretch")
                    seq = max(seq, item.next_seq)
                elif isinstance(item, Frame):
                    if item.seq > seq:  # entries missing without a trace in the bytes
                        self._skipped(segment, offset + item.start, 0, item.seq - seq,
                                      "entries missing")
                    entries.append((item.seq, item.payload))
                    seq = max(seq, item.seq + 1)
                consumed = item.end
                if len(entries) >= limit:
                    break
            if consumed:
                position = Position(segment, offset + consumed, seq)
                continue
            if size > offset + len(data):
                # The whole window was there before it was read and holds no frame
                # start: skip it (but a header's length short of its end) and go on.
                skip = max(1, len(data) - HEADER_SIZE + 1)
                self._skipped(segment, offset, skip, 0, "a corrupt stretch")
                position = Position(segment, offset + skip, seq)
                continue
            # Nothing more here.  A later segment means this one is finished: what
            # follows (a frame cut short, a corrupt end) can never complete.
            later = [s for s in segments(self.directory) if s > segment]
            if not later:
                return entries, position
            self._skipped(segment, offset, len(data), later[0] - seq,
                          "an incomplete or corrupt end" if window else "a missing segment")
            position = Position(later[0], 0, max(later[0], seq))
        return entries, position

    def collect(self, positions: list[Position | None], *, keep: float = 0.0,
                now: float | None = None) -> int:
        """Delete segments every sink has read past (all of them, or those last
        modified more than `keep` seconds ago); returns how many were deleted."""
        if not positions or any(p is None for p in positions):
            return 0
        oldest = min(p.segment for p in positions if p is not None)
        deleted = 0
        for first in segments(self.directory):
            if first >= oldest:
                break
            path = self.directory / segment_name(first)
            with contextlib.suppress(FileNotFoundError):
                if keep > 0 and now is not None and now - path.stat().st_mtime < keep:
                    continue
                path.unlink()
                deleted += 1
        return deleted


def write_state(directory: Path, state: dict) -> None:
    """`state.json`, replaced atomically."""
    temporary = directory / "state.json.tmp"
    temporary.write_text(json.dumps(state))
    os.replace(temporary, directory / "state.json")


def read_state(directory: Path) -> dict:
    try:
        return json.loads((directory / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def position_from(value: object) -> Position | None:
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return Position(*value)
    return None
