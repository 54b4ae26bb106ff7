"""The write side of a guarded connection: the write timeout, and reading bounded by what
is still unanswered (mixed into `protocol.GuardedProtocol`; see `server` for the
behaviour).

asyncio's transport buffers without limit whatever is written to it and tells the
protocol only when that buffer crosses its high-water mark (`pause_writing`, 64 KiB with
uvicorn's defaults) and falls back under its low-water mark (`resume_writing`).  uvicorn
makes an ASGI request wait (`FlowControl.drain`) while writing is paused, but nothing ends
that wait: a client that never reads holds its connection, its buffered answers and the
waiting request for ever, and a closed connection with unsent data is never freed either
(`close` waits for the buffer to drain).  And httptools parses a whole read (up to
256 KiB) at once, so requests pipelined in it are queued or answered at once, however
much is already waiting to be written: `readflow.BoundedFlow` keeps reading paused
while answers are unsent."""

from __future__ import annotations

import asyncio
from typing import Any


class WriteLimits:
    """The write timeout and the half-close (see the module)."""

    guard: Any
    transport: Any
    loop: Any
    flow: Any
    cycle: Any
    pipeline: Any
    _deciding: list[Any]
    _between_requests: bool
    _write_timer: asyncio.TimerHandle | None = None
    _unparsed: Any  # `readflow.SlicedReads`
    _feeding: bool
    _eof = False
    """The client half-closed (sent FIN) with requests still to answer."""

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        self._watch_write()

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self._write_timer is not None and not self.transport.is_closing():
            self._write_timer.cancel()
            self._write_timer = None
        if self._between_requests:  # reading was paused for the answers
            self.flow.resume_reading()

    def _close(self) -> None:
        """Close after the data written so far, if the client takes it in time."""
        self.transport.close()
        self._watch_write()

    def _watch_write(self) -> None:
        """Start the write clock if data waits to be sent and no clock runs."""
        if self._write_timer is None and self.transport.get_write_buffer_size():
            self._write_timer = self.loop.call_later(self.guard.limits.write_timeout,
                                                     self._write_timed_out)

    def _write_timed_out(self) -> None:
        self._write_timer = None
        transport = self.transport
        if not transport.get_write_buffer_size() or not (
                self.flow.write_paused or transport.is_closing()):
            return  # the client took its answers meanwhile
        self.guard.cut(self, "write_timeout")
        self._disconnect_cycles()
        # abort, not close: close would wait for the buffer to drain.
        transport.abort()

    def _disconnect_cycles(self) -> None:
        """Every request of the connection still running (the one writing may be a
        pipelined one, not `cycle`, the last parsed) drops its answer: uvloop raises on a
        write to a closed transport."""
        for cycle in (*self._deciding, self.cycle, *(c for c, _app in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()

    def _forget_writes(self) -> None:
        """The connection is lost: no clock, nothing kept."""
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._unparsed = b""

    def eof_received(self) -> bool | None:
        """A half-close (FIN) after pipelined requests: answer those read (and kept
        unparsed) first, then close (`_end_after_eof`); uvicorn closed at once, so the
        requests queued behind the one in progress were never answered."""
        cycle = self.cycle
        if self._unparsed or self.pipeline or (
                cycle is not None and not cycle.response_complete and not cycle.more_body):
            self._eof = True
            return True  # keep our side open for the answers
        return None  # nothing more can come: the transport closes

    def _end_after_eof(self) -> None:
        """After a half-close, close once every complete request read is answered (a
        request whose body was cut by the FIN can never complete)."""
        if (not self._eof or self._feeding or self._unparsed or self.pipeline
                or self.transport.is_closing()):
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.more_body:
            self._close()
