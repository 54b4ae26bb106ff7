"""What the guarded HTTP protocol (`protocol.GuardedProtocol`) answers itself: requests
refused at the parser (malformed, header limits — counted in `header_limits` —,
upgrades), the 503 beyond
max_concurrency, and the last-defence 500.  Errors are JSON `{"error": ...}` like the
app's."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from .linger import CloseLingering


class RequestLimits:
    """Parser-side refusals, mixed into `GuardedProtocol` (which has `guard`, `cycle`,
    `pipeline`, `flow`, `transport` and `_write_error`)."""

    guard: Any
    cycle: Any
    pipeline: Any
    flow: Any
    transport: Any
    _inline_body: Any
    _refusal: tuple[int, str] | None
    server_state: Any
    _close: Any

    def refuse(self) -> None:
        """No room for this connection: 503 and close."""
        self._write_error(503, "too many connections")
        self._close()

    def _write_error(self, status: int, message: str,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """A JSON error answer (`{"error": message}`, as the app's) marked
        `connection: close`; the caller closes the transport."""
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)

    def _refuse(self, status: int, message: str) -> None:
        """A request the parser cannot or must not take (malformed, header too large,
        upgrade): a JSON 4xx answer unless one for this request is under way, then
        close.  Counted in `komm_hook_bad_requests_total{status}` like the app's refusals."""
        self._inline_body = None
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete and (
            cycle.response_started or self.pipeline or not cycle.more_body)
        self.guard.bad_request(self, status, message)
        if answering:
            # A request before this one is being answered: that answer is the last.
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() gets http.disconnect
            cycle.message_event.set()
        self._write_error(status, message)
        self._close()

    def send_400_response(self, msg: str) -> None:  # uvicorn's, for any path not above
        self._refuse(400, msg)


class EarlyAnswerCycle(RequestResponseCycle):
    """uvicorn's request cycle, but an answer started before the request's body was read
    (401, 413, 404, …) says `connection: close`: the unread rest of the body cannot be
    told from a next request, so the protocol closes the connection after it (lingering,
    `linger`), and RFC
    9112 §9.6 wants a server that closes after a response to say so in it."""

    shed = False
    """Answered 503 at once (max_concurrency), counted when its header came."""
    linger: Any
    """The protocol's `_close`, which lingers while the body is unread (`linger`)."""

    async def send(self, message: Any) -> None:
        if self.more_body and not self.response_started:
            self.keep_alive = False  # uvicorn then adds `connection: close`
            self.transport = CloseLingering(self.transport, self.linger)  # and closes
        await super().send(message)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; `_refusal` says why."""


_BUSY_MESSAGE = "server busy: too many requests in progress; retry later"
_BUSY_BODY = json.dumps({"error": _BUSY_MESSAGE}).encode()
_RETRY_AFTER = ((b"retry-after", b"1"),)


@dataclass(frozen=True)
class _Internal:
    status: int = 500
    body: bytes = json.dumps({"error": "internal error"}).encode()
    headers: tuple[tuple[bytes, bytes], ...] = ()


_INTERNAL_ERROR = _Internal()


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """The answer beyond `max_concurrency`: 503 at once, the body left unread."""
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(_BUSY_BODY)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": _BUSY_BODY})
