"""The spool's frame format, and reading frames back with resynchronisation.

A frame is a 24-byte header and the payload (one decision entry):

    magic      4 bytes  C1 C1 4B 53 ("\\xc1\\xc1KS")
    length     4 bytes  big-endian, the payload's length (at most MAX_ENTRY)
    seq        8 bytes  big-endian, the entry's sequence number
    crc        4 bytes  CRC-32 of the payload
    check      4 bytes  CRC-32 of the 20 bytes above

Why each part: the header's own CRC (`check`) makes its length trustworthy before the
payload is read, so a corrupt length field can never make a reader wait for bytes that
will not come; the magic lets a reader that met a corrupt frame find the next frame by
searching for it (`bytes.find`, linear) and taking only a candidate whose header and
payload both check (false candidates cost one 20-byte CRC each); the sequence number says
exactly how many entries a corrupt stretch held (the next good frame's seq minus the one
expected).  0xC1 occurs in neither UTF-8 text nor a msgpack type byte, so the text a
client sends cannot contain a magic (it could only be mimicked by binary fields, which
entries do not have).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

MAGIC = b"\xc1\xc1KS"
_HEAD = struct.Struct(">4sIQI")
_CHECK = struct.Struct(">I")
_FULL = struct.Struct(">4sIQII")
"""The whole header, check included (`scan`'s fast path)."""
HEADER_SIZE = _HEAD.size + _CHECK.size  # 24
MAX_ENTRY = 16 * 1024 * 1024
"""The largest payload; a header saying more is corrupt."""


def frame(payload: bytes, seq: int) -> bytes:
    """The frame of one entry with sequence number `seq`."""
    head = _HEAD.pack(MAGIC, len(payload), seq, zlib.crc32(payload))
    return b"".join((head, _CHECK.pack(zlib.crc32(head)), payload))  # one copy, not two


def frames(payloads: list[bytes], first_seq: int) -> bytes:
    """The frames of consecutive entries, numbered from `first_seq`, joined."""
    pack = _HEAD.pack
    check = _CHECK.pack
    crc32 = zlib.crc32
    parts = []
    for seq, payload in enumerate(payloads, first_seq):
        head = pack(MAGIC, len(payload), seq, crc32(payload))
        parts += (head, check(crc32(head)), payload)
    return b"".join(parts)


class Header(NamedTuple):
    length: int
    seq: int
    crc: int


def header_at(data: bytes, offset: int) -> Header | None:
    """The header at `offset` if it is complete, starts with the magic and its own CRC
    checks; else None."""
    if offset + HEADER_SIZE > len(data) or data[offset:offset + 4] != MAGIC:
        return None
    head = data[offset:offset + _HEAD.size]
    if zlib.crc32(head) != _CHECK.unpack_from(data, offset + _HEAD.size)[0]:
        return None
    _magic, length, seq, crc = _HEAD.unpack(head)
    if length > MAX_ENTRY:
        return None
    return Header(length, seq, crc)


class Frame(NamedTuple):
    """An intact frame: its byte range in the data scanned, its seq and payload."""

    start: int
    end: int
    seq: int
    payload: bytes


class Gap(NamedTuple):
    """Bytes [start, end) that are no intact frame, followed by a frame whose header
    checks (its seq is `next_seq`)."""

    start: int
    end: int
    next_seq: int


def _at(data: bytes, offset: int) -> tuple[Header | None, bool]:
    """(header, intact) of a frame at `offset`: (None, False) no valid header there;
    (header, False) a valid header whose payload is incomplete or does not check."""
    header = header_at(data, offset)
    if header is None:
        return None, False
    start = offset + HEADER_SIZE
    end = start + header.length
    if end > len(data):
        return header, False
    return header, zlib.crc32(data[start:end]) == header.crc


def scan(data: bytes, start: int = 0) -> Iterator[Frame | Gap]:
    """Frames and gaps from `start`, in order, until the end of `data` or an unresolved
    rest: a frame whose header checks but whose payload is not all there yet (being
    written, or cut short), or bytes that are no frame and are not followed by a frame
    whose header checks within `data`.  The rest begins at the last item's end (or at
    `start`); what it is depends on whether more bytes can come (the caller knows).

    Time is linear in `len(data)`: after a bad frame the next candidate is found with
    `bytes.find` and each candidate costs one header CRC (its payload's CRC only when the
    header checks, which for a random stretch happens with probability 2**-32)."""
    size = len(data)
    position = start
    unpack = _FULL.unpack_from
    crc32 = zlib.crc32
    view = memoryview(data)
    while position + HEADER_SIZE <= size:
        # An intact frame, the usual case, is checked inline: the same checks as
        # `header_at` and `_at`, without their calls and copies (the writer reads every
        # frame through here).  Anything else takes the general path below.
        magic, length, seq, crc, check = unpack(data, position)
        end = position + HEADER_SIZE + length
        if (magic == MAGIC and end <= size and length <= MAX_ENTRY
                and crc32(view[position:position + _HEAD.size]) == check):
            payload = data[position + HEADER_SIZE:end]
            if crc32(payload) == crc:
                yield Frame(position, end, seq, payload)
                position = end
                continue
        header, intact = _at(data, position)
        if intact:
            assert header is not None
            end = position + HEADER_SIZE + header.length
            yield Frame(position, end, header.seq, data[position + HEADER_SIZE:end])
            position = end
            continue
        if header is not None and position + HEADER_SIZE + header.length > size:
            return  # a frame not complete yet
        # A bad frame: resynchronise at the next header that checks.
        candidate = position
        while True:
            candidate = data.find(MAGIC, candidate + 1)
            if candidate < 0 or candidate + HEADER_SIZE > size:
                return
            found, good = _at(data, candidate)
            if found is not None and (good or candidate + HEADER_SIZE + found.length > size):
                yield Gap(position, candidate, found.seq)
                position = candidate
                break


def intact_run(data: bytes, seq: int, limit: int) -> tuple[list[tuple[int, bytes]], int]:
    """The leading intact frames of `data` numbered `seq`, `seq + 1`, … (at most `limit`)
    as (seq, payload), and the offset after them.  It stops at anything else (a frame
    numbered otherwise, not complete, or not checking), which `scan` then reads: the
    same checks as `scan`'s, without an object per frame (the writer reads every entry
    through here)."""
    entries: list[tuple[int, bytes]] = []
    size = len(data)
    position = 0
    unpack = _FULL.unpack_from
    crc32 = zlib.crc32
    view = memoryview(data)
    while len(entries) < limit and position + HEADER_SIZE <= size:
        magic, length, found, crc, check = unpack(data, position)
        end = position + HEADER_SIZE + length
        if (found != seq or magic != MAGIC or end > size or length > MAX_ENTRY
                or crc32(view[position:position + _HEAD.size]) != check):
            break
        payload = data[position + HEADER_SIZE:end]
        if crc32(payload) != crc:
            break
        entries.append((seq, payload))
        seq += 1
        position = end
    return entries, position


def last_seq(data: bytes) -> int | None:
    """The highest seq in a segment's bytes whose header checks (intact or not: a frame
    whose header survived took its number), or None."""
    highest = None
    position = 0
    for item in scan(data):
        if isinstance(item, Frame):
            highest = item.seq if highest is None else max(highest, item.seq)
        position = item.end
    # A frame left incomplete or with a bad payload at the end still took its number.
    header = header_at(data, position)
    if header is not None:
        highest = header.seq if highest is None else max(highest, header.seq)
    return highest
