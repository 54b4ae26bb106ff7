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
- a frame per entry: 4-byte big-endian payload length, 4-byte CRC-32 of the payload,
  the payload (a msgpack `raw_entry`).  A frame cut short (a crash while writing, a full
  disk) ends its segment: the reader skips it once a later segment exists.
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
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
MAX_ENTRY = 16 * 1024 * 1024
"""A longer length field means corruption (entries are a few hundred bytes)."""
SUFFIX = ".seg"


class SpoolError(OSError):
    """The spool cannot be used (locked by another process, not writable)."""


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


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


def parse_frames(data: bytes | memoryview, start: int = 0
                 ) -> Iterator[tuple[int, bytes | None]]:
    """(end offset, payload) for each complete frame from `start`; payload None for a
    frame whose CRC does not match.  Stops at the first incomplete frame."""
    view = memoryview(data)
    position = start
    size = len(view)
    while position + 8 <= size:
        length, crc = _HEADER.unpack_from(view, position)
        if length > MAX_ENTRY:
            return
        end = position + 8 + length
        if end > size:
            return
        payload = bytes(view[position + 8:end])
        yield end, (payload if zlib.crc32(payload) == crc else None)
        position = end


def count_frames(path: Path) -> int:
    """Complete, intact frames at the start of a segment (what a reader will deliver)."""
    count = 0
    with contextlib.suppress(FileNotFoundError):
        for _end, payload in parse_frames(path.read_bytes()):
            if payload is None:
                break
            count += 1
    return count


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
        self.next_seq = (existing[-1] + count_frames(self.directory / segment_name(
            existing[-1]))) if existing else 0
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
        return self._write(frame(payload), 1)

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
        pack = _HEADER.pack
        crc32 = zlib.crc32
        parts = []
        for payload in payloads:
            parts.append(pack(len(payload), crc32(payload)))
            parts.append(payload)
        return self._write(b"".join(parts), len(payloads))

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


class SpoolReader:
    """The writer's end: entries after a position, in order."""

    def __init__(self, directory: str | Path, *, read_bytes: int = 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.read_bytes = read_bytes
        self.corrupt = 0
        self.skipped_tails = 0

    def start(self) -> Position | None:
        """Where a sink with no position starts: the oldest segment present."""
        present = segments(self.directory)
        return Position(present[0], 0, present[0]) if present else None

    def read(self, position: Position | None, limit: int
             ) -> tuple[list[tuple[int, bytes]], Position | None]:
        """Up to `limit` (seq, payload) after `position`, and the position after them."""
        if position is None:
            position = self.start()
            if position is None:
                return [], None
        entries: list[tuple[int, bytes]] = []
        while len(entries) < limit:
            path = self.directory / segment_name(position.segment)
            try:
                with path.open("rb") as file:
                    file.seek(position.offset)
                    data = file.read(self.read_bytes)
                    if len(data) >= 8:
                        # A frame longer than the read window: read it whole (up to
                        # MAX_ENTRY), or the reader would wait at it for ever.
                        length = _HEADER.unpack_from(data)[0]
                        if len(data) < 8 + length <= 8 + MAX_ENTRY:
                            data += file.read(8 + length - len(data))
            except FileNotFoundError:
                data = b""
                if not path.parent.exists():
                    return entries, position
            end = 0
            seq = position.seq
            for end_offset, payload in parse_frames(data):
                if payload is None:
                    break  # corrupt or being written: decided below
                entries.append((seq, payload))
                seq += 1
                end = end_offset
                if len(entries) >= limit:
                    break
            if end:
                position = Position(position.segment, position.offset + end, seq)
                continue
            # Nothing more here.  A later segment means this one is finished: whatever
            # follows (a frame cut short, a bad CRC) can never complete.
            later = [s for s in segments(self.directory) if s > position.segment]
            if not later:
                return entries, position
            if data:
                self.skipped_tails += 1
                log.error("decision log spool: %d unreadable bytes at the end of %s "
                          "skipped", len(data), path.name)
            position = Position(later[0], 0, later[0])
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
