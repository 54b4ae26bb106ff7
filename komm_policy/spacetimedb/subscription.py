"""A `v1.json.spacetimedb` subscription that stays connected, on the `websockets` library.

One connection: open `ws(s)://HOST/v1/database/{db}/subscribe?session_id=…` with subprotocol
`v1.json.spacetimedb` and `Authorization: Bearer <token>`, read `IdentityToken`, send one
legacy `Subscribe` with the queries, wait for `InitialSubscription` (the atomic snapshot),
then pass every committed update on.  A failing `Subscribe` is answered by a
`TransactionUpdate` with status `Failed` (or by a `SubscriptionError`); both end the attempt.

Liveness: the server pings about every 15 s and drops silent clients after about 30 s
(`websockets` answers its pings).  We ping too, every `ping_interval` seconds; a message or
a pong is "alive" (`Handler.on_alive`, what staleness is measured from); no pong within
`ping_timeout` drops the connection.

Reconnects: after any failure — refused, handshake rejected (5xx, "session busy": the
server still holds our previous connection with the same `session_id`, PR #5877), dropped
socket, failed subscription — wait a jittered, doubling delay between `backoff_min` and
`backoff_max` (1–30 s by default; reset once a snapshot arrived), then connect again with the
same token and `session_id`, and resubscribe: the new `InitialSubscription` is a complete
snapshot that replaces the old one (`Handler.on_snapshot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import CloseCode

from .http import Endpoint
from .limits import MAX_MESSAGE_BYTES
from .protocol import TEXT_PROTOCOL, IdentityToken, Message, TableRows, parse_message, subscribe
from .sats import SatsError

log = logging.getLogger(__name__)

UNEXPECTED = "unexpected error: "
"""How a disconnect reason starts when the handler itself failed (a bug, counted apart)."""


class SubscriptionFailed(Exception):
    """The server refused the subscription (bad query, unknown or private table)."""


class Handler(Protocol):
    """What the subscription reports to (the replica).  Called on the subscription's
    event loop; a handler that raises ends the connection (and it is retried)."""

    def on_connect(self, identity: IdentityToken) -> None: ...

    def on_snapshot(self, tables: tuple[TableRows, ...]) -> Awaitable[None] | None:
        """The complete subscribed state (after every (re)connect).  An awaitable is
        awaited before the next message is read (work done off the loop)."""

    def on_update(self, tables: tuple[TableRows, ...]) -> Awaitable[None] | None:
        """One committed transaction's deletes and inserts (an awaitable: as above)."""

    def on_alive(self) -> None:
        """A message or a pong arrived."""

    def on_disconnect(self, reason: str, retry_in: float) -> None: ...


@dataclass(slots=True)
class Backoff:
    """Jittered doubling delays: the n-th is uniform in [max(low, d/2), d] for
    d = min(high, low·2ⁿ); `reset` after a success.  (Why not `websockets`' own
    reconnect loop: its delays are set by environment variables, process-wide, and
    cannot be bounded to 1–30 s per connection.)"""

    low: float = 1.0
    high: float = 30.0
    rng: random.Random | None = None
    attempt: int = 0

    def next(self) -> float:
        ceiling = min(self.high, self.low * 2 ** min(self.attempt, 30))
        self.attempt += 1
        rng = self.rng or random
        return rng.uniform(max(self.low, ceiling / 2), ceiling)

    def reset(self) -> None:
        self.attempt = 0


async def _settled(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result


class SubscriptionClient:
    """Keeps one subscription to `queries` alive until `stop()`.

    `before_connect` runs before each connection attempt (the replica re-reads the
    schema there); it may raise to fail the attempt.  `max_message_bytes`: a larger
    message closes the connection with 1009 and is counted in `oversized` (default
    `limits.MAX_MESSAGE_BYTES`).  `clock` is monotonic seconds."""

    def __init__(self, endpoint: Endpoint, queries: list[str], handler: Handler, *,
                 token: str | None = None, session_id: str | None = None,
                 backoff: Backoff | None = None, ping_interval: float = 10.0,
                 ping_timeout: float = 10.0, open_timeout: float = 10.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES,
                 before_connect: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.queries = list(queries)
        self.handler = handler
        self.token = token
        self.session_id = session_id or uuid.uuid4().hex
        self.backoff = backoff or Backoff()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.max_message_bytes = max_message_bytes
        self.before_connect = before_connect
        self.clock = clock
        self.connects = 0
        self.oversized = 0
        """Connections dropped for a message over `max_message_bytes` (1009)."""
        self.request_id = 0
        self._stopping = asyncio.Event()
        self._ws: websockets.asyncio.client.ClientConnection | None = None
        self._closing: asyncio.Future[None] | None = None
        self._restart = False

    @property
    def url(self) -> str:
        query = urlencode({"session_id": self.session_id})
        return f"{self.endpoint.ws_base}{self.endpoint.path('/subscribe')}?{query}"

    def stop(self) -> None:
        """End `run()` (from the subscription's own loop)."""
        self._stopping.set()
        if self._ws is not None:
            self._closing = asyncio.ensure_future(self._ws.close())

    def restart(self) -> None:
        """Reconnect now, without backoff (new queries, a schema to re-read); from the
        subscription's own loop.  Nothing is reported as a disconnect."""
        self._restart = True
        if self._ws is not None:
            self._closing = asyncio.ensure_future(self._ws.close(1000, "restart"))

    async def run(self) -> None:
        """Connect, subscribe, follow updates; reconnect after every failure."""
        while not self._stopping.is_set():
            try:
                await self.run_once()
                reason = "connection closed"
            except SubscriptionFailed as e:
                reason = f"subscription failed: {e}"
            except InvalidStatus as e:
                body = e.response.body.decode("utf-8", "replace").strip()
                reason = f"handshake refused: {e.response.status_code} {body}".strip()
            except ConnectionClosed as e:
                reason = f"{type(e).__name__}: {e}"
                if e.sent is not None and e.sent.code == CloseCode.MESSAGE_TOO_BIG:
                    self.oversized += 1
                    reason = (f"a message larger than max_message_bytes "
                              f"({self.max_message_bytes:,} bytes) was refused: {reason}")
            except (OSError, TimeoutError, InvalidHandshake) as e:
                reason = f"{type(e).__name__}: {e}"
            except SatsError as e:
                reason = f"malformed message: {e}"
            except Exception as e:  # the handler's own failure: retried all the same
                log.exception("SpacetimeDB subscription handler failed")
                reason = f"{UNEXPECTED}{type(e).__name__}: {e}"
            if self._stopping.is_set():
                break
            if self._restart:
                self._restart = False
                continue
            delay = self.backoff.next()
            self.handler.on_disconnect(reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def run_once(self) -> None:
        """One connection, until it closes; raises what ended it."""
        if self.before_connect is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.before_connect)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with connect(self.url, subprotocols=[TEXT_PROTOCOL],  # type: ignore[list-item]
                           additional_headers=headers, open_timeout=self.open_timeout,
                           ping_interval=None, max_size=self.max_message_bytes,
                           close_timeout=2, compression=None) as ws:
            self._ws = ws
            try:
                await self._session(ws)
            finally:
                self._ws = None

    async def _session(self, ws: websockets.asyncio.client.ClientConnection) -> None:
        self.connects += 1
        first = await self._receive(ws, self.open_timeout)
        if first.kind != "IdentityToken" or first.identity is None:
            raise SatsError(f"expected IdentityToken first, got {first.kind}")
        self.handler.on_connect(first.identity)
        self.request_id += 1
        request_id = self.request_id
        await ws.send(subscribe(self.queries, request_id).decode())
        snapshot_arrived = False
        pinger = asyncio.ensure_future(self._ping(ws))
        try:
            while True:
                message = await self._receive(ws, None)
                if message.kind == "InitialSubscription":
                    await _settled(self.handler.on_snapshot(message.tables))
                    snapshot_arrived = True
                    self.backoff.reset()
                elif message.kind in ("TransactionUpdate", "SubscriptionError") \
                        and message.error is not None:
                    if not snapshot_arrived or message.kind == "SubscriptionError":
                        raise SubscriptionFailed(message.error)
                    log.info("SpacetimeDB reported a failed transaction: %s", message.error)
                elif (message.kind in ("TransactionUpdate", "TransactionUpdateLight")
                      and snapshot_arrived):
                    await _settled(self.handler.on_update(message.tables))
                del message  # its rows, consumed by the handler, are not kept to the next
        finally:
            pinger.cancel()

    async def _receive(self, ws: websockets.asyncio.client.ClientConnection,
                       timeout: float | None) -> Message:
        frame = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(frame, bytes):
            raise SatsError("binary frame on the JSON protocol")
        message = parse_message(frame)
        self.handler.on_alive()
        return message

    async def _ping(self, ws: websockets.asyncio.client.ClientConnection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                waiter = await ws.ping()
                await asyncio.wait_for(waiter, self.ping_timeout)
            except TimeoutError:
                log.warning("SpacetimeDB did not answer a ping within %.1f s; reconnecting",
                            self.ping_timeout)
                await ws.close(1011, "ping timeout")
                return
            except ConnectionClosed:
                return
            self.handler.on_alive()
