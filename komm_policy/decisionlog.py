"""The decision log: one record per hook request, written off the answer path.

`DecisionLog.submit()` only appends to an in-memory queue (a deque append, no I/O, no
lock contention on the event loop); a writer thread drains the queue in batches into every
sink.  Each sink keeps its own backlog, so a sink that fails (disk full, database locked)
retries with backoff without delaying or duplicating the others.  Each record has a unique
id, and the SQLite sink inserts idempotently.  `close()` flushes everything before it
returns.  Records hold no message bodies, headers or tokens; client IPs can be redacted.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

from .decision import Decision
from .ipset import IP
from .wire import Request

log = logging.getLogger(__name__)


class LoggedReply(msgspec.Struct, frozen=True):
    status: int
    enhanced: str | None
    message: str


class LoggedRule(msgspec.Struct, frozen=True):
    name: str
    file: str
    line: int


class LoggedLookup(msgspec.Struct, frozen=True):
    function: str
    args: tuple[Any, ...]
    result: Any = None
    error: str | None = None
    duration_ms: float | None = None


class DecisionRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    time: str
    stage: str
    client_ip: str | None
    sender: str | None
    recipients: tuple[str, ...]
    queue_id: str | None
    action: str
    duration_ms: float
    policy_version: str
    reply: LoggedReply | None = None
    rule: LoggedRule | None = None
    answered: str | None = None
    """What Stalwart was told, when it differs from `action` (shadow mode)."""
    fallback: bool = False
    cause: str | None = None
    lookups: tuple[LoggedLookup, ...] = ()
    dry_run: tuple[dict[str, Any], ...] = ()
    logs: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def _encode_hook(value: Any) -> Any:
    if isinstance(value, IP):
        return str(value)
    raise NotImplementedError(f"cannot log {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_encode_hook)


def encode_record(record: DecisionRecord) -> bytes:
    return _ENCODER.encode(record)


def make_record(
    request: Request,
    decision: Decision,
    duration_ms: float,
    *,
    shadow: bool = False,
    redact_client_ip: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DecisionRecord:
    """The log record for one answered request (no bodies, no header values)."""
    context = request.context
    envelope = request.envelope
    reply = decision.reply
    rule = decision.rule
    return DecisionRecord(
        id=uuid.uuid4().hex,
        time=now().isoformat(timespec="microseconds"),
        stage=context.stage,
        client_ip=None if redact_client_ip else context.client.ip,
        sender=envelope.from_.address if envelope is not None else None,
        recipients=tuple(a.address for a in envelope.to) if envelope is not None else (),
        queue_id=context.queue.id if context.queue is not None else None,
        action=decision.action,
        duration_ms=round(duration_ms, 3),
        policy_version=decision.policy_version,
        reply=LoggedReply(reply.status, reply.enhanced, reply.message) if reply else None,
        rule=LoggedRule(rule.name, rule.file, rule.line) if rule else None,
        answered="accept" if shadow and decision.action != "accept" else None,
        fallback=decision.fallback,
        cause=decision.cause,
        lookups=tuple(LoggedLookup(x.function, x.args, x.result, x.error, x.duration_ms)
                      for x in decision.lookups),
        dry_run=tuple({"rule": h.rule.name, "line": h.rule.line, "action": h.action,
                       "reply": str(h.reply) if h.reply else None} for h in decision.dry_run),
        logs=decision.logs,
        errors=decision.errors,
    )


def _record_from(request: Request, decision: Decision, duration_ms: float, at: float,
                 shadow: bool, redact_client_ip: bool) -> DecisionRecord:
    stamp = datetime.fromtimestamp(at, UTC)
    return make_record(request, decision, duration_ms, shadow=shadow,
                       redact_client_ip=redact_client_ip, now=lambda: stamp)


class Sink(Protocol):
    name: str

    def write(self, records: Sequence[DecisionRecord]) -> None:
        """Write a batch; raise to have the same batch retried later."""

    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per line, rotated by size (the stdlib's rotating handler)."""

    name = "jsonl"

    def __init__(self, path: str | Path, *, max_bytes: int = 100 * 1024 * 1024,
                 backups: int = 10) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(message)s"))

    def write(self, records: Sequence[DecisionRecord]) -> None:
        handler = self._handler
        for record in records:
            line = encode_record(record).decode("utf-8")
            entry = logging.LogRecord("komm_policy.decisions", logging.INFO, "", 0, line,
                                      None, None)
            if handler.shouldRollover(entry):
                handler.doRollover()  # renames the file and opens a new one
            handler.stream.write(line + "\n")
        handler.stream.flush()

    def close(self) -> None:
        self._handler.close()


class SqliteSink:
    """Rows in the store's `mta_log` table; re-inserting a record id is a no-op."""

    name = "sqlite"

    def __init__(self, path: str | Path) -> None:
        from .directory.sqlite import connect, init_schema

        self.path = Path(path)
        self._conn = connect(path, timeout=2.0)
        init_schema(self._conn)

    def write(self, records: Sequence[DecisionRecord]) -> None:
        rows = [
            (r.id, r.time, r.stage, r.client_ip, r.sender,
             msgspec.json.encode(r.recipients).decode(), r.queue_id, r.action,
             (f"{r.reply.status} {r.reply.enhanced or ''} {r.reply.message}".replace("  ", " ")
              if r.reply else None),
             r.rule.name if r.rule else None,
             f"{r.rule.file}:{r.rule.line}" if r.rule else None,
             int(r.fallback), r.cause, r.duration_ms, r.policy_version,
             encode_record(r).decode())
            for r in records
        ]
        with self._conn:
            self._conn.executemany(
                "INSERT OR IGNORE INTO mta_log (id, time, stage, client_ip, sender, recipients,"
                " queue_id, action, reply, rule, rule_location, fallback, cause, duration_ms,"
                " policy_version, record) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def close(self) -> None:
        self._conn.close()


class _SinkState:
    __slots__ = ("backlog", "failures", "retry_at", "sink")

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.backlog: list[DecisionRecord] = []
        self.failures = 0
        self.retry_at = 0.0


class DecisionLog:
    """Queue + writer thread feeding every sink."""

    def __init__(self, sinks: Sequence[Sink], *, flush_interval: float = 0.05,
                 batch_size: int = 500, clock: Callable[[], float] = time.monotonic) -> None:
        self._sinks = [_SinkState(s) for s in sinks]
        self._queue: deque[DecisionRecord] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._clock = clock
        self.written = 0
        self.sink_errors = 0
        self._thread = threading.Thread(target=self._run, name="komm-decision-log",
                                        daemon=True)
        self._thread.start()

    def submit(self, record: DecisionRecord) -> None:
        """Hand a record to the writer; never blocks and never does I/O."""
        self._queue.append(record)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def submit_decision(self, request: Request, decision: Decision, duration_ms: float,
                        at: float, *, shadow: bool = False,
                        redact_client_ip: bool = False) -> None:
        """Like `submit`, but the record (id, timestamp text, lookups) is built by the
        writer thread, not on the answer path.  `at` is the answer's time.time()."""
        self._queue.append((request, decision, duration_ms, at, shadow,  # type: ignore[arg-type]
                            redact_client_ip))
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    @property
    def depth(self) -> int:
        """Records not yet written to every sink."""
        backlog = max((len(s.backlog) for s in self._sinks), default=0)
        return len(self._queue) + backlog

    def _run(self) -> None:
        while True:
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            stopping = self._stopping
            self._drain(force=stopping)
            if stopping and not self._queue:
                return

    def _drain(self, *, force: bool = False) -> None:
        batch: list[DecisionRecord] = []
        queue = self._queue
        while queue:
            item = queue.popleft()
            if isinstance(item, tuple):
                item = _record_from(*item)
            batch.append(item)
        for state in self._sinks:
            state.backlog.extend(batch)
            if not state.backlog or (not force and self._clock() < state.retry_at):
                continue
            try:
                for start in range(0, len(state.backlog), self._batch_size):
                    state.sink.write(state.backlog[start:start + self._batch_size])
            except Exception as exc:
                self.sink_errors += 1
                state.failures += 1
                state.retry_at = self._clock() + min(30.0, 0.5 * 2 ** min(state.failures, 6))
                log.error("decision log sink %s failed (%d records kept for retry): %s",
                          state.sink.name, len(state.backlog), exc)
                continue
            state.failures = 0
            self.written += len(state.backlog) if state is self._sinks[0] else 0
            state.backlog.clear()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far reached every sink (or timeout)."""
        deadline = time.monotonic() + timeout
        while self.depth and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.005)
        return self.depth == 0

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued (one last attempt per sink) and stop the writer."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        for state in self._sinks:
            if state.backlog:
                log.error("decision log sink %s: %d records could not be written",
                          state.sink.name, len(state.backlog))
            try:
                state.sink.close()
            except Exception:
                log.exception("closing decision log sink %s", state.sink.name)
