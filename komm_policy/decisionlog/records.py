"""The decision record, version 2: what was decided for one hook request, and why.

The schema is documented field by field in docs/decision-record.md; `RECORD_VERSION` is
raised whenever a field changes meaning or goes away (adding an optional field does not
raise it).  A record carries what is needed to decide the envelope stages again (client,
HELO, SASL login, sender, recipients, TLS and server facts) and the full answer (action,
SMTP reply, quarantine reason, a summary of the modifications), never message bodies,
header values or secrets — except what a policy itself puts into it (lookup arguments,
`log` lines, reply and quarantine texts).  A row a lookup found is recorded by its
identity (primary key, or rowid), never its other columns (version 2; version 1 carried
every column of every row).  Client IPs can be redacted everywhere in it.

On the answer path only the request's and the decision's logged fields are packed
(`entries.EntryPacker`); the writer process turns them into records (`entries.line_from_raw`).
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import operator
import os
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from ..decision import Decision, DryRunHit, LookupRecord, Reply, RuleRef
from ..directory.rows import row_identity
from ..directory.snapshot import Row
from ..ipset import IP
from ..wire import (
    ENVELOPE_REQUIRED,
    AddHeader,
    AddRecipient,
    AnyModification,
    ChangeFrom,
    ChangeHeader,
    Context,
    DeleteHeader,
    DeleteRecipient,
    Envelope,
    InsertHeader,
    Request,
)
from .bounds import OMITTED, split_omitted
from .host_spellings import host_spellings

RECORD_VERSION = 2
QUARANTINE_HEADER = "X-Komm-Quarantine"
"""The header `runtime` puts the quarantine reason in (our text, not the message's)."""


class ModificationSummary(msgspec.Struct, frozen=True, omit_defaults=True):
    """One modification sent to Stalwart, without header values or contents:
    `type` (Stalwart's tag, e.g. "addHeader"), `name` (header name, for header changes),
    `address` (for changeFrom/addRecipient/deleteRecipient)."""

    type: str
    name: str | None = None
    address: str | None = None


class DecisionRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """One record (docs/decision-record.md).  The fields without a default are always
    present in the JSON (null when unknown); the others are left out when empty."""

    record_version: int
    id: str
    time: str
    stage: str
    client_ip: str | None
    helo: str | None
    sender: str | None
    recipients: tuple[str, ...]
    sasl_login: str | None
    queue_id: str | None
    action: str
    duration_ms: float
    policy_version: str
    reply: Reply | None = None
    quarantine_reason: str | None = None
    modifications: tuple[ModificationSummary, ...] = ()
    rule: RuleRef | None = None
    answered: str | None = None
    """What Stalwart was told, when it differs from `action` (shadow mode)."""
    fallback: bool = False
    cause: str | None = None
    lookups: tuple[LookupRecord, ...] = ()
    dry_run: tuple[DryRunHit, ...] = ()
    logs: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    client_port: int | None = None
    client_ptr: str | None = None
    server_name: str | None = None
    server_port: int | None = None
    server_ip: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    sasl_method: str | None = None
    lookups_omitted: int = 0
    """Lookups made but not listed in `lookups` (`bounds.MAX_LISTED_LOOKUPS`)."""


def with_omitted(record: DecisionRecord) -> DecisionRecord:
    """The record with the count of lookups not listed as `lookups_omitted`, taken from
    the marker lookup that carries it from the answer path (`bounds.bounded`)."""
    lookups, omitted = split_omitted(record.lookups)
    if not omitted:
        return record
    return msgspec.structs.replace(record, lookups=lookups, lookups_omitted=omitted)


@functools.lru_cache(maxsize=1024)
def _row_identity(cls: type[Row]) -> Callable[[Row], dict[str, Any]]:
    """A row class's identity reader (`rows.row_identity`: its primary-key columns), with
    a C-level getter of the key columns: a decision's lookup records carry their rows'
    identities, packed on the answer path once per row object (`entries.EntryPacker`)."""
    key = cls._key
    if len(key) > 1:
        read = operator.attrgetter(*key)
        return lambda row: dict(zip(key, read(row), strict=True))
    if key:
        (name,) = key
        one = operator.attrgetter(name)
        return lambda row: {name: one(row)}
    return row_identity  # a rowid, or nothing that names the row


def _encode_hook(value: Any) -> Any:
    if isinstance(value, Row):  # a table lookup's row: its identity, not its columns
        return _row_identity(type(value))(value)
    if isinstance(value, IP):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    raise NotImplementedError(f"cannot log {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_encode_hook)
_RECORD_DECODER = msgspec.json.Decoder(DecisionRecord)


def encode_record(record: DecisionRecord) -> bytes:
    """The record's JSON line (no newline)."""
    return _ENCODER.encode(record)


def decode_record(line: bytes | str) -> DecisionRecord:
    """A JSON line back into a record; raises msgspec.ValidationError/DecodeError."""
    return _RECORD_DECODER.decode(line)


class RecordIds:
    """Unique record ids without uuid4's cost: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.numbers = itertools.count(1)
        """The next ids' numbers: id N is `f"{prefix}-{N:010x}"` (a spool entry carries
        prefix and number, the writer makes the text)."""

    def __call__(self) -> str:
        return f"{self.prefix}-{next(self.numbers):010x}"


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
    return _record(request.context, request.envelope, decision, duration_ms, shadow,
                   redact_client_ip, record_id, at)


def summarize(modifications: tuple[AnyModification, ...]) -> tuple[ModificationSummary, ...]:
    """What was changed, without values: header names and envelope addresses only."""
    summary = []
    for m in modifications:
        tag = type(m).__struct_config__.tag
        if isinstance(m, AddHeader | InsertHeader | ChangeHeader | DeleteHeader):
            summary.append(ModificationSummary(tag, name=m.name))
        elif isinstance(m, ChangeFrom | AddRecipient | DeleteRecipient):
            summary.append(ModificationSummary(tag, address=m.value))
        else:  # replaceContents: the new contents are a body
            summary.append(ModificationSummary(tag))
    return tuple(summary)


@functools.lru_cache(maxsize=4096)
def logged_ip(text: str) -> str:
    """An address as logged: canonical (RFC 5952 for IPv6, an IPv4-mapped address as the
    IPv4 address), the text as sent only if it does not parse.  Memoised: the writer
    logs the same few client and server addresses over and over, and parsing one costs
    about 4 µs."""
    parsed = IP.parse(text)
    return parsed.text if parsed is not None else text


def quarantine_reason(action: str, modifications: tuple[AnyModification, ...]
                      ) -> str | None:
    """The reason a quarantine decision gives (in the header `runtime` adds), else None."""
    if action != "quarantine":
        return None
    for m in modifications:
        if isinstance(m, AddHeader) and m.name == QUARANTINE_HEADER:
            return m.value
    return None


def _record(context: Context, envelope: Envelope | None, decision: Decision,
            duration_ms: float, shadow: bool, redact_client_ip: bool,
            record_id: str | None, at: str | None) -> DecisionRecord:
    if envelope is not None and context.stage in ENVELOPE_REQUIRED:
        # before MAIL FROM the policy cannot read an envelope (sender and rcpt are
        # mail-stage fields), so an envelope sent with a connect, ehlo or auth request
        # is not logged either: sender is null and recipients empty, as documented
        sender = envelope.from_.address
        recipients = tuple([a.address for a in envelope.to])
    else:
        sender, recipients = None, ()
    client, sasl, tls, server, queue = (context.client, context.sasl, context.tls,
                                        context.server, context.queue)
    record = DecisionRecord(  # positional, in field order
        RECORD_VERSION,
        record_id or uuid.uuid4().hex,
        at or datetime.now(UTC).isoformat(timespec="microseconds"),
        context.stage,
        logged_ip(client.ip),
        client.helo,
        sender,
        recipients,
        sasl.login or None if sasl is not None else None,
        queue.id if queue is not None else None,
        decision.action,
        round(duration_ms, 3),
        decision.policy_version,
        decision.reply,
        quarantine_reason(decision.action, decision.modifications),
        summarize(decision.modifications) if decision.modifications else (),
        decision.rule,
        "accept" if shadow and decision.action != "accept" else None,
        decision.fallback,
        decision.cause,
        decision.lookups,
        decision.dry_run,
        decision.logs,
        decision.errors,
        client.port or None,
        client.ptr,
        server.name or None,
        server.port or None,
        logged_ip(server.ip) if server.ip is not None else None,
        tls.version or None if tls is not None else None,
        tls.cipher or None if tls is not None else None,
        sasl.method if sasl is not None else None,
    )
    if decision.lookups and decision.lookups[-1].function == OMITTED:
        record = with_omitted(record)
    return redact(record, client.ip) if redact_client_ip else record


REDACTED = "[redacted]"

_RUN_CHARACTERS = frozenset(
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.:")
"""What an address's text, an RFC 5321 §4.1.3 literal's tag (`IPv6:`), a host name or an
`address:port` is made of: `redact` looks at maximal runs of these characters."""
_TWO_SEPARATORS = re.compile(r"[.:][0-9A-Za-z]*+[.:]")
"""Where a run holds two `.` or `:` (every address text does: IPv4 three dots, IPv6 two
colons).  A search costs one test per character besides these (possessive: no
backtracking), much less than a regex over every run."""
_RUN_REST = re.compile(r"[0-9A-Za-z.:]*+")

_LONGEST_ADDRESS = 46
"""Characters of the longest IP address text, plus one (a trailing `.` or `:`):
`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255` has 45; nothing longer parses."""


def _client_length(text: str, client: tuple[int, int]) -> int:
    """How many leading characters of `text` (at most `_LONGEST_ADDRESS` of them) spell
    the address whose `IP.key` is `client`: all of it, or all but one trailing `.` or `:`
    (the end of a sentence, `addr:` before a port); 0 when it does not.  Any case, zero
    compression or IPv4-mapped form counts (`IP.key`, the test of `IP.parse`)."""
    size = len(text)
    key = IP.key(text)
    if key is None and text[-1:] in (".", ":") and text[-2:] != "::":
        size -= 1
        key = IP.key(text[:size])
    return size if key == client else 0


def _redacted_run(run: str, client: tuple[int, int]) -> str:
    """One run of `_RUN_CHARACTERS` with the client address replaced: the whole run (a bare address,
    `1.2.3.4.`), else the longest tail after a `:` (`IPv6:2001:DB8::1`, `ip:1.2.3.4`,
    `::ffff:1.2.3.4` after `IPv6:`), else each `:`-separated IPv4 part (`1.2.3.4:25`).
    Linear in the run: only texts of at most `_LONGEST_ADDRESS` characters are parsed."""
    size = len(run)
    if size <= _LONGEST_ADDRESS and (length := _client_length(run, client)):
        return REDACTED + run[length:]
    if ":" not in run:
        return run
    start = run.find(":") + 1
    while start > 0:
        if size - start <= _LONGEST_ADDRESS and (
                length := _client_length(run[start:], client)):
            return run[:start] + REDACTED + run[start + length:]
        start = run.find(":", start) + 1
    if client[0] != 4 or "." not in run:
        return run
    parts = run.split(":")
    for i, part in enumerate(parts):
        if "." in part and len(part) <= 16 and (length := _client_length(part, client)):
            parts[i] = REDACTED + part[length:]
    return ":".join(parts)


def redact_text(text: str, client: IP) -> str:
    """`text` with every spelling of the `client` address replaced by `REDACTED`: a bare
    address, an RFC 5321 §4.1.3 address literal (`[1.2.3.4]`, `[IPv6:...]`), an address
    after a `label:` or before a `:port`, in any case and zero compression, an IPv4-mapped
    IPv6 address counting as its IPv4 address (`IP.parse`), and every spelling inside a
    host name (`host_spellings`: octets or groups joined by dashes or dots, reversed
    octets, `in-addr.arpa` and `ip6.arpa` names).  A longer address that merely contains
    it (`192.0.2.66` for client `192.0.2.6`) is left alone.  Time linear in `len(text)`:
    each run of `_RUN_CHARACTERS` is looked at once, and the host-name pattern's
    alternatives have bounded lengths."""
    key = (client.version, client.value)
    pieces: list[str] = []
    done = 0  # text[:done] is in pieces
    found = _TWO_SEPARATORS.search(text)
    while found is not None:
        start = found.start()
        while start > 0 and text[start - 1] in _RUN_CHARACTERS:
            start -= 1  # back to the run's start (after the previous run's end)
        end = _RUN_REST.match(text, found.end()).end()  # type: ignore[union-attr]
        run = text[start:end]
        if run.count(":") >= 2 or run.count(".") >= 3:  # else no address text fits
            redacted = _redacted_run(run, key)
            if redacted != run:
                pieces += (text[done:start], redacted)
                done = end
        found = _TWO_SEPARATORS.search(text, end)
    if pieces:
        pieces.append(text[done:])
        text = "".join(pieces)
    return host_spellings(*key).sub(REDACTED, text)


def redact(record: DecisionRecord, client_ip: str) -> DecisionRecord:
    """The record with the client address gone from every field: lookup arguments and
    errors, causes, `log` lines, HELO and reply texts a policy interpolated it into.  Every
    spelling counts (`redact_text`): the address as sent, its normal form, an IPv4-mapped
    form, upper case, uncompressed zeros, inside an address literal.  A `client_ip` that
    does not parse (never from the wire, which refuses it) is removed as sent."""
    text = encode_record(record).decode()
    client = IP.parse(client_ip)
    if client is not None:
        text = redact_text(text, client)
    else:
        text = re.sub(rf"(?<![0-9A-Za-z.:]){re.escape(client_ip)}(?![0-9A-Za-z.:])",
                      REDACTED, text)
    return msgspec.structs.replace(_RECORD_DECODER.decode(text), client_ip=None)
