"""Decision records and the sinks that store them (JSON lines, the SQLite `mta_log`).

A record says what was decided and why for one hook request.  It holds no tokens, bodies
or headers beyond what the policy itself put there (lookup arguments, `log` lines, reply
texts); client IPs can be redacted everywhere in it.  Each has a unique id; the SQLite sink
inserts idempotently.  `SinkWriter` drives the sinks with per-sink backlogs and retries;
it runs in the log writer process (see `logwriter`), off the answer path.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

import msgspec

from .decision import Decision, DryRunHit, LookupRecord, Reply, RuleRef
from .ipset import IP
from .wire import Client, Envelope, Queue, Request

log = logging.getLogger(__name__)


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
    reply: Reply | None = None
    rule: RuleRef | None = None
    answered: str | None = None
    """What Stalwart was told, when it differs from `action` (shadow mode)."""
    fallback: bool = False
    cause: str | None = None
    lookups: tuple[LookupRecord, ...] = ()
    dry_run: tuple[DryRunHit, ...] = ()
    logs: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


def _encode_hook(value: Any) -> Any:
    if isinstance(value, IP):
        return str(value)
    raise NotImplementedError(f"cannot log {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_encode_hook)


def encode_record(record: DecisionRecord) -> bytes:
    return _ENCODER.encode(record)


class RecordIds:
    """Unique record ids without uuid4's cost: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}-{next(self._counter):010x}"


class Timestamps:
    """ISO 8601 UTC times; the date-and-second part is formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def __call__(self, at: float) -> str:
        second = int(at)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._text}.{int((at - second) * 1_000_000):06d}+00:00"


def make_record(
    request: Request,
    decision: Decision,
    duration_ms: float,
    *,
    shadow: bool = False,
    redact_client_ip: bool = False,
    record_id: str | None = None,
    at: str | None = None,
) -> DecisionRecord:
    """The log record for one answered request."""
    context = request.context
    return _record(context.stage, logged_ip(context.client), request.envelope, context.queue,
                   decision, duration_ms, shadow, redact_client_ip, record_id, at)


def _record(stage: str, client_ip: str, envelope: Envelope | None, queue: Queue | None,
            decision: Decision, duration_ms: float, shadow: bool, redact_client_ip: bool,
            record_id: str | None, at: str | None) -> DecisionRecord:
    if envelope is not None:
        sender = envelope.from_.address
        recipients = tuple([a.address for a in envelope.to])
    else:
        sender, recipients = None, ()
    record = DecisionRecord(  # positional, in field order
        record_id or uuid.uuid4().hex,
        at or datetime.now(UTC).isoformat(timespec="microseconds"),
        stage,
        client_ip,
        sender,
        recipients,
        queue.id if queue is not None else None,
        decision.action,
        round(duration_ms, 3),
        decision.policy_version,
        decision.reply,
        decision.rule,
        "accept" if shadow and decision.action != "accept" else None,
        decision.fallback,
        decision.cause,
        decision.lookups,
        decision.dry_run,
        decision.logs,
        decision.errors,
    )
    return _redact(record, client_ip) if redact_client_ip else record


# -- raw entries: what the answer path hands to the log writer -----------------------------
#
# Building and JSON-encoding a record costs more than the decision itself; on the answer
# path only the decision and the few request fields a record needs are packed (one C call);
# the writer process turns them into records.

_RAW_ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode_hook)
_RAW_DECODER = msgspec.msgpack.Decoder(
    tuple[str, float, float, bool, bool, str, str, Envelope | None, Queue | None, Decision])


def raw_entry(request: Request, decision: Decision, duration_ms: float, at: float,
              record_id: str, *, shadow: bool = False, redact_client_ip: bool = False
              ) -> bytes:
    """The decision and its request's logged fields, packed for `line_from_raw`.  The id
    is given here, so a batch sent again after a writer restart is not stored twice."""
    context = request.context
    return _RAW_ENCODER.encode(
        (record_id, at, duration_ms, shadow, redact_client_ip, context.stage,
         logged_ip(context.client), request.envelope, context.queue, decision))


def logged_ip(client: Client) -> str:
    """The client address as logged: canonical (RFC 5952 for IPv6, an IPv4-mapped address
    as the IPv4 address), the text as sent only if it does not parse."""
    parsed = client.parsed_ip
    return parsed.text if parsed is not None else client.ip


def line_from_raw(entry: bytes, timestamps: Timestamps) -> bytes:
    """An entry from `raw_entry` as the record's JSON line."""
    record_id, at, duration_ms, shadow, redact, stage, client_ip, envelope, queue, decision = (
        _RAW_DECODER.decode(entry))
    return encode_record(_record(stage, client_ip, envelope, queue, decision, duration_ms,
                                 shadow, redact, record_id, timestamps(at)))


REDACTED = "[redacted]"
_RECORD_DECODER = msgspec.json.Decoder(DecisionRecord)


def _redact(record: DecisionRecord, client_ip: str) -> DecisionRecord:
    """The record with the client address gone from every field: lookup arguments and
    errors, causes, `log` lines and reply texts a policy interpolated it into.  Both the
    address as sent and its normal form (an IPv4-mapped address as plain IPv4) count."""
    forms = {client_ip}
    parsed = IP.parse(client_ip)
    if parsed is not None:
        forms.add(parsed.text)
    text = encode_record(record).decode()
    for form in sorted(forms, key=len, reverse=True):
        text = re.sub(rf"(?<![0-9A-Za-z.:]){re.escape(form)}(?![0-9A-Za-z.:])", REDACTED,
                      text)
    return msgspec.structs.replace(_RECORD_DECODER.decode(text), client_ip=None)


class Sink(Protocol):
    name: str

    def write(self, lines: Sequence[bytes]) -> None:
        """Write a batch of encoded records; raise to have the same batch retried later."""

    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per line, rotated by size: `decisions.jsonl` → `.1` → `.2` ….

    (Not a `logging` handler: the server's logging setup closes every handler it finds.)"""

    name = "jsonl"

    def __init__(self, path: str | Path, *, max_bytes: int = 100 * 1024 * 1024,
                 backups: int = 10) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.backups = backups
        self._file = self.path.open("ab")

    def write(self, lines: Sequence[bytes]) -> None:
        data = b"".join(line + b"\n" for line in lines)
        size = self._file.tell()
        if size and size + len(data) > self.max_bytes:
            self._rotate()
            size = 0
        try:
            self._file.write(data)
            self._file.flush()
        except OSError:
            # The batch is retried whole: take back what part of it reached the file.
            with contextlib.suppress(OSError, ValueError):
                self._file.truncate(size)
            raise

    def _rotate(self) -> None:
        self._file.close()
        for number in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{number}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{number + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self._file = self.path.open("ab")
        else:
            self._file = self.path.open("wb")

    def close(self) -> None:
        self._file.close()


class SqliteSink:
    """Rows in the store's `mta_log` table (its columns are derived from the JSON);
    re-inserting a record id is a no-op."""

    name = "sqlite"

    def __init__(self, path: str | Path) -> None:
        from .directory.sqlite import connect, init_schema

        self.path = Path(path)
        self._conn = connect(path, create=False, timeout=2.0)  # never a new empty store
        # WAL + NORMAL: no fsync per batch; a crash cannot corrupt the store, a power
        # loss can lose the last batch (as it can for the JSONL file).
        self._conn.execute("PRAGMA synchronous=NORMAL")
        init_schema(self._conn)

    def write(self, lines: Sequence[bytes]) -> None:
        with self._conn:
            self._conn.executemany("INSERT OR IGNORE INTO mta_log (record) VALUES (?)",
                                   [(line.decode(),) for line in lines])

    def close(self) -> None:
        self._conn.close()


class JsonlSpec(msgspec.Struct, frozen=True):
    """Where and how to write the JSONL file (picklable: it crosses to the writer)."""

    name: ClassVar[str] = "jsonl"
    path: str
    max_bytes: int = 100 * 1024 * 1024
    backups: int = 10

    def open(self) -> Sink:
        return JsonlSink(self.path, max_bytes=self.max_bytes, backups=self.backups)


class SqliteSpec(msgspec.Struct, frozen=True):
    name: ClassVar[str] = "sqlite"
    path: str

    def open(self) -> Sink:
        return SqliteSink(self.path)


SinkSpec = JsonlSpec | SqliteSpec

class _SinkState:
    __slots__ = ("backlog", "failures", "name", "retry_at", "sink", "spec")

    def __init__(self, spec: SinkSpec | Sink) -> None:
        # A spec is opened on first use, so a sink that cannot open yet (store missing,
        # directory not writable) is retried like a failed write instead of being lost.
        self.spec = spec
        self.sink: Sink | None = None if isinstance(spec, JsonlSpec | SqliteSpec) else spec
        self.name = spec.name
        self.backlog: list[bytes] = []
        self.failures = 0
        self.retry_at = 0.0


class SinkWriter:
    """Feeds batches of encoded records to every sink.  Each sink keeps its own backlog:
    one that fails is retried with backoff (0.5 s doubling up to 30 s) while the others
    go on, and nothing is written to a sink twice."""

    def __init__(self, sinks: Sequence[SinkSpec | Sink], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._states = [_SinkState(s) for s in sinks]
        self._clock = clock
        self.written = 0
        self.errors = 0

    def write(self, lines: Sequence[bytes]) -> None:
        batch = [line for line in lines if line]
        for state in self._states:
            state.backlog.extend(batch)
        self.attempt()

    def attempt(self, *, force: bool = False) -> None:
        """Write every backlog whose sink is not waiting out a backoff (or all: force)."""
        for state in self._states:
            if not state.backlog or (not force and self._clock() < state.retry_at):
                continue
            try:
                if state.sink is None:
                    state.sink = state.spec.open()  # type: ignore[union-attr]
                state.sink.write(state.backlog)
            except Exception as exc:  # keep the records and retry later
                self.errors += 1
                state.failures += 1
                if state.sink is not None and state.spec is not state.sink:
                    # Start over from the spec: a sink in a bad state (a closed file
                    # after a failed rotation, a broken connection) is not reused.
                    with contextlib.suppress(Exception):
                        state.sink.close()
                    state.sink = None
                state.retry_at = self._clock() + min(30.0, 0.5 * 2 ** min(state.failures - 1, 6))
                log.error("decision log sink %s failed (%d records kept for retry): %s",
                          state.name, len(state.backlog), exc)
                continue
            state.failures = 0
            if state is self._states[0]:
                self.written += len(state.backlog)
            state.backlog.clear()

    @property
    def pending(self) -> int:
        return max((len(s.backlog) for s in self._states), default=0)

    def next_retry_in(self) -> float | None:
        waiting = [s.retry_at for s in self._states if s.backlog]
        return max(0.0, min(waiting) - self._clock()) if waiting else None

    def close(self) -> int:
        """One last attempt for every backlog; returns the records that stay unwritten."""
        self.attempt(force=True)
        lost = self.pending
        for state in self._states:
            if state.backlog:
                log.error("decision log sink %s: %d records could not be written",
                          state.name, len(state.backlog))
            if state.sink is None:
                continue
            try:
                state.sink.close()
            except Exception:  # closing is best effort
                log.exception("closing decision log sink %s", state.name)
        return lost
