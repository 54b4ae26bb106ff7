"""The read side of a guarded connection: a read is parsed in slices, and the rest of a
read kept while reading is paused is parsed before the transport reads again (mixed into
`protocol.GuardedProtocol`; see `server` for the behaviour).

Time stays linear in the bytes read: the kept rest is a `memoryview` of the read (no
copy, however often reading pauses inside it), and the transport stays paused until that
rest is parsed, so a resumed transport never appends a new read to a kept rest (which
then had to be copied again at every pause: a 60 MiB body took seconds per megabyte
at the end).  Memory stays bounded: at most one read (256 KiB) kept per connection."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl

FEED_SLICE = 8 * 1024
"""Bytes fed to the parser at a time from a larger read: between slices the protocol
stops when reading is paused (answers unsent, requests queued, a body not taken by the
app), keeping the rest."""

MAX_PIPELINE = 8
"""Pipelined requests queued behind the one in progress beyond which reading stays
paused (one slice more may add a few hundred small ones)."""


class BoundedFlow(FlowControl):
    """uvicorn's flow control, but reading is not resumed while the connection's answers
    are over the high-water mark or `MAX_PIPELINE` requests are queued; when it resumes,
    the bytes kept unparsed from an earlier read are parsed first, and the transport
    reads again only once they are all parsed (`kept_parsed`).

    `read_paused` says whether the protocol may parse; the transport may stay paused
    while it is False (a kept rest still to parse)."""

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        super().__init__(transport)
        self._protocol = protocol
        self._transport_paused = False

    def pause_reading(self) -> None:
        self.read_paused = True
        if not self._transport_paused:
            self._transport_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        protocol = self._protocol
        if not self.read_paused or self.write_paused or len(protocol.pipeline) >= MAX_PIPELINE:
            return
        self.read_paused = False
        if protocol._unparsed:
            protocol._schedule_feed()
        else:
            self.kept_parsed()

    def kept_parsed(self) -> None:
        """Nothing kept is left to parse: the transport may read again (unless paused)."""
        if self._transport_paused and not self.read_paused:
            self._transport_paused = False
            self._transport.resume_reading()


class SlicedReads:
    """`data_received` by slices and the rest of a read kept while reading is paused
    (see the module); the protocol provides `_feed` and `_after_read`."""

    transport: Any
    loop: Any
    flow: Any
    _send_spooled_now: Any
    _end_after_eof: Any
    _feed: Any
    """Parse one slice; False when the request was refused (the connection closes)."""
    _after_read: Any
    """What to do once a read is parsed as far as it goes."""
    _unparsed: bytes | memoryview = b""
    """Bytes read but not yet parsed (reading was paused between slices of a read)."""
    _feed_scheduled = False
    _feeding = False

    def data_received(self, data: bytes) -> None:
        """Parse a read, by slices: paused reading keeps the rest."""
        kept = self._unparsed
        if kept:
            data = kept if not data else b"".join((kept, data))  # type: ignore[assignment]
            self._unparsed = b""
        if len(data) <= FEED_SLICE:
            if not self._feed(data):
                return
        else:
            view = memoryview(data)
            for start in range(0, len(data), FEED_SLICE):
                self._send_spooled_now()  # the last slice's answers (reading may pause)
                if start and (self.flow.read_paused or self.transport.is_closing()):
                    self._unparsed = view[start:]
                    break
                if not self._feed(view[start:start + FEED_SLICE]):
                    return
        if not self._unparsed:
            self.flow.kept_parsed()
        self._after_read()

    def _schedule_feed(self) -> None:
        if not self._feed_scheduled:
            self._feed_scheduled = True
            self.loop.call_soon(self._feed_unparsed)

    def _feed_unparsed(self) -> None:
        self._feed_scheduled = False
        if self._unparsed and not self.flow.read_paused and not self.transport.is_closing():
            self._feeding = True
            try:
                self.data_received(b"")
            finally:
                self._feeding = False
            self._end_after_eof()
