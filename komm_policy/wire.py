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

from functools import cached_property
from typing import Literal

import msgspec

from .ipset import IP

STAGES = ("connect", "ehlo", "auth", "mail", "rcpt", "data")


class Client(msgspec.Struct, frozen=True, dict=True):
    ip: str
    port: int = 0
    ptr: str | None = None
    helo: str | None = None
    active_connections: int = msgspec.field(name="activeConnections", default=1)

    @cached_property
    def parsed_ip(self) -> IP | None:
        """The address parsed once per request (validation and every rule share it)."""
        return IP.parse(self.ip)


class Sasl(msgspec.Struct, frozen=True):
    login: str = ""
    method: str | None = None


class Tls(msgspec.Struct, frozen=True):
    version: str = ""
    cipher: str = ""


class Server(msgspec.Struct, frozen=True, dict=True):
    name: str = ""
    port: int = 0
    ip: str | None = None

    @cached_property
    def parsed_ip(self) -> IP | None:
        return IP.parse(self.ip) if self.ip is not None else None


class Queue(msgspec.Struct, frozen=True):
    id: str = ""


class Protocol(msgspec.Struct, frozen=True):
    version: int = 1


class Context(msgspec.Struct, frozen=True):
    stage: str
    client: Client
    sasl: Sasl | None = None
    tls: Tls | None = None
    server: Server = Server()
    queue: Queue | None = None
    protocol: Protocol = Protocol()


class Address(msgspec.Struct, frozen=True):
    address: str
    parameters: dict[str, str | None] | None = None


_NO_FROM = Address("")
"""`envelope.from` when the body has none (told apart from the null sender by identity)."""


class Envelope(msgspec.Struct, frozen=True):
    from_: Address = msgspec.field(name="from", default=_NO_FROM)
    to: tuple[Address, ...] = ()


class Message(msgspec.Struct, frozen=True):
    headers: tuple[tuple[str, str], ...] = ()
    server_headers: tuple[tuple[str, str], ...] = msgspec.field(name="serverHeaders",
                                                                default=())
    contents: str = ""
    size: int = 0


class Request(msgspec.Struct, frozen=True):
    context: Context
    envelope: Envelope | None = None
    message: Message | None = None


class RequestError(ValueError):
    """A hook body that is not a usable request; `path` names the offending field."""

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


_REQUEST_DECODER = msgspec.json.Decoder(Request)


def decode_request(body: bytes | str) -> Request:
    """Bytes → Request, validated; raises RequestError with a JSON path on bad input.

    Invalid UTF-8, nesting too deep for the decoder (about 1,000 levels, also inside
    fields that are otherwise ignored) and numbers out of range in a known field are
    RequestErrors.  Numbers in unknown fields are skipped whatever their size.  A key that
    appears twice in one object: the last occurrence is used."""
    try:
        request = _REQUEST_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        path = text.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in text else "$"
        raise RequestError(text.split(" - at `", 1)[0], path) from None
    except msgspec.DecodeError as exc:
        raise RequestError(f"invalid JSON: {exc}") from None
    except RecursionError:  # msgspec recurses per nesting level, also in ignored fields
        raise RequestError("invalid JSON: nested too deeply") from None
    stage = request.context.stage
    if stage not in STAGES:
        lowered = stage.lower()
        if lowered not in STAGES:
            raise RequestError(
                f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}",
                "$.context.stage")
        request = msgspec.structs.replace(
            request, context=msgspec.structs.replace(request.context, stage=lowered))
    if request.context.client.parsed_ip is None:
        raise RequestError(f"not an IP address: {request.context.client.ip!r}",
                           "$.context.client.ip")
    server_ip = request.context.server.ip
    if server_ip is not None and request.context.server.parsed_ip is None:
        raise RequestError(f"not an IP address: {server_ip!r}", "$.context.server.ip")
    if request.context.stage in ENVELOPE_REQUIRED:
        _check_envelope(request)
    return request


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
