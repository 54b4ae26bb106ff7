"""Spool entries: what the answer path packs for the decision log, and their records.

Building and JSON-encoding a record costs more than the decision itself, so the answer
path only packs, with one msgpack call, the fields a record is made of (`EntryPacker`,
which packs each looked-up row's identity once per row object; `raw_entry`); the writer
process turns an entry into its record (`record_from_raw`, `line_from_raw`) with
the same code that builds a record from the request and decision objects
(`records.make_record`), so both give the same record.

Two entry formats, told apart by their first byte:

- compact (0xDC, a msgpack array16 whose first element is `ENTRY_FORMAT`, 2): the logged
  fields by position (`ENTRY_FIELDS`): about 700 bytes for the shipped RCPT decision
  against 966 for the first format.  Written since 2026-12-01.
- first (0x98, a msgpack array of 8): record id, time, duration, shadow, redact, and the
  request's `Context`, `Envelope` and the `Decision` as msgpack maps (every field name
  in every entry).  Still read, so a spool left by an older version is delivered after
  an upgrade.

Anything else is undecodable: the writer counts and logs it and goes on
(`writer.SpoolWriter`).

Not done, measured (2026-12-01): a third format packing each lookup as an array, its
rows' identities substituted in Python before the one msgpack call, cost more on the
answer path than the field names and `enc_hook` calls it saves (the 4 lookups of the
shipped RCPT decision, minima of interleaved rounds: rebuilt and encoded 1.9–2.2 µs,
encoded as they are 1.8); remembering the rows' packed identities (`EntryPacker`)
saves more (the lookups 1.5 → 0.9 µs) and keeps the entry's bytes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..decision import ActionName, Decision, DryRunHit, LookupRecord, Reply, RuleRef
from ..directory.rows import Row
from ..wire import ENVELOPE_REQUIRED, AnyModification, Context, Envelope, Request
from .bounds import CHECK_ENTRY_BYTES, MAX_LISTED_LOOKUPS, OMITTED, bounded
from .records import (
    RECORD_VERSION,
    DecisionRecord,
    Timestamps,
    _encode_hook,
    _record,
    encode_record,
    logged_ip,
    quarantine_reason,
    redact,
    summarize,
    with_omitted,
)

ENTRY_FORMAT = 2
"""The compact entry's format number (its first element)."""

ENTRY_FIELDS = (
    "format", "record_id", "id_number", "at", "duration_ms", "shadow", "redact_client_ip",
    "stage", "client_ip", "client_port", "client_ptr", "helo", "sasl_login", "sasl_method",
    "tls_version", "tls_cipher", "server_name", "server_port", "server_ip", "queue_id",
    "sender", "recipients", "action", "reply", "modifications", "rule", "fallback",
    "cause", "lookups", "dry_run", "logs", "errors", "policy_version",
)
"""The compact entry's elements, in order.  `record_id` with `id_number` N is the id
`record_id-NNNNNNNNNN` (10 hex digits; `RecordIds`), with none the id itself; `at` is
time.time() of the answer; the request's fields are as sent (the record's rules — a
port 0 is null, an empty TLS field is null — are applied when the record is built);
`sasl_*`/`tls_*`/`queue_id` are null without their part, `sender`/`recipients` without
an envelope; `reply`, `rule`, `modifications`, `lookups` and `dry_run` are the
decision's own (msgpack maps; a looked-up row as its identity, `records._encode_hook`):
flattening them too would save some 100 bytes more but cost more on the answer path
than their field names do (measured: a lookup made an array costs about 0.4 µs)."""

_ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode_hook)

_COMPACT = tuple[
    int, str, int | None, float, float, bool, bool,
    str, str, int, str | None, str | None, str | None, str | None,
    str | None, str | None, str, int, str | None, str | None,
    str | None, tuple[str, ...] | None, ActionName, Reply | None,
    tuple[AnyModification, ...], RuleRef | None, bool, str | None, tuple[LookupRecord, ...],
    tuple[DryRunHit, ...], tuple[str, ...], tuple[str, ...], str,
]
_COMPACT_DECODER = msgspec.msgpack.Decoder(_COMPACT)
_FIRST_DECODER = msgspec.msgpack.Decoder(
    tuple[str, float, float, bool, bool, Context, Envelope | None, Decision])
_FIRST_TAG = 0x98
"""A msgpack array of 8: the first entry format."""


ROW_CACHE = 4096
"""Looked-up rows whose packed identity an `EntryPacker` keeps (then it starts over)."""


_LOOKUPS = ENTRY_FIELDS.index("lookups")
_MSGPACK_INTS = range(-(2**63), 2**64)
"""The integers msgpack encodes (int64 and uint64)."""


def _loggable(value: Any) -> Any:
    """`value` (a lookup's arguments or result) with every integer outside
    `_MSGPACK_INTS` as its decimal text, looked-up rows as their identities; other values
    as they are.  Only called when packing failed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value in _MSGPACK_INTS else str(value)
    if isinstance(value, Row):
        return _loggable(_encode_hook(value))
    if isinstance(value, tuple):
        return tuple(_loggable(item) for item in value)
    if isinstance(value, list):
        return [_loggable(item) for item in value]
    if isinstance(value, dict):
        return {key: _loggable(item) for key, item in value.items()}
    return value


class EntryPacker:
    """Packs compact entries (`pack`), remembering the packed identity of each row a
    lookup returned: a decision's lookups usually return the same few rows request after
    request, and packing a row's identity afresh (through msgspec's `enc_hook`, a Python
    call per row) was about half of an entry's cost.  The identity of a row object never
    changes (`directory.rows`: a row is built once; a changed row is a new object), so it
    is packed once per row object and reused as `msgspec.Raw` — the same bytes.  At most
    `max_rows` rows are remembered (the memory they and their identities hold is
    bounded); then the memory starts over.  Not thread-safe beyond the GIL's guarantees:
    a lost race only packs a row twice."""

    def __init__(self, max_rows: int = ROW_CACHE) -> None:
        self._rows: dict[int, tuple[Row, msgspec.Raw]] = {}
        self._max_rows = max_rows
        self._encode = msgspec.msgpack.Encoder(enc_hook=self._hook).encode

    def _hook(self, value: Any) -> Any:
        rows = self._rows
        known = rows.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        if not isinstance(value, Row):
            return _encode_hook(value)
        raw = msgspec.Raw(_ENCODER.encode(_encode_hook(value)))
        if len(rows) >= self._max_rows:
            rows.clear()
        rows[id(value)] = (value, raw)  # holding the row: its id is not reused meanwhile
        return raw

    def pack(self, request: Request, decision: Decision, duration_ms: float, at: float,
             record_id: str, id_number: int | None = None, *, shadow: bool = False,
             redact_client_ip: bool = False, cut: bool = False) -> bytes:
        """The compact entry of an answered request (`ENTRY_FIELDS`); the message
        itself, headers and body, is not packed.  `at` is time.time() of the answer.
        A lookup argument or result integer beyond 64 bits is packed as its decimal text.
        The decision as its record shows it (`bounds.bounded`) when it made more lookups
        than a record lists, when the entry would pass `CHECK_ENTRY_BYTES`, or `cut`.
        Raises TypeError/ValueError/OverflowError for another value msgpack cannot
        encode."""
        if cut or len(decision.lookups) > MAX_LISTED_LOOKUPS:  # not packed whole
            decision = bounded(decision)
            cut = True
        context = request.context
        client = context.client
        sasl = context.sasl
        tls = context.tls
        server = context.server
        queue = context.queue
        # no envelope before MAIL FROM, as `records._record` logs it
        envelope = request.envelope if context.stage in ENVELOPE_REQUIRED else None
        fields = (
            ENTRY_FORMAT, record_id, id_number, at, duration_ms, shadow, redact_client_ip,
            context.stage, client.ip, client.port, client.ptr, client.helo,
            None if sasl is None else sasl.login, None if sasl is None else sasl.method,
            None if tls is None else tls.version, None if tls is None else tls.cipher,
            server.name, server.port, server.ip, None if queue is None else queue.id,
            None if envelope is None else envelope.from_.address,
            None if envelope is None else [a.address for a in envelope.to],
            decision.action, decision.reply, decision.modifications, decision.rule,
            decision.fallback, decision.cause, decision.lookups, decision.dry_run,
            decision.logs, decision.errors, decision.policy_version)
        try:
            entry = self._encode(fields)
        except OverflowError:
            # An integer msgpack cannot hold (a lookup argument or a row key beyond 64
            # bits, e.g. a SpacetimeDB u128): the record keeps it as its decimal text
            # rather than failing the answer.
            loggable = list(fields)
            loggable[_LOOKUPS] = tuple(
                msgspec.structs.replace(lookup, args=_loggable(lookup.args),
                                        result=_loggable(lookup.result))
                for lookup in decision.lookups)
            entry = self._encode(loggable)
        if len(entry) > CHECK_ENTRY_BYTES and not cut:  # long texts: cut them (`bounds`)
            return self.pack(request, decision, duration_ms, at, record_id, id_number,
                             shadow=shadow, redact_client_ip=redact_client_ip, cut=True)
        return entry


def raw_entry(request: Request, decision: Decision, duration_ms: float, at: float,
              record_id: str, id_number: int | None = None, *, shadow: bool = False,
              redact_client_ip: bool = False) -> bytes:
    """`EntryPacker.pack` with a packer of its own (one-off entries: tests, tools); the
    answer path keeps one packer (`DecisionLog`)."""
    return EntryPacker().pack(request, decision, duration_ms, at, record_id, id_number,
                              shadow=shadow, redact_client_ip=redact_client_ip)


def first_format_entry(request: Request, decision: Decision, duration_ms: float,
                       at: float, record_id: str, *, shadow: bool = False,
                       redact_client_ip: bool = False) -> bytes:
    """An entry in the first format, as versions before the compact entry wrote it (for
    tests of reading an older spool)."""
    return _ENCODER.encode((record_id, at, duration_ms, shadow, redact_client_ip,
                            request.context, request.envelope, decision))


def record_from_raw(entry: bytes, timestamps: Timestamps) -> tuple[DecisionRecord, float]:
    """An entry (either format) as its record, and its answer time (time.time()).
    Raises msgspec.DecodeError/ValidationError or ValueError for an undecodable entry."""
    if entry[:1] == b"\xdc":
        return _compact_record(entry, timestamps)
    if entry and entry[0] == _FIRST_TAG:
        record_id, at, duration_ms, shadow, redacted, context, envelope, decision = (
            _FIRST_DECODER.decode(entry))
        return _record(context, envelope, decision, duration_ms, shadow, redacted,
                       record_id, timestamps(at)), at
    raise ValueError(f"not a spool entry (first byte {entry[:1].hex() or 'none'})")


def _compact_record(entry: bytes, timestamps: Timestamps
                    ) -> tuple[DecisionRecord, float]:
    (form, record_id, id_number, at, duration_ms, shadow, redacted, stage, client_ip,
     client_port, client_ptr, helo, sasl_login, sasl_method, tls_version, tls_cipher,
     server_name, server_port, server_ip, queue_id, sender, recipients, action, reply,
     modifications, rule, fallback, cause, lookups, dry_run, logs, errors,
     policy_version) = _COMPACT_DECODER.decode(entry)
    if form != ENTRY_FORMAT:
        raise ValueError(f"unknown spool entry format {form}")
    # The same fields, rules and order as records._record.
    record = DecisionRecord(
        RECORD_VERSION,
        record_id if id_number is None else f"{record_id}-{id_number:010x}",
        timestamps(at),
        stage,
        logged_ip(client_ip),
        helo,
        sender,
        recipients or (),
        sasl_login or None,
        queue_id,
        action,
        round(duration_ms, 3),
        policy_version,
        reply,
        quarantine_reason(action, modifications),
        summarize(modifications) if modifications else (),
        rule,
        "accept" if shadow and action != "accept" else None,
        fallback,
        cause,
        lookups,
        dry_run,
        logs,
        errors,
        client_port or None,
        client_ptr,
        server_name or None,
        server_port or None,
        logged_ip(server_ip) if server_ip is not None else None,
        tls_version or None,
        tls_cipher or None,
        sasl_method,
    )
    if lookups and lookups[-1].function == OMITTED:
        record = with_omitted(record)
    return (redact(record, client_ip) if redacted else record), at


def line_from_raw(entry: bytes, timestamps: Timestamps) -> bytes:
    """An entry (either format) as the record's JSON line."""
    return encode_record(record_from_raw(entry, timestamps)[0])
