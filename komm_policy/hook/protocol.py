"""The HTTP protocol the server runs: uvicorn's httptools protocol with read timeouts,
the connection guard's limits and an inline path for hook requests (see `server` for the
behaviour, `GuardedProtocol` and `writeflow` for how it is done)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .header_limits import HeaderLimits
from .inline import INLINE_BODY_BYTES
from .linger import LingeringClose
from .readflow import BoundedFlow, SlicedReads
from .refusals import (
    _BUSY_MESSAGE,
    _INTERNAL_ERROR,
    _RETRY_AFTER,
    EarlyAnswerCycle,
    RequestLimits,
    _busy,
    _Refused,
)
from .spooling import SpoolingAnswers
from .writeflow import WriteLimits

if TYPE_CHECKING:
    from .server import ConnectionGuard

log = logging.getLogger("komm_policy.http")


class GuardedProtocol(LingeringClose, SpoolingAnswers, HeaderLimits, RequestLimits, SlicedReads,
                      WriteLimits, HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body/idle/write timeouts, the guard's
    limits, reads by slices (`readflow`) and an inline path for hook requests.

    Timeouts cost O(1) attribute writes per request: each connection has one deadline
    (`_deadline`, for the phase in `_phase`: "header", "body", "idle" or None) and at most
    one timer, armed at most `_tick` (the shortest timeout) ahead.  Every deadline set is
    at least `_tick` away, so it is never earlier than the armed timer: moving it needs no
    re-arming.  The timer, when it fires, acts on a passed deadline or re-arms itself (so
    a busy connection costs one timer event per `_tick` seconds, not three per request).

    Inline path: a `POST /mta-hook` whose body comes whole with its header is answered
    from the parser's callback by `respond_inline` (`app.HookApp`), no ASGI task, one
    `write` once the turn's decisions are spooled (`spooling`); anything else (a body
    later or over `INLINE_BODY_BYTES`, a request behind one in progress, `Expect:
    100-continue`) goes uvicorn's ASGI way, from where it stands."""

    def __init__(self, guard: ConnectionGuard, config: Any, server_state: Any,
                 app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.guard = guard
        self.limit_concurrency = None  # ours counts requests in progress, not connections
        limits = guard.limits
        self._timeouts = {"header": limits.header_timeout, "body": limits.body_timeout,
                          "idle": limits.idle_timeout}
        self._tick = max(0.01, min(self._timeouts.values()))
        self._phase: str | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._shutdown_timer: asyncio.TimerHandle | None = None
        self._awaiting_header = True
        self._received = False  # any byte of the request being read
        inline = getattr(self.app, "respond_inline", None)
        self._respond_inline = inline if getattr(self.app, "inline", False) else None
        self._inline_body: list[bytes] | None = None  # a hook request read inline
        self._inline_size = 0
        self._deciding: list[Any] = []  # this connection's cycles counted in guard.deciding
        self._refusal: tuple[int, str] | None = None  # why a callback stopped the parser

    @property
    def _between_requests(self) -> bool:
        """No request past its header: still reading a header, or idle."""
        return self._inline_body is None and (self.cycle is None
                                              or self.cycle.response_complete)

    @property
    def evictable(self) -> bool:
        """No request being decided or answered: reading a header or a body, or idle."""
        if self._deciding or self.pipeline or self._spooling:
            return False
        cycle = self.cycle
        return (cycle is None or cycle.response_complete
                or (cycle.more_body and not cycle.response_started))

    # Connection lifetime
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = BoundedFlow(transport, self)
        if self.guard.admit(self):
            self._expect("header")

    def connection_lost(self, exc: Exception | None) -> None:
        self._phase = None
        for timer in (self._timer, self._shutdown_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._shutdown_timer = None
        self._forget_writes()
        self._disconnect_cycles()
        self._release(everything=True)
        self.guard.forget(self)
        super().connection_lost(exc)

    def _after_read(self) -> None:  # (`readflow.SlicedReads.data_received`)
        if self._inline_body is not None and not self.transport.is_closing():
            self._to_asgi()  # the body did not arrive with its header

    def _feed(self, data: bytes | memoryview) -> bool:
        """Parse `data`; False when the request was refused (the connection closes)."""
        if self._phase in (None, "idle") and (self._awaiting_header or self._between_requests):
            # The first byte after an idle keep-alive period: the header clock starts.
            self._expect("header")
        self._received = True
        self._read_begins()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrade not supported")
            return False
        except httptools.HttpParserError as exc:
            self._refuse(*(self._refusal or (400, f"invalid HTTP request: {exc}")))
            return False
        if self._header_too_large(len(data)):  # one unfinished (`header_limits`)
            self._refuse(431, "request header exceeds "
                              f"{self.guard.limits.max_header_bytes} bytes")
            return False
        return True

    # Parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()  # (`HeaderLimits` starts counting the header)
        if self._phase != "header":
            self._expect("header")

    def on_headers_complete(self) -> None:
        self._header_complete()
        self._received = False
        if self.parser.should_upgrade():
            # httptools stops parsing at an upgrade (the body would never be read), and
            # this service speaks nothing but HTTP/1.1.
            self._refusal = (400, "protocol upgrade not supported")
            raise _Refused
        self._expect("body")
        if (self._respond_inline is not None and self.url == b"/mta-hook"
                and self.parser.get_method() == b"POST" and not self.expect_100_continue
                and (self.cycle is None or self.cycle.response_complete)
                and not self.transport.is_closing()
                and self.guard.deciding < self.guard.limits.max_concurrency):
            self._inline_body = []
            self._inline_size = 0
            return
        self._start_cycle()

    def _start_cycle(self) -> None:
        """uvicorn's request cycle (an ASGI task), or a fast 503 beyond max_concurrency."""
        self._send_spooled_now()  # answers waiting for the spool go before its answer
        if (self.guard.deciding >= self.guard.limits.max_concurrency
                and (self.cycle is None or self.cycle.response_complete)):
            # (a request pipelined behind one in progress waits its turn instead)
            self._count_shed()
            app, self.app = self.app, _busy
            try:
                super().on_headers_complete()
                self.cycle.shed = True  # answered by _busy: `_decide` leaves it alone
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.__class__ = EarlyAnswerCycle
            self.cycle.linger = self._close

    def _count_shed(self) -> None:
        self.guard.stats.shed += 1
        self.guard.warn.warning("shed", "answered 503: %d requests in progress "
                                "(max_concurrency)", self.guard.deciding)

    def _decide(self) -> bool:
        """An ASGI request's body is complete: it counts against max_concurrency from
        now until its answer is written (a body still arriving does not: it is bounded
        by the body timeout and evictable).  False (answered 503, connection closed) when
        max_concurrency requests are already being decided."""
        cycle = self.cycle
        if (cycle is None or not cycle.more_body or cycle.response_complete
                or cycle.disconnected or cycle.shed):
            return True
        if self.pipeline and self.pipeline[0][0] is cycle:
            return True  # queued behind the one in progress: counted when it starts
        guard = self.guard
        if guard.deciding >= guard.limits.max_concurrency and not cycle.response_started:
            self._count_shed()
            self._write_error(503, _BUSY_MESSAGE, _RETRY_AFTER)
            cycle.disconnected = True  # the app's receive() gets http.disconnect
            cycle.message_event.set()
            self._close()
            return False
        guard.deciding += 1
        self._deciding.append(cycle)
        return True

    def _release(self, everything: bool = False) -> None:
        """Uncount this connection's requests that were answered (or all of them)."""
        if not self._deciding:
            return
        kept = [] if everything else [c for c in self._deciding if not c.response_complete]
        self.guard.deciding -= len(self._deciding) - len(kept)
        self._deciding = kept

    def _to_asgi(self) -> None:
        """Hand an inline request read so far to an ASGI cycle (its body continues there)."""
        body = self._inline_body
        self._inline_body = None
        self._start_cycle()
        if body and self.cycle is not None:
            self.cycle.body += b"".join(body)
            self.cycle.message_event.set()

    def on_body(self, body: bytes) -> None:
        self._body_read(len(body))
        inline = self._inline_body
        if inline is None:
            super().on_body(body)
            return
        inline.append(body)
        self._inline_size += len(body)
        if self._inline_size > INLINE_BODY_BYTES:
            self._to_asgi()

    def on_message_complete(self) -> None:
        self._message_read()
        if self._phase == "body":
            self._phase = None
        body = self._inline_body
        if body is None:
            if self._decide():
                super().on_message_complete()
            return
        self._inline_body = None
        scope = self.scope
        scope["path"] = "/mta-hook"
        scope["raw_path"] = b"/mta-hook"
        scope["query_string"] = b""
        scope["method"] = "POST"
        try:
            answer = self._respond_inline(scope, b"".join(body))  # type: ignore[misc]
        except Exception:  # the app catches its own errors; this is the last defence
            log.exception("answering a hook request inline failed")
            answer = _INTERNAL_ERROR
        if answer is None:  # the app wants the ASGI way (e.g. a large body)
            self._inline_body = body
            self._to_asgi()
            if self._decide():
                super().on_message_complete()
            return
        if self._spooling or getattr(answer, "spooling", False):
            return self._send_after_spool(answer)  # after this turn's spool write
        self._write_answer(answer)

    def _write_answer(self, answer: Any, keep_alive: bool | None = None) -> None:
        """One write: status line, uvicorn's default headers (date, server), ours, body."""
        keep_alive = self._keep_alive() if keep_alive is None else keep_alive
        head = [STATUS_LINE[answer.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        for name, value in answer.headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
                    % (len(answer.body), b"" if keep_alive else b"connection: close\r\n"))
        head.append(answer.body)
        self.transport.write(b"".join(head))
        if not keep_alive:
            self._close()
        self.on_response_complete()

    def on_response_complete(self) -> None:
        """A response went out: count it, start the next pipelined request or the idle
        clock (uvicorn's keep-alive timer is not used: the deadline covers it)."""
        self.server_state.total_requests += 1
        self._release()
        self.guard.touch(self)
        if self.transport.is_closing():
            self._watch_write()  # closed after this answer: it must leave in time
            return
        if self.cycle is not None and self.cycle.more_body and not self.pipeline:
            # Answered before its body was read (413, 401): the rest of the body cannot
            # be told from a next request, so this answer is the connection's last.
            self._close()
            return
        if self.flow.write_paused:
            # A client sending requests without reading the answers: read no more until
            # it has taken them (`resume_writing`), so the answers never pile up here.
            self.flow.pause_reading()
        else:
            self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            if not cycle.more_body:  # its body came while it was queued (`_decide`)
                self.guard.deciding += 1
                self._deciding.append(cycle)
            self._start_asgi_task(cycle, app)
        elif self._phase is None:
            self._expect("idle")
        self._end_after_eof()

    def _expect(self, phase: str) -> None:
        """Start `phase`'s clock (its timeout from now)."""
        now = self.loop.time()
        self._phase = phase
        self._deadline = now + self._timeouts[phase]
        if self._timer is None:
            self._timer = self.loop.call_at(min(self._deadline, now + self._tick),
                                            self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if now < self._deadline:
            self._timer = self.loop.call_at(min(self._deadline, now + self._tick),
                                            self._check_deadline)
            return
        self._phase = None
        if phase == "header":
            self._header_timed_out()
        elif phase == "body":
            self._body_timed_out()
        else:
            self._close()  # idle keep-alive connection

    def _header_timed_out(self) -> None:
        if self.flow.write_paused:  # unread because its answers are: write_timeout's
            return self._expect("header")
        if not self._between_requests:
            # A pipelined request is late while the one before it runs: close after it.
            self.cycle.keep_alive = False
            return
        self.guard.cut(self, "header_timeout")
        if self._received:
            self._write_error(408, "request header not received within "
                                   f"{self.guard.limits.header_timeout} s")
        self._close()

    def _body_timed_out(self, reason: str = "body_timeout") -> None:
        self._shutdown_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        self.guard.cut(self, reason)
        if not cycle.response_started:
            limits = self.guard.limits
            self._write_error(408, "request body not received within "
                                   f"{limits.body_timeout} s" if reason == "body_timeout"
                              else "shutting down: request body not received")
        # The app waiting in receive() gets http.disconnect; anything it sends is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        self._close()

    def shutdown(self) -> None:
        """Graceful shutdown: idle connections close now (uvicorn); a request still
        sending its body is cut just before `shutdown_timeout`, with a 408, so it ends
        cleanly instead of being cancelled inside the app."""
        super().shutdown()
        self._watch_write()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            if self._phase == "body":
                self._phase = None
            if self._shutdown_timer is not None:
                self._shutdown_timer.cancel()
            self._shutdown_timer = self.loop.call_later(
                max(0.0, self.guard.limits.shutdown_timeout - 0.2), self._body_timed_out,
                "shutdown")
