"""Stalwart's MTA-hook request and response, as msgspec Structs (see the wire reference).

Decoding is tolerant on purpose: Stalwart always sends more than the seed's minimal payload,
and newer versions may add fields, so only `context.stage` and `context.client.ip` are
required, and what a stage always carries (`ENVELOPE_REQUIRED`: the envelope with its
sender from `mail` on, a recipient at `rcpt` and `data`); unknown keys are ignored and
stage names are matched case-insensitively.
Encoding follows what Stalwart's serde types parse: `action` always, `response` only for a
non-accept answer (integer `status`, snake_case `enhanced_status`, `message`, boolean
`disconnect`), `modifications` tagged by `type`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from .ipset import IP
from .wire_checks import entries_past, utf8_error

STAGES = ("connect", "ehlo", "auth", "mail", "rcpt", "data")
_STAGE_SET = frozenset(STAGES)

# Bounds on what a request may carry (wire reference §3: Stalwart's types).  Numbers take
# their Rust type's range, so nothing out of range reaches the decision log (whose encoder
# stops at 64 bits).  Text is bounded far above anything Stalwart's SMTP parser passes on
# (RFC 5321 §4.5.3.1: a command line is at most 512 octets, a path 256), so a decision
# record stays small whatever a client sends.  What an address contains is left to the
# policies on purpose (`valid_address(sender)` refuses a control character with the policy's own
# SMTP reply; a 400 would be a hook error, which Stalwart may be configured to pass).
MAX_TEXT = 1024
"""Characters in the stage name, an address, HELO name, PTR name, SASL login, TLS or
server field."""
MAX_RECIPIENTS = 1000
"""Entries in `envelope.to`: ten times Stalwart's default `maxRecipients` (100)."""
MAX_MESSAGE_HEADERS = 1000
"""Default for entries in `message.headers` (and in `serverHeaders`), the `[server]
max_message_headers` option: a message's own header fields, which Stalwart sends as they
came (wire reference §3.1); real mail has tens, and Stalwart refuses a message with more
Received fields than its loop limit.  Each entry costs about 150 bytes of Python objects
whatever its text, so without a count a body of many tiny headers decoded to ~17 times its
size."""

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
"""u16 (wire reference §3: `client.port`, `server.port`)."""
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Size = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
"""A byte count (u64 in Stalwart; msgspec checks bounds within int64, ample for a size)."""
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]


class _ParsedIP:
    """`parsed_ip`: the struct's `ip` parsed on first use (`IP.parse`; None when absent or
    not an address), then kept in the instance's `__dict__`, where later reads find it.
    `functools.cached_property` without its lock (Python 3.11 takes an RLock on every
    first read, about half a microsecond a request for the two addresses)."""

    def __get__(self, instance: Any, owner: type | None = None) -> IP | None:
        if instance is None:
            return self  # type: ignore[return-value]
        text = instance.ip
        ip = IP.parse(text) if text is not None else None
        instance.__dict__["parsed_ip"] = ip  # frozen: set in the dict, not by setattr
        return ip


class Client(msgspec.Struct, frozen=True, dict=True):
    ip: Text
    port: Port = 0
    ptr: Text | None = None
    helo: Text | None = None
    active_connections: U32 = msgspec.field(name="activeConnections", default=1)

    parsed_ip = _ParsedIP()
    """The address parsed once per request (validation and every rule share it)."""


class Sasl(msgspec.Struct, frozen=True):
    login: Text = ""
    method: Text | None = None


class Tls(msgspec.Struct, frozen=True):
    version: Text = ""
    cipher: Text = ""


class Server(msgspec.Struct, frozen=True, dict=True):
    name: Text = ""
    port: Port = 0
    ip: Text | None = None

    parsed_ip = _ParsedIP()


class Queue(msgspec.Struct, frozen=True):
    id: Text = ""


class Protocol(msgspec.Struct, frozen=True):
    version: U32 = 1


class Context(msgspec.Struct, frozen=True):
    stage: Text  # bounded like every text: an unknown stage is echoed in the 400
    client: Client
    sasl: Sasl | None = None
    tls: Tls | None = None
    server: Server = Server()
    queue: Queue | None = None
    protocol: Protocol = Protocol()


class Address(msgspec.Struct, frozen=True):
    address: Text
    parameters: Annotated[dict[Text, Text | None], msgspec.Meta(max_length=64)] | None = None


_NO_FROM = Address("")
"""`envelope.from` when the body has none (told apart from the null sender by identity)."""


class Envelope(msgspec.Struct, frozen=True):
    from_: Address = msgspec.field(name="from", default=_NO_FROM)
    to: Annotated[tuple[Address, ...], msgspec.Meta(max_length=MAX_RECIPIENTS)] = ()


class Message(msgspec.Struct, frozen=True):
    headers: tuple[tuple[str, str], ...] = ()
    server_headers: tuple[tuple[str, str], ...] = msgspec.field(name="serverHeaders",
                                                                default=())
    contents: str = ""
    size: Size = 0


class Request(msgspec.Struct, frozen=True):
    context: Context
    envelope: Envelope | None = None
    message: Message | None = None


_NO_HEADERS = msgspec.Raw(b"[]")


class _WireMessage(msgspec.Struct, frozen=True):
    """`Message` as decoded: the header lists kept as their JSON text until counted."""
    headers: msgspec.Raw = _NO_HEADERS
    server_headers: msgspec.Raw = msgspec.field(name="serverHeaders", default=_NO_HEADERS)
    contents: str = ""
    size: Size = 0


class _WireRequest(Request, frozen=True):
    """`Request` as decoded: itself when it has no message (most stages: no copy)."""
    message: _WireMessage | None = None  # type: ignore[assignment]


class RequestError(ValueError):
    """A hook body that is not a usable request; `path` names the offending field."""

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


_PLAIN_DECODER = msgspec.json.Decoder(Request)
_REQUEST_DECODER = msgspec.json.Decoder(_WireRequest)
_HEADERS_DECODER = msgspec.json.Decoder(tuple[tuple[str, str], ...])


def decode_request(body: bytes | str, max_headers: int = MAX_MESSAGE_HEADERS) -> Request:
    """Bytes → Request, validated; raises RequestError with a JSON path on bad input.

    Invalid UTF-8 (anywhere: msgspec checks only the text it decodes, not what it skips
    in unknown fields), nesting too deep for the decoder (about 1,000 levels, also inside
    fields that are otherwise ignored) and numbers out of range in a known field are
    RequestErrors, and so is a `message.headers` (or `serverHeaders`) of more than
    `max_headers` entries, counted before they are decoded (memory stays about the body's
    size).  Numbers in unknown fields are skipped whatever their size.  A key that
    appears twice in one object: the last occurrence is used."""
    if not isinstance(body, str) and not body.isascii():
        _check_utf8(body)
    try:
        # A body that cannot hold header lists of more than twice `max_headers` entries
        # (each at least 8 bytes, `["",""],`, and opening with `[`) is decoded in one step
        # and its lists counted after; another has them counted before they are decoded
        # (`_decode_headers`), so their entries never take more than about 300 bytes
        # each times the limit.
        if len(body) <= 8 * max_headers or body.count(
                "[" if isinstance(body, str) else b"[") <= 2 * max_headers:
            return _checked(_PLAIN_DECODER.decode(body), max_headers)
        request: Request = _REQUEST_DECODER.decode(body)
        message = request.message
        if message is not None:
            request = Request(request.context, request.envelope, Message(
                _decode_headers(message.headers, max_headers, "$.message.headers"),
                _decode_headers(message.server_headers, max_headers,
                                "$.message.serverHeaders"),
                message.contents, message.size))
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in text else "$"
        raise RequestError(text.split(" - at `", 1)[0], path) from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"invalid JSON: {exc}") from None
    except RecursionError:  # msgspec recurses per nesting level, also in ignored fields
        raise RequestError("invalid JSON: nested too deeply") from None
    return _checked(request, max_headers)


def _check_utf8(body: bytes) -> None:
    """RequestError unless `body` is valid UTF-8 (`wire_checks.utf8_error`)."""
    position = utf8_error(body)
    if position is not None:
        raise RequestError(f"invalid JSON: invalid UTF-8 at byte {position}")


def _checked(request: Request, max_headers: int) -> Request:
    """The decoded request with its stage name lower-cased, or RequestError for what the
    types cannot say (an unknown stage, an IP address, a stage's required parts, more
    than `max_headers` header fields)."""
    message = request.message
    if message is not None:
        for entries, path in ((message.headers, "$.message.headers"),
                              (message.server_headers, "$.message.serverHeaders")):
            if len(entries) > max_headers:
                raise _too_many_headers(max_headers, path)
    context = request.context
    stage = context.stage
    if stage not in _STAGE_SET:
        lowered = stage.lower()
        if lowered not in _STAGE_SET:
            raise RequestError(
                f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}",
                "$.context.stage")
        stage = lowered
        context = msgspec.structs.replace(context, stage=lowered)
        request = msgspec.structs.replace(request, context=context)
    if context.client.parsed_ip is None:
        raise RequestError(f"not an IP address: {context.client.ip!r}",
                           "$.context.client.ip")
    server_ip = context.server.ip
    # checked, not parsed: few rules read it (`server.ip`), and those parse it then
    if server_ip is not None and not IP.valid(server_ip):
        raise RequestError(f"not an IP address: {server_ip!r}", "$.context.server.ip")
    if stage in ENVELOPE_REQUIRED:
        _check_envelope(request)
    return request


def _decode_headers(raw: msgspec.Raw, limit: int, path: str) -> tuple[tuple[str, str], ...]:
    """A header list's JSON text (valid JSON: the request decoder checked it) → the
    header fields; RequestError naming `path` past `limit` entries or when it is not a
    list of [name, value] pairs.  The entries are counted first, in time linear in the
    text and without decoding or copying it (strings skipped whole), stopping at the
    first past the limit; `decode_request` comes here only for a body with more than
    twice `limit` `[` in it."""
    if raw is _NO_HEADERS:
        return ()
    # An entry takes at least 8 bytes (`["",""],`): a shorter text cannot hold too many.
    if len(raw) > 8 * limit + 1 and entries_past(memoryview(raw), limit):
        raise _too_many_headers(limit, path)
    try:
        return _HEADERS_DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        error = str(exc)
        inner = error.rsplit(" - at `$", 1)[1].rstrip("`") if " - at `$" in error else ""
        raise RequestError(error.split(" - at `", 1)[0], path + inner) from None


def _too_many_headers(limit: int, path: str) -> RequestError:
    return RequestError(f"more than {limit} header fields (the max_message_headers option)",
                        path)


ENVELOPE_REQUIRED = frozenset({"mail", "rcpt", "data"})
"""Stages at which Stalwart always sends the envelope: from MAIL FROM on, with the
sender; at `rcpt` with the recipient being added as the last of `to`; at `data` with at
least one accepted recipient (../shared/reference/stalwart-mta-hooks.md §3.2; Stalwart
`crates/smtp/src/inbound/hooks/mod.rs`, `rcpt.rs` appends the recipient before the hook
runs, and DATA needs a recipient)."""


def _check_envelope(request: Request) -> None:
    """Refuse a request missing what its stage always carries: without it a rule would
    judge a made-up value (a missing sender read as the null sender `""`, a missing
    recipient as `rcpt == ""`, the bare `<Postmaster>` every server must accept)."""
    stage = request.context.stage
    envelope = request.envelope
    if envelope is None:
        raise RequestError(f"the {stage} stage needs the envelope (Stalwart always sends "
                           "it from MAIL FROM on)", "$.envelope")
    if envelope.from_ is _NO_FROM:
        raise RequestError(f"the {stage} stage needs the sender (envelope.from; the null "
                           'sender is {"address": ""})', "$.envelope.from")
    if stage != "mail" and not envelope.to:
        which = ("the recipient being added (the last of envelope.to)" if stage == "rcpt"
                 else "at least one accepted recipient")
        raise RequestError(f"the {stage} stage needs {which}; envelope.to is empty",
                           "$.envelope.to")


# ---------------------------------------------------------------------------------------
# Response


class WireReply(msgspec.Struct, frozen=True):
    status: int
    enhanced_status: str | None
    message: str
    disconnect: bool = False
    enhancedStatus: str | None = None


class Modification(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    """Base of the eight modification types; `type` is the tag Stalwart dispatches on."""


class ChangeFrom(Modification, tag="changeFrom"):
    value: str
    parameters: dict[str, str | None] | None = None


class AddRecipient(Modification, tag="addRecipient"):
    value: str
    parameters: dict[str, str | None] | None = None


class DeleteRecipient(Modification, tag="deleteRecipient"):
    value: str


class ReplaceContents(Modification, tag="replaceContents"):
    value: str


class AddHeader(Modification, tag="addHeader"):
    name: str
    value: str


class InsertHeader(Modification, tag="insertHeader"):
    index: int
    name: str
    value: str


class ChangeHeader(Modification, tag="changeHeader"):
    index: int
    name: str
    value: str


class DeleteHeader(Modification, tag="deleteHeader"):
    index: int
    name: str


AnyModification = (
    ChangeFrom | AddRecipient | DeleteRecipient | ReplaceContents
    | AddHeader | InsertHeader | ChangeHeader | DeleteHeader
)


class WireResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    action: Literal["accept", "reject", "discard", "quarantine"]
    response: WireReply | None = None
    modifications: tuple[AnyModification, ...] = ()


RESPONSE_ENCODER = msgspec.json.Encoder()
RESPONSE_DECODER = msgspec.json.Decoder(WireResponse)
