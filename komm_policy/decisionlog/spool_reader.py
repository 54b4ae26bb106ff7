"""The writer's end of the spool: entries after a position, past corrupt stretches.

`SpoolReader.read` follows a sink's position through the segments; a stretch that holds
no intact frame is skipped (`spoolframe.scan` resynchronises), counted once and logged;
`collect` removes the segments every sink has taken.  `corruption_summary` turns the
counts the writer saved into what /metrics and /readyz show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spool import SUFFIX, Position, segment_name, segments
from .spoolframe import HEADER_SIZE, Frame, Gap, header_at, intact_run, scan

log = logging.getLogger(__name__)


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

TAKEN = ".taken"
"""Suffix of a tombstone: a segment every sink had taken, removed on a full disk before
the writer could save the positions past it (`collect(mark=True)`): emptied (its blocks
freed) but its name kept, so a writer restarted from the older positions knows the
records there were delivered, not lost.  Removed once positions past it are saved."""


def tombstones(directory: Path) -> list[int]:
    """The segments with a tombstone (`TAKEN`), in order."""
    suffix = SUFFIX + TAKEN
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return sorted(int(e.name[:-len(suffix)]) for e in os.scandir(directory)
                      if e.name.endswith(suffix) and e.name[:-len(suffix)].isdigit())
    return []


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
        self._open: tuple[int, tuple[int, int]] | None = None
        """The segment kept open between reads: its fd and (device, inode)."""
        self.tombs = tombstones(self.directory)
        """Segments removed with a tombstone (`TAKEN`) not yet cleared (`clear_tombs`)."""
        self._removed: dict[int, None] = dict.fromkeys(self.tombs)
        """Segments this reader's `collect` deleted (recent ones) or that have a
        tombstone: a position left in one of them lost nothing; any other missing
        segment was removed by hand."""

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
        """The bytes from `offset` that the file holds (at most a read window, widened
        to hold a whole frame that starts there and a window after it), and the file's
        size before they were read; None when the file does not exist.  The segment
        stays open between calls while `path` names the same file (device, inode): a
        segment removed or replaced by hand is seen at the next call."""
        try:
            current = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self.close()
            return None
        identity = (current.st_dev, current.st_ino)
        if self._open is None or self._open[1] != identity:
            self.close()
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                return None
            opened = os.fstat(fd)
            self._open = (fd, (opened.st_dev, opened.st_ino))
        fd = self._open[0]
        size = os.fstat(fd).st_size
        if size <= offset:
            return b"", size
        data = os.pread(fd, min(size - offset, self.read_bytes), offset)
        header = header_at(data, 0)
        if header is not None and len(data) < HEADER_SIZE + header.length:
            data += os.pread(fd, HEADER_SIZE + header.length + self.read_bytes - len(data),
                             offset + len(data))
        return data, size

    def close(self) -> None:
        """Close the segment kept open (the next read opens it again)."""
        if self._open is not None:
            fd, self._open = self._open[0], None
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()

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
            if window is None and not self.directory.is_dir():
                return entries, position
            data, size = window or (b"", offset)
            # The usual case first: intact frames numbered on from `seq`.
            run, consumed = intact_run(data, seq, limit - len(entries))
            entries += run
            seq += len(run)
            for item in scan(data, consumed) if len(entries) < limit else ():
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
            present = segments(self.directory)
            later = [s for s in present if s > segment]
            if not later:
                return entries, position
            if window is None and segment in self._removed:
                # Removed after every sink had taken it (`collect`): nothing to count.
                position = Position(later[0], 0, max(later[0], seq))
                continue
            self._skipped(segment, offset, len(data), later[0] - seq,
                          "an incomplete or corrupt end" if data
                          else "a segment removed before it was read")
            position = Position(later[0], 0, max(later[0], seq))
        return entries, position

    def collect(self, positions: list[Position | None], *, keep: float = 0.0,
                now: float | None = None, mark: bool = False) -> int:
        """Delete segments every sink has read past (all of them, or those last
        modified more than `keep` seconds ago); returns how many were deleted.  With
        `mark` (`positions` are not saved yet) each leaves a tombstone (`TAKEN`)."""
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
                if not mark or not self._bury(path, first):
                    path.unlink()
                deleted += 1
                self._removed[first] = None
                if len(self._removed) > 4 * KEEP_EVENTS:
                    del self._removed[next(iter(self._removed))]
        return deleted

    def _bury(self, path: Path, first: int) -> bool:
        """Empty the segment under its tombstone's name (a rename and a truncate need
        no free block); False when even that failed (then it goes without a trace)."""
        tomb = path.with_name(path.name + TAKEN)
        try:
            os.rename(path, tomb)
        except OSError:
            return False
        with contextlib.suppress(OSError):
            os.truncate(tomb, 0)
        self.tombs.append(first)
        return True

    def clear_tombs(self, positions: list[Position | None]) -> None:
        """Remove the tombstones below every saved position (`positions`, just saved):
        no sink will read there again."""
        if not self.tombs or any(p is None for p in positions):
            return
        oldest = min(p.segment for p in positions if p is not None)
        kept = []
        for first in self.tombs:
            if first >= oldest:
                kept.append(first)
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.directory / (segment_name(first) + TAKEN)).unlink()
        self.tombs = kept

    def trusted(self, position: Position) -> str | None:
        """Why a saved position cannot be trusted, or None.  A position names a segment,
        an offset in it and the seq of the frame there; it is not trusted when that
        segment is shorter than the offset, when the frame at the offset has another
        seq (the spool was numbered afresh: its segments removed by hand), when the seq
        is below the segment's first, or when the segment is missing and no segment
        after it exists while earlier ones do.  (Redelivery from an earlier position is
        a no-op: sinks keep record ids.)"""
        segment, offset, seq = position.segment, position.offset, position.seq
        if seq < segment or offset < 0:
            return f"seq {seq} before its segment {segment_name(segment)}"
        path = self.directory / segment_name(segment)
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                file.seek(offset)
                head = file.read(HEADER_SIZE)
        except (FileNotFoundError, NotADirectoryError):
            present = segments(self.directory)
            if present and present[-1] < segment:
                return (f"its segment {segment_name(segment)} is missing and the spool "
                        f"ends before it ({segment_name(present[-1])})")
            return None
        if size < offset:
            return f"{segment_name(segment)} holds {size} bytes, fewer than offset {offset}"
        header = header_at(head, 0)
        if header is not None and header.seq != seq:
            return (f"the frame at offset {offset} of {segment_name(segment)} is seq "
                    f"{header.seq}, not {seq}")
        return None


CORRUPTION_NOTICE = 600.0
"""Seconds /readyz says "degraded" after the writer met a corrupt stretch."""


def corruption_summary(saved: object, now: float, recent: float = CORRUPTION_NOTICE
                       ) -> tuple[int, int, str | None]:
    """(skipped bytes, lost records, a sentence on the last loss if it is less than
    `recent` seconds old) from the counts a writer saved (`SpoolReader.corruption`)."""
    if not isinstance(saved, dict):
        return 0, 0, None
    try:
        skipped, lost = int(saved.get("bytes", 0)), int(saved.get("records", 0))
        events = saved.get("events") or []
        last = events[-1] if isinstance(events, list) and events else None
        if not isinstance(last, dict) or now - float(last["at"]) >= recent:
            return skipped, lost, None
        return skipped, lost, (
            f"decision log spool: {int(last['records'])} records lost to a corrupt stretch "
            f"of {int(last['bytes'])} bytes in {segment_name(int(last['segment']))} at "
            f"offset {int(last['offset'])} ({now - float(last['at']):.0f}s ago; {lost} in all)")
    except (KeyError, TypeError, ValueError):
        return 0, 0, None
