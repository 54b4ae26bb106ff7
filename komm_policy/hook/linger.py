"""Lingering close: a connection answered before its request was read whole (413, 401,
the body budget's 503, a parser refusal) is not closed at once (mixed into
`protocol.GuardedProtocol`).

Closing a socket whose receive buffer holds unread bytes makes the kernel send a RST
instead of a FIN (RFC 1122 §4.2.2.13); a client still sending its body then usually
meets "connection reset" (or EPIPE) and loses the answer that was already in its own
receive buffer.  So after such an answer the connection half-closes (`write_eof`: a FIN
once the answer is sent), reads and discards what the client still sends, and closes
when the client half-closes too, or after `ServerLimits.linger_timeout` seconds or
`ServerLimits.linger_bytes` bytes, whichever comes first (then a client still sending
gets the reset it would have got at once); a `linger_timeout` of 0 closes at once.  Both
are the `[server]` options of the same names (`cli.serve.server_limits`; the bytes
default to `max_body_bytes`, at least 64 MiB).  Nothing is parsed or kept: a lingering
connection costs one timer and the reads, holds no request slot (`max_concurrency`) and
stays evictable at `max_connections`.  Connections cut by the guard (timeouts,
eviction, shutdown) close at once as before."""

from __future__ import annotations

import asyncio
from typing import Any


class LingeringClose:
    """`_close` lingers after an early answer (see the module); the protocol provides
    `guard`, `transport`, `loop`, `cycle`, `_phase`, `_inline_body`, `_received` and
    `_awaiting_header` (`header_limits`)."""

    guard: Any
    transport: Any
    loop: Any
    cycle: Any
    _phase: str | None
    _inline_body: Any
    _received: bool
    _awaiting_header: bool
    _unparsed: Any
    _linger_timer: asyncio.TimerHandle | None = None
    _linger_left = 0
    """Bytes the client may still send before the lingering connection closes."""

    def _close(self) -> None:
        """Close after the data written so far; lingering if the request is unread."""
        if self._linger_timer is not None:
            return
        limits = self.guard.limits
        if (self.transport.is_closing() or limits.linger_timeout <= 0
                or not self._request_unread()):
            super()._close()  # type: ignore[misc]
            return
        self._phase = None  # no read timeout acts on a lingering connection
        self._unparsed = b""
        self._linger_left = limits.linger_bytes
        self._linger_timer = self.loop.call_later(limits.linger_timeout, self._linger_end)
        self.transport.write_eof()  # the FIN follows the answer
        self.transport.resume_reading()  # the read side may be paused for the body
        self._watch_write()  # type: ignore[attr-defined]  # (`writeflow`)

    def _request_unread(self) -> bool:
        """A request begun whose bytes may still arrive (in its header or its body), on
        a connection the guard has not cut (a cut one is no longer in
        `guard.connections`); not an idle connection."""
        cycle = self.cycle
        return (self._inline_body is not None or (self._awaiting_header and self._received)
                or (cycle is not None and cycle.more_body)) and self in self.guard.connections

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is None:
            super().data_received(data)  # type: ignore[misc]
            return
        self._linger_left -= len(data)
        if self._linger_left < 0:
            self._linger_end()

    def eof_received(self) -> bool | None:
        if self._linger_timer is None:
            return super().eof_received()  # type: ignore[misc]
        self._linger_end()  # the client is done: nothing unread, a clean close
        return None

    def _linger_end(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self._linger_timer = None
        self.transport.close()

    def shutdown(self) -> None:
        """Graceful shutdown: a lingering connection ends within its bound, so it keeps
        it (uvicorn's close would reset a client still sending)."""
        if self._linger_timer is None:
            super().shutdown()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)  # type: ignore[misc]


class CloseLingering:
    """The transport as an early-answering request cycle (`refusals.EarlyAnswerCycle`)
    sees it: its `close` is the protocol's lingering `_close`, the rest is the
    transport's."""

    __slots__ = ("_transport", "close")

    def __init__(self, transport: asyncio.Transport, close: Any) -> None:
        self._transport = transport
        self.close = close

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
