"""Where records go: the sink interface and the JSON-lines sink.

A sink takes batches of records read from the spool, in spool order.  The writer keeps
each sink's position in the spool and moves it only after `write` returned, so after a
crash a sink may be given again what it took since the positions were last saved (at
most `writer.SAVE_RECORDS` records and a batch): every sink must store a record id once
(the JSONL sink remembers the ids at the end of its file, `mta_log` has a unique index,
a SpacetimeDB reducer sink would key its table by id).  `write` raises to have the same
batch retried later (with backoff); it never drops records.  `SinkBlocked` says the
failure needs an operator (and turns /readyz 503).  A sink may have `counters()` (a dict
of names to numbers, e.g. dead letters) that the writer publishes with its status.

A `SinkSpec` is the picklable description of a sink (it crosses into the writer
process); `open()` builds the sink there and may raise, which is retried like a write.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, NamedTuple, Protocol

import msgspec


class SpooledRecord(NamedTuple):
    """A record read from the spool: its spool sequence number, id, answer time
    (time.time(), and as the record's ISO 8601 `time`) and JSON line (no newline)."""

    seq: int
    id: str
    at: float
    time: str
    line: bytes


class Sink(Protocol):
    name: str
    """Stable: the key of the sink's position in the spool."""

    def write(self, records: Sequence[SpooledRecord]) -> None:
        """Store a batch; idempotent by record id; raise to have it retried."""

    def retain(self, now: float) -> None:
        """Apply the sink's retention (called about once a minute; `now` = time.time())."""

    def close(self) -> None: ...


class SinkBlocked(Exception):
    """Raised by `write` when the sink cannot take records until an operator fixes its
    configuration (a wrong reducer name or signature: SpacetimeDB's 400/404).  The batch
    stays in the spool and is retried with backoff like any failure; meanwhile /readyz
    is 503 with this message."""


class SinkSpec(Protocol):
    name: ClassVar[str]

    def open(self) -> Sink: ...


class _IdOnly(msgspec.Struct):
    id: str = ""


_ID_DECODER = msgspec.json.Decoder(_IdOnly)
TAIL_BYTES = 10 * 1024 * 1024
"""How much of the JSONL's end (the file's, and the newest rotated one's when the file
holds less) is read at open for the ids already written: more than a writer killed
between two saves of its positions delivers again (`writer.SAVE_BYTES`)."""


def _tail_ids(path: Path, tail: int = TAIL_BYTES) -> tuple[set[str], int]:
    """The ids in the last `tail` bytes of `path`, and how many bytes were read."""
    ids: set[str] = set()
    if tail <= 0:
        return ids, 0
    size = 0
    with contextlib.suppress(FileNotFoundError), path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(0, size - tail))
        data = file.read()
        lines = data.split(b"\n")
        if size > tail:
            lines = lines[1:]  # the first line is cut
        for line in lines:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                if line:
                    ids.add(_ID_DECODER.decode(line).id)
    return ids, min(size, tail)


class JsonlSink:
    """One JSON object per line, rotated by size: `decisions.jsonl` → `.1` → `.2` …;
    rotated files older than `max_age` seconds (0: no limit) are removed.  A file that
    was moved away or deleted (by an operator, logrotate) is noticed at the next batch
    and a new one is started.  (Not a `logging` handler: the server's logging setup
    closes every handler it finds.)"""

    name = "jsonl"

    def __init__(self, path: str | Path, *, max_bytes: int = 100 * 1024 * 1024,
                 backups: int = 10, max_age: float = 0.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.backups = backups
        self.max_age = max_age
        self._recent = self.held_ids()
        self._open()

    def held_ids(self) -> set[str]:
        """The ids in the last `TAIL_BYTES` of the file, and the rest of that window from
        the newest rotated file (a rotation may fall within what is delivered again).
        Also what the writer resumes after when the positions were lost (`recovery`)."""
        held, read = _tail_ids(self.path)
        return held | _tail_ids(self.path.with_name(f"{self.path.name}.1"),
                                TAIL_BYTES - read)[0]

    def _open(self) -> None:
        self._file = self.path.open("ab")
        size = self._file.tell()
        if size:  # a line cut short by a crash is completed by nothing: drop it
            with self.path.open("rb") as file:
                file.seek(max(0, size - 65536))
                tail = file.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                keep = size - len(tail) + cut + 1 if cut >= 0 else (
                    size - len(tail) if size > len(tail) else 0)
                self._file.truncate(keep)
        self._identity = os.fstat(self._file.fileno())

    def _check_identity(self) -> None:
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if current is None or (current.st_dev, current.st_ino) != (
                self._identity.st_dev, self._identity.st_ino):
            self._file.close()
            self._open()

    def write(self, records: Sequence[SpooledRecord]) -> None:
        recent = self._recent
        if recent:
            records = [r for r in records if r.id not in recent]
            if not records:
                return
        self._check_identity()
        data = b"".join([r.line + b"\n" for r in records])
        size = self._file.tell()
        if size and size + len(data) > self.max_bytes:
            self._rotate()
            size = 0
        try:
            self._file.write(data)
            self._file.flush()
        except OSError:
            # The batch is retried whole: take back what part of it reached the file.
            with contextlib.suppress(OSError, ValueError):
                self._file.truncate(size)
            raise
        # The writer never gives a record before this batch again (until it restarts,
        # and then a new sink reads the ids anew).
        self._recent = set()

    def _rotate(self) -> None:
        self._file.close()
        for number in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{number}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self._file = self.path.open("ab")
        else:
            self._file = self.path.open("wb")
        self._identity = os.fstat(self._file.fileno())
        self._recent = set()  # what is in the rotated file is never given again

    def retain(self, now: float) -> None:
        if self.max_age <= 0:
            return
        for number in range(1, self.backups + 1):
            rotated = self.path.with_name(f"{self.path.name}.{number}")
            with contextlib.suppress(FileNotFoundError):
                if now - rotated.stat().st_mtime > self.max_age:
                    rotated.unlink()

    def close(self) -> None:
        self._file.close()


class JsonlSpec(msgspec.Struct, frozen=True):
    """Where and how to write the JSONL file (picklable: it crosses to the writer)."""

    name: ClassVar[str] = "jsonl"
    path: str
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 10
    max_age: float = 0.0

    def open(self) -> Sink:
        return JsonlSink(self.path, max_bytes=self.max_bytes, backups=self.backups,
                         max_age=self.max_age)
