"""Decision → the JSON answer Stalwart parses (see the wire reference §4–5).

- `tempfail` is sent as action `reject` with a 4xx status: Stalwart has no tempfail action.
- `quarantine` is sent as `accept` with the redirect modifications the runtime built:
  Stalwart's own `quarantine` drops the message, so it is never sent.
- A reply goes out only with a non-accept action (Stalwart ignores it on accept), always
  with integer `status`, `enhanced_status` (snake_case, the key Stalwart reads) plus
  `enhancedStatus` for readers following Stalwart's docs, `message` and `disconnect`.
- Modifications go out only with accept (Stalwart applies them only then, at data).
- Modification values are already safe here: they are built only by `outgoing` (one
  valid address; header values without controls, 7-bit, folded).
"""

from __future__ import annotations

from typing import NamedTuple

from ..decision import Decision
from ..wire import RESPONSE_ENCODER, WireReply, WireResponse

ACCEPT_BODY = b'{"action":"accept"}'
INTERNAL_ERROR_BODY = RESPONSE_ENCODER.encode(WireResponse(
    action="reject",
    response=WireReply(status=451, enhanced_status="4.3.0",
                       message="Temporary local problem, please try again later",
                       enhancedStatus="4.3.0")))
"""What Stalwart gets if answering fails inside the service (never a 500)."""

_WIRE_ACTION = {
    "accept": "accept",
    "quarantine": "accept",
    "reject": "reject",
    "tempfail": "reject",
    "discard": "discard",
}


def to_wire(decision: Decision, *, shadow: bool = False) -> WireResponse:
    """The response for a decision; in shadow mode always a plain accept."""
    if shadow:
        return WireResponse(action="accept")
    action = _WIRE_ACTION[decision.action]
    if action == "accept":
        return WireResponse(action="accept", modifications=decision.modifications)
    reply = decision.reply
    assert reply is not None, "a non-accept decision always carries a reply"
    return WireResponse(
        action=action,  # type: ignore[arg-type]
        response=WireReply(status=reply.status, enhanced_status=reply.enhanced,
                           message=reply.message, disconnect=False,
                           enhancedStatus=reply.enhanced),
    )


def encode(decision: Decision, *, shadow: bool = False) -> bytes:
    """The response body.  A plain accept is a constant."""
    if shadow or (decision.action == "accept" and not decision.modifications):
        return ACCEPT_BODY
    return RESPONSE_ENCODER.encode(to_wire(decision))


class Answer(NamedTuple):
    """A complete HTTP answer: status, body (JSON) and headers beyond content-type and
    content-length.  `spooling`: its decision is staged in the decision log — send it
    only once `HookApp.after_spool` called back with True, else send `TEMPFAIL`."""

    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()
    spooling: bool = False


TEMPFAIL = Answer(200, INTERNAL_ERROR_BODY)
"""What a staged answer becomes when its decision could not be spooled (451 4.3.0)."""
