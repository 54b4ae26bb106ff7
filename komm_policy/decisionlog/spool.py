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
- `state.json` — written by the writer: each sink's position and the writer's status
  (a corrupt one is set aside and the positions found again: `recovery`).

The reader is `spool_reader.SpoolReader`.  Positions are `(segment, offset, seq)`; a
sink's backlog is the spool's next sequence number minus the sink's `seq`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from .spoolframe import MAX_ENTRY, frame, frames, last_seq

log = logging.getLogger(__name__)

SUFFIX = ".seg"


class SpoolError(OSError):
    """The spool cannot be used (locked by another process, not writable)."""


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}{SUFFIX}"


def segments(directory: Path) -> list[int]:
    """First sequence numbers of the segments present, in order."""
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # removed
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


PROBE_BYTES = 8192
"""What a writability probe writes: two pages, room for a new segment and an entry."""


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
        self._lock_fd = self._take_lock()
        self._identity = _identity(os.stat(self.directory))
        existing = segments(self.directory)
        self.next_seq = next_seq_after(self.directory / segment_name(existing[-1]),
                                       existing[-1]) if existing else 0
        # Numbers never go backwards: with the segments gone (removed by hand), the
        # positions the writer saved still name the old ones, and a segment re-using
        # their numbers would have its first records taken for delivered ones.
        self.next_seq = max(self.next_seq, highest_saved_seq(self.directory))
        self._fd = -1
        self._size = 0
        self._segment_first = self.next_seq
        self._broken: str | None = None
        self._orphan = -1  # a removed live segment not written back yet (its fd)
        self._roll_lock = threading.Lock()
        self._write_lock = threading.Lock()  # appends vs `check`'s recovery (no syscall)
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
        if len(payloads) == 1:  # the usual batch (one answer per event-loop turn)
            return self.append(payloads[0])
        for payload in payloads:
            if len(payload) > MAX_ENTRY:
                raise ValueError(f"a spool entry of {len(payload)} bytes is over the "
                                 f"{MAX_ENTRY}-byte limit")
        if not payloads:
            return self.next_seq - 1
        return self._write(frames(payloads, self.next_seq), len(payloads))

    def _write(self, data: bytes, count: int) -> int:
        """Append `count` whole frames (`data`); the last one's sequence number."""
        with self._write_lock:
            fd = self._fd
            if fd < 0 or self._size >= self.segment_bytes:
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
            seq = self.next_seq = self.next_seq + count
            return seq - 1

    def _take_lock(self) -> int:
        """Open and flock the spool's `lock`; its fd.  Raises SpoolError when another
        process holds it, OSError when it cannot be opened."""
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f"spool {self.directory} is in use by another komm-policy "
                             "process; give each service its own (serve --log-spool DIR, "
                             "log.spool, KOMM_LOG_SPOOL)") from None
        return fd

    def check(self) -> str | None:
        """Notice a spool removed under the service (`rm -rf spool`, a tmp cleaner, `rm
        spool/*.seg`) and repair it: the directory is re-created, its `lock` taken
        again, and the live segment — unlinked but still open here — is written back
        under its name, byte for byte, so the writer's positions in it stay valid and
        nothing it held is lost (finished segments removed before the writer took them
        are gone: the writer counts them as lost).  Three `stat`s when all is well;
        called off the answer path (the log's supervisor tick, and at shutdown).

        Returns a sentence on what was repaired, or None.  Raises OSError (SpoolError)
        when the spool cannot be re-created or its lock is held by another process;
        appends fail (and the hook answers per on_spool_error) until a later call
        succeeds."""
        # Under the append lock: the segment's fd must not be closed and reused (a roll)
        # between its fstat and the repair.  Held for three stats, every 0.5 s.
        with self._write_lock:
            try:
                directory_ok = _identity(os.stat(self.directory)) == self._identity
                lock_ok = directory_ok and (_identity(os.stat(self.directory / "lock"))
                                            == _identity(os.fstat(self._lock_fd)))
            except (FileNotFoundError, NotADirectoryError):
                directory_ok = lock_ok = False
            segment_ok = self._fd < 0 or os.fstat(self._fd).st_nlink > 0
            if directory_ok and lock_ok and segment_ok and self._broken is None:
                return None
            try:
                return self._repair(directory_ok, lock_ok)
            except OSError as exc:
                self._broken = f"{type(exc).__name__}: {exc}"
                if self._fd >= 0:  # no append may go to a removed file meanwhile
                    self._orphan, self._fd = self._fd, -1
                raise

    @property
    def broken(self) -> str | None:
        """Why the spool, removed, could not be re-created (appends fail), or None."""
        return self._broken

    def _repair(self, directory_ok: bool, lock_ok: bool) -> str:
        done = []
        if not directory_ok:
            self.directory.mkdir(parents=True, exist_ok=True)
            done.append("the directory re-created")
        if not (directory_ok and lock_ok) or self._broken is not None:
            lock_fd = self._take_lock()
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = lock_fd
            self._identity = _identity(os.stat(self.directory))
            done.append("its lock taken again")
        live = self._fd if self._fd >= 0 else self._orphan
        if live >= 0 and os.fstat(live).st_nlink == 0:
            name = segment_name(self._segment_first)
            data = os.pread(live, self._size, 0)
            fd = os.open(self.directory / name,
                         os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError:
                os.close(fd)
                raise
            with self._roll_lock:
                with contextlib.suppress(OSError):
                    os.close(live)
                self._fd, self._orphan = fd, -1
                self._size = len(data)
            with contextlib.suppress(OSError):
                _fsync_directory(self.directory)
            done.append(f"the live segment {name} written back "
                        f"({self.next_seq - self._segment_first} records, {len(data)} bytes)")
        self._broken = None
        return ", ".join(done) or "usable again"

    def probe(self, size: int = PROBE_BYTES) -> None:
        """Check that the spool's file system takes `size` bytes now: a file `probe`
        is written and removed.  Raises OSError as `append` would (ENOSPC, EROFS …).
        Called off the answer path (the log's supervisor thread) while appends fail,
        so that readiness recovers without a request."""
        path = self.directory / "probe"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"\0" * size)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def _take_back(self) -> None:
        with self._roll_lock:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            self._close_segment()  # the next append starts a new segment

    def _roll(self) -> None:
        if self._broken is not None:
            raise SpoolError(f"spool {self.directory} removed and not re-created: "
                             f"{self._broken}")
        if not self.directory.is_dir():  # removed since the last `check`: repair it now
            log.error("decision log spool %s was removed: %s", self.directory,
                      self._repair(False, False))  # (not a failed answer)
        with self._roll_lock:
            self._close_segment()
            path = self.directory / segment_name(self.next_seq)
            # Read-write: `check` reads the segment back if it is unlinked while open.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            # A segment left by an earlier failed open of the same number is reused from
            # its intact frames only (there are none: it was opened at this seq).
            os.ftruncate(fd, 0)
            self._fd = fd
            self._size = 0
            self._segment_first = self.next_seq
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
        with contextlib.suppress(OSError):
            if self._orphan >= 0:
                os.close(self._orphan)
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join(5)
        with self._roll_lock:
            self._close_segment()
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def highest_saved_seq(directory: Path) -> int:
    """The highest seq in the positions `state.json` holds (0 for none)."""
    positions = read_state(directory).get("positions")
    if not isinstance(positions, dict):
        return 0
    found = [p.seq for p in map(position_from, positions.values()) if p is not None]
    return max(found, default=0)


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


def write_state(directory: Path, state: dict) -> None:
    """`state.json`, replaced atomically.  Raises OSError (ENOSPC: the new file needs a
    block), with no temporary file left behind."""
    temporary = directory / "state.json.tmp"
    try:
        temporary.write_text(json.dumps(state))
        os.replace(temporary, directory / "state.json")
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def read_state(directory: Path) -> dict:
    """`state.json` as a dict; {} when it is absent or unusable (`load_state` says why)."""
    return load_state(directory)[0]


def load_state(directory: Path) -> tuple[dict, str | None]:
    """`state.json` as a dict ({} when unusable), and why it is unusable (None: fine, or
    absent): unreadable, not UTF-8 JSON (the parse error, positioned), not an object."""
    try:
        text = (directory / "state.json").read_bytes()
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"cannot be read: {exc.strerror or exc}"
    try:
        state = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return {}, f"is not JSON: {exc}"
    if not isinstance(state, dict) or not isinstance(state.get("positions", {}), dict):
        return {}, "is not a JSON object with a `positions` object"
    return state, None


def position_from(value: object) -> Position | None:
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return Position(*value)
    return None
