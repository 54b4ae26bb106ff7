"""The HTTP server: uvicorn with httptools, plus the read timeouts and limits it lacks.

uvicorn's only connection timer is its keep-alive timer, armed after a response and
cancelled by any byte the client sends; nothing is armed while a request header or body
is being read.  A client that sends half a header, or less body than its Content-Length,
holds its connection (and a file descriptor) for ever, and about a thousand such clients
exhaust a 1,024-descriptor process so that real requests are never accepted.
`protocol.GuardedProtocol` extends uvicorn's `HttpToolsProtocol` (same parser, same ASGI
cycle); `ConnectionGuard` here is its factory and holds the process's connections:

* **header timeout**: a connection must deliver a complete request header within
  `header_timeout` seconds of connecting, or of the first byte of its next request;
  otherwise it gets `408` (if it sent anything) and is closed;
* **body timeout**: the body must be complete `body_timeout` seconds after its header,
  or the client gets `408` and the connection is closed (the request is never decided);
* **idle timeout**: a keep-alive connection with no request is closed after
  `idle_timeout` seconds (uvicorn's `timeout_keep_alive`);
* **write timeout**: a client that leaves its answers unread (the transport's write
  buffer stays over its high-water mark, or unsent data holds a closing connection) for
  `write_timeout` seconds is cut (`abort`): its slot, its buffered answers and any
  request waiting to write are freed.  While the buffer is over the mark the connection
  reads no further request (so a client pipelining requests without reading the answers
  cannot grow what the process holds);
* **half-close**: a client that shuts down its sending side after its requests gets
  each complete one answered, in order, then the connection closes (uvicorn closed at
  the FIN, leaving pipelined requests unanswered);
* **connection limit**: at most `max_connections` open connections per process (default:
  the descriptor limit less `RESERVED_DESCRIPTORS`), so `accept()` never meets EMFILE;
  a new connection beyond it evicts the least recently active connection that has no
  request being decided (one still sending its header or its body, or idle), or, when
  every connection is busy, is refused with `503`;
* **concurrency limit**: at most `max_concurrency` requests being decided or answered per
  process (a request counts from its complete body to its written answer; one still
  sending its body does not, so clients stalling in a body cannot take the slots);
  beyond it a request is answered at once with `503` and a JSON body, so Stalwart
  tempfails instead of waiting for its own hook timeout;
* **header limits**: a request line and header fields over `max_header_bytes` bytes, or
  more than `max_headers` fields, get `431` (`414` for a request target alone over it)
  and the connection is closed, at the read that passes the limit, however the header
  arrives (`header_limits`); httptools never buffers more than the limit and one read;
* **malformed requests** (httptools' parse errors, a protocol upgrade) get a `400` with a
  JSON body like the app's errors, not uvicorn's plain text, and the connection closes;
  so does a request answered before its body was read (e.g. `413`); every answer
  after which the connection closes says `connection: close` (RFC 9112 §9.6);
* **lingering close**: after an answer sent before its request was read whole, the
  connection half-closes and drops what the client still sends, for at most
  `linger_timeout` seconds and `linger_bytes` bytes, so the client reads the answer
  instead of a reset (`linger`);
* **bounded shutdown**: SIGTERM waits at most `shutdown_timeout` seconds for requests in
  progress (uvicorn's `timeout_graceful_shutdown`), then cancels them.

Every cut connection is counted (`komm_http_connections_closed_total{reason}`,
`komm_http_requests_shed_total`) and logged, rate-limited.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .protocol import GuardedProtocol
from .ratelog import RateLimitedLog

log = logging.getLogger("komm_policy.http")

RESERVED_DESCRIPTORS = 64
"""Descriptors left for everything but client connections: the listening socket, the
event loop, the store, the decision-log pipes, the policy watcher, and a margin for
connections accepted in one burst before the oldest are evicted."""


@dataclass(frozen=True)
class ServerLimits:
    """Connection timeouts (seconds) and limits for one server process."""

    header_timeout: float = 5.0
    body_timeout: float = 10.0
    idle_timeout: float = 20.0
    write_timeout: float = 10.0
    """How long answers may wait unread: the transport's write buffer over its high-water
    mark, or unsent data behind a close."""
    max_connections: int = 0
    """0: the descriptor limit (RLIMIT_NOFILE) less `RESERVED_DESCRIPTORS`."""
    max_concurrency: int = 512
    shutdown_timeout: float = 10.0
    max_header_bytes: int = 16384
    """Request line and header fields together; beyond it 431 (414 for the target)."""
    max_headers: int = 100
    """Header fields per request; beyond it 431."""
    linger_timeout: float = 2.0
    """After an answer sent before its request was read whole, how long the connection
    still reads (and drops) what the client sends before it closes (`linger`): long
    enough for a body of the default `max_body_bytes` on a LAN, far under Stalwart's
    30 s; 0: close at once.  The `[server] linger_timeout` option."""
    linger_bytes: int = 64 * 1024 * 1024
    """The most bytes read (and dropped) after such an answer: the `[server]
    linger_bytes` option, by default `max_body_bytes` and at least this default (the
    largest body Stalwart sends with the default `max_body_bytes`)."""


def connection_capacity(configured: int) -> int:
    """The connection limit to enforce: `configured`, at most the descriptor limit less
    `RESERVED_DESCRIPTORS` (and at least 1)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = 1 << 20 if soft == resource.RLIM_INFINITY else max(1, soft - RESERVED_DESCRIPTORS)
    if configured <= 0:
        return ceiling
    if configured > ceiling:
        log.warning("max_connections %d exceeds what %d file descriptors allow; using %d",
                    configured, soft, ceiling)
        return ceiling
    return configured


class ConnectionStats:
    """Counters of connections cut or refused, read by the metrics collector."""

    REASONS = ("header_timeout", "body_timeout", "write_timeout", "evicted", "refused",
               "shutdown")

    def __init__(self) -> None:
        self.open = 0
        self.closed = dict.fromkeys(self.REASONS, 0)
        self.shed = 0


class ConnectionCollector:
    """Prometheus collector for one process's `ConnectionStats`."""

    def __init__(self, stats: ConnectionStats, deciding: Callable[[], int]) -> None:
        self.stats = stats
        self.deciding = deciding

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily("komm_http_connections_open", "Open client connections",
                                value=self.stats.open)
        closed = CounterMetricFamily(
            "komm_http_connections_closed",
            "Connections cut by a read timeout, evicted at the connection limit, or refused",
            labels=("reason",))
        for reason, count in self.stats.closed.items():
            closed.add_metric((reason,), count)
        yield closed
        yield GaugeMetricFamily("komm_http_requests_in_progress",
                                "Requests being decided or answered (body complete), "
                                "counted against max_concurrency", value=self.deciding())
        yield CounterMetricFamily("komm_http_requests_shed",
                                  "Requests answered 503 at the concurrency limit",
                                  value=self.stats.shed)


class ConnectionGuard:
    """The protocol factory handed to uvicorn as `http=`: one per server process.

    It holds the process's open connections (least recently active first) and the
    counters.  It pickles as its limits alone, so each `--workers` process gets its own.
    """

    def __init__(self, limits: ServerLimits) -> None:
        self.limits = limits
        self._setup()

    def _setup(self) -> None:
        self.connections: OrderedDict[GuardedProtocol, None] = OrderedDict()
        self.deciding = 0
        """Requests with a complete body whose answer is not yet written (ASGI path)."""
        self.stats = ConnectionStats()
        self.capacity = connection_capacity(self.limits.max_connections)
        self.warn = RateLimitedLog(log)
        self._bound = False
        self._rejected: Any = None  # the app's komm_hook_bad_requests_total counter

    def __getstate__(self) -> dict[str, Any]:
        return {"limits": self.limits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.limits = state["limits"]
        self._setup()

    def __call__(self, config: Any, server_state: Any, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> GuardedProtocol:
        if not self._bound:
            self._bound = True
            self._bind_metrics(config)
        return GuardedProtocol(self, config, server_state, app_state, _loop)

    def _bind_metrics(self, config: Any) -> None:
        """Export the counters in the app's registry (the hook app has `.service.metrics`)."""
        if not config.loaded:
            config.load()
        metrics = getattr(getattr(config.loaded_app, "service", None), "metrics", None)
        registry = getattr(metrics, "registry", None)
        self._rejected = getattr(metrics, "rejected_requests", None)
        if registry is not None:
            registry.register(ConnectionCollector(self.stats, lambda: self.deciding))

    def admit(self, protocol: GuardedProtocol) -> bool:
        """Register a new connection; at the limit, evict an idle one or refuse this one."""
        connections = self.connections
        connections[protocol] = None
        self.stats.open = len(connections)
        if len(connections) <= self.capacity:
            return True
        victim = next((c for c in connections if c is not protocol and c.evictable), None)
        if victim is None:
            self.cut(protocol, "refused")
            protocol.refuse()
            return False
        self.cut(victim, "evicted")
        victim.transport.abort()
        return True

    def bad_request(self, protocol: GuardedProtocol, status: int, message: str) -> None:
        """Count (`komm_hook_bad_requests_total{status}`) and log, rate-limited, a request
        the protocol refused before the app saw it."""
        if self._rejected is not None:
            self._rejected.labels(str(status)).inc()
        client = "{}:{}".format(*protocol.client) if protocol.client else "unknown client"
        self.warn.warning(f"refused {status}", "answered %d to %s: %s", status, client,
                          message)

    def touch(self, protocol: GuardedProtocol) -> None:
        if protocol in self.connections:
            self.connections.move_to_end(protocol)

    def forget(self, protocol: GuardedProtocol) -> None:
        self.connections.pop(protocol, None)
        self.stats.open = len(self.connections)

    def cut(self, protocol: GuardedProtocol, reason: str) -> None:
        """Count and log (rate-limited) a connection cut for `reason`."""
        self.stats.closed[reason] += 1
        self.forget(protocol)
        client = "{}:{}".format(*protocol.client) if protocol.client else "unknown client"
        limits = self.limits
        explanation = {
            "header_timeout": f"no complete request header within {limits.header_timeout} s",
            "body_timeout": f"request body incomplete {limits.body_timeout} s after its header",
            "write_timeout": f"its answers left unread for {limits.write_timeout} s",
            "evicted": f"connection limit {self.capacity} reached; closed the least recently "
                       "active connection without a request in progress",
            "refused": f"connection limit {self.capacity} reached with every connection busy",
            "shutdown": "shutting down, and the request body is still incomplete "
                        f"{limits.shutdown_timeout} s later",
        }[reason]
        self.warn.warning(reason, "closed connection from %s: %s", client, explanation)


def run(app: Any, *, host: str, port: int, limits: ServerLimits, log_level: str,
        workers: int = 1, factory: bool = False) -> None:
    """Serve `app` (an ASGI app, or an import string with `workers > 1`) with uvicorn,
    httptools and the guarded protocol; returns after a (bounded) graceful shutdown."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, workers=workers if workers > 1 else None,
                factory=factory, log_level=log_level, access_log=False,
                http=ConnectionGuard(limits),  # type: ignore[arg-type]
                ws="none", proxy_headers=False,
                timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]
                timeout_graceful_shutdown=limits.shutdown_timeout)  # type: ignore[arg-type]
