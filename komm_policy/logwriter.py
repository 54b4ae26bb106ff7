"""The decision log's plumbing: records leave the service in batches, through a pipe, to
a writer process that owns the sinks.

Why a process: building records, JSON encoding, SQLite inserts and file writes are
CPU-bound Python; in a thread they would hold the GIL against the event loop thread,
which then waits up to the 5 ms switch interval after every socket write (measured:
throughput halved, p99 tens of ms).  On the answer path a decision costs one msgpack
encode of the decision (`decisionlog.raw_entry`); a sender thread, which spends its time
blocked in the pipe write, ships batches; the writer process builds the records.

Nothing is lost on a clean shutdown: `close()` sends what is queued, tells the writer to
finish, and waits for it.  A writer that died is restarted and a batch it could not take
is sent again; records carry their ids from the answer path, so the SQLite sink stores a
re-sent record once.  (A batch the writer had received but not yet written when it died
is lost.)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection

from .decision import Decision
from .decisionlog import (
    RecordIds,
    SinkSpec,
    SinkWriter,
    Timestamps,
    line_from_raw,
    raw_entry,
)
from .wire import Request

log = logging.getLogger(__name__)

_RECORDS, _FLUSH, _QUIT, _ACK = b"R", b"F", b"Q", b"A"


def _writer_main(conn: Connection, specs: Sequence[SinkSpec]) -> None:
    """The writer process: receive batches, write them, retry failed sinks."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    writer = SinkWriter(specs)
    timestamps = Timestamps()
    try:
        while True:
            wait = writer.next_retry_in()
            if not conn.poll(1.0 if wait is None else min(wait, 1.0)):
                writer.attempt()
                continue
            try:
                message = conn.recv_bytes()
            except EOFError:
                break
            kind, payload = message[:1], message[1:]
            if kind == _RECORDS:
                writer.write(_lines(_unframe(payload), timestamps))
            elif kind == _FLUSH:
                writer.attempt(force=True)
                conn.send_bytes(_ACK + payload + b":" + str(writer.pending).encode())
            elif kind == _QUIT:
                break
    finally:
        lost = writer.close()
        with contextlib.suppress(OSError):
            conn.send_bytes(_ACK + str(lost).encode())


def _lines(entries: list[bytes], timestamps: Timestamps) -> list[bytes]:
    lines = []
    for entry in entries:
        try:
            lines.append(line_from_raw(entry, timestamps))
        except Exception:  # one bad entry must not cost the others
            log.exception("decision log: dropping an entry that cannot be decoded")
    return lines


def _frame(entries: list[bytes]) -> bytes:
    return b"".join(len(e).to_bytes(4, "big") + e for e in entries)


def _unframe(payload: bytes) -> list[bytes]:
    entries = []
    view = memoryview(payload)
    position = 0
    while position < len(payload):
        size = int.from_bytes(view[position:position + 4], "big")
        entries.append(bytes(view[position + 4:position + 4 + size]))
        position += 4 + size
    return entries


class DecisionLog:
    """The service side: queue encoded records, ship them to the writer process."""

    def __init__(self, specs: Sequence[SinkSpec], *, flush_interval: float = 0.05) -> None:
        self._specs = tuple(specs)
        self._flush_interval = flush_interval
        self._pending: deque[bytes] = deque()
        self._ids = RecordIds()
        self._flushes = itertools.count(1)
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._context = multiprocessing.get_context("spawn")
        self._start_writer()
        self._sender = threading.Thread(target=self._send_loop, name="komm-log-sender",
                                        daemon=True)
        self._sender.start()

    def _start_writer(self) -> None:
        self._conn, child = self._context.Pipe()
        self._process = self._context.Process(target=_writer_main, args=(child, self._specs),
                                              name="komm-decision-log", daemon=True)
        self._process.start()
        child.close()

    # -- answer path ----------------------------------------------------------------------

    def submit_decision(self, request: Request, decision: Decision, duration_ms: float,
                        at: float, *, shadow: bool = False,
                        redact_client_ip: bool = False) -> None:
        """Queue an answered request's decision (no I/O); the writer process builds the
        record.  `at` is the answer's time.time()."""
        self._pending.append(raw_entry(request, decision, duration_ms, at, self._ids(),
                                       shadow=shadow, redact_client_ip=redact_client_ip))

    @property
    def depth(self) -> int:
        """Records queued in the service, not yet handed to the writer."""
        return len(self._pending)

    # -- sender thread --------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stopping:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            self._send_pending()

    def _send_pending(self) -> None:
        with self._send_lock:
            lines = []
            pending = self._pending
            while pending:
                lines.append(pending.popleft())
            if not lines:
                return
            message = _RECORDS + _frame(lines)
            for attempt in range(3):
                try:
                    self._conn.send_bytes(message)
                    return
                except (OSError, ValueError) as exc:
                    log.error("decision log writer unreachable (%s); restarting it", exc)
                    self._restart()
                    time.sleep(0.1 * (attempt + 1))
            pending.extendleft(reversed(lines))  # keep them for the next round

    def _restart(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.close()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(5)
        self._start_writer()

    # -- control --------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Ship everything queued and wait until the writer has written it."""
        self._send_pending()
        number = str(next(self._flushes)).encode()
        deadline = time.monotonic() + timeout
        with self._send_lock:
            try:
                self._conn.send_bytes(_FLUSH + number)
                while True:  # skip the late answer to an earlier flush that timed out
                    if not self._conn.poll(max(0.0, deadline - time.monotonic())):
                        return False
                    reply = self._conn.recv_bytes()
                    if reply.startswith(_ACK + number + b":"):
                        break
            except (OSError, EOFError):
                return False
        return reply.endswith(b":0") and not self._pending

    def close(self, timeout: float = 30.0) -> None:
        """Ship what is queued, let the writer finish its sinks, wait for it."""
        self._stopping = True
        self._wake.set()
        self._sender.join(timeout)
        self._send_pending()
        with self._send_lock:
            try:
                self._conn.send_bytes(_QUIT)
                deadline = time.monotonic() + timeout
                while self._conn.poll(max(0.0, deadline - time.monotonic())):
                    reply = self._conn.recv_bytes()
                    if b":" not in reply:  # the writer's final answer: records it lost
                        if reply[1:] != b"0":
                            log.error("decision log: %s records could not be written",
                                      reply[1:].decode())
                        break
            except (OSError, EOFError) as exc:
                log.error("decision log writer gone at shutdown: %s", exc)
            self._conn.close()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.terminate()
