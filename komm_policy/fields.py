"""The one table of request fields: name, type, the stages that have it, how to read it.

Derived from Stalwart's request types (wire reference §3.2): the checker uses it to reject a
field that a stage never carries (`client.helo` at connect, `rcpt` outside rcpt), and the
compiler uses the same entries' getters at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from . import types as t
from .context import EvalContext
from .wire import STAGES

STAGE_ORDER = STAGES
ALL_STAGES = frozenset(STAGES)


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    type: t.Type
    stages: frozenset[str]
    get: Callable[[EvalContext], Any]
    doc: str

    def stage_list(self) -> str:
        return ", ".join(s for s in STAGE_ORDER if s in self.stages)


def _tls_version(ctx: EvalContext) -> str | None:
    tls = ctx.request.context.tls
    return tls.version if tls is not None else None


def _tls_cipher(ctx: EvalContext) -> str | None:
    tls = ctx.request.context.tls
    return tls.cipher if tls is not None else None


def _sasl_login(ctx: EvalContext) -> str | None:
    sasl = ctx.request.context.sasl
    return sasl.login if sasl is not None and sasl.login else None


def _queue_id(ctx: EvalContext) -> str:
    queue = ctx.request.context.queue
    return queue.id if queue is not None else ""


def _message_size(ctx: EvalContext) -> int:
    message = ctx.request.message
    return message.size if message is not None else 0


def _message_body(ctx: EvalContext) -> str:
    message = ctx.request.message
    return message.contents if message is not None else ""


def _subject(ctx: EvalContext) -> str | None:
    return ctx.headers().first("subject")


_AFTER_EHLO = ALL_STAGES - {"connect"}
_AFTER_AUTH = frozenset({"auth", "mail", "rcpt", "data"})
_AFTER_MAIL = frozenset({"mail", "rcpt", "data"})
_AFTER_RCPT = frozenset({"rcpt", "data"})

FIELDS: MappingProxyType[str, Field] = MappingProxyType({
    f.name: f for f in (
        Field("stage", t.STRING, ALL_STAGES, lambda c: c.request.context.stage,
           "the SMTP stage of this hook call"),
        Field("client.ip", t.IP, ALL_STAGES, EvalContext.client_ip,
           "the client's address (the PROXY-protocol source behind a trusted proxy)"),
        Field("client.port", t.INT, ALL_STAGES, lambda c: c.request.context.client.port,
           "the client's source port"),
        Field("client.ptr", t.STRING.opt(), _AFTER_EHLO, lambda c: c.request.context.client.ptr,
           "the PTR name from Stalwart's iprev check (with trailing dot); none until MAIL, "
           "and none when iprev is disabled"),
        Field("client.helo", t.STRING.opt(), _AFTER_EHLO, lambda c: c.request.context.client.helo,
           "the EHLO/HELO argument as sent; none if the client sent none"),
        Field("server.name", t.STRING, ALL_STAGES, lambda c: c.request.context.server.name,
           'the server\'s name, e.g. "Stalwart v0.16.18"'),
        Field("server.port", t.INT, ALL_STAGES, lambda c: c.request.context.server.port,
           "the local port the client connected to (25, 465, 587, ...)"),
        Field("server.ip", t.IP.opt(), ALL_STAGES, EvalContext.server_ip,
           "the local address the client connected to"),
        Field("tls.version", t.STRING.opt(), ALL_STAGES, _tls_version,
           'the TLS version ("TLSv1.3"); none without TLS'),
        Field("tls.cipher", t.STRING.opt(), ALL_STAGES, _tls_cipher,
           "the TLS cipher suite; none without TLS"),
        Field("sasl.login", t.STRING.opt(), _AFTER_AUTH, _sasl_login,
           "the authenticated login name; none unless the session authenticated"),
        Field("sender", t.ADDRESS, _AFTER_MAIL, EvalContext.sender,
           'the envelope sender (MAIL FROM), lower-case; "" is the null sender <>'),
        Field("envelope.from", t.ADDRESS, _AFTER_MAIL, EvalContext.sender,
           "the same as `sender`"),
        Field("envelope.to", t.list_of(t.ADDRESS), _AFTER_RCPT, EvalContext.recipients,
           "the recipients so far; at rcpt the current one is last"),
        Field("rcpt", t.ADDRESS, frozenset({"rcpt"}), EvalContext.rcpt,
           "the recipient being judged at the rcpt stage (the last of envelope.to)"),
        Field("queue.id", t.STRING, frozenset({"data"}), _queue_id,
           "the id the message will have in Stalwart's queue"),
        Field("message.size", t.SIZE, frozenset({"data"}), _message_size,
           "the message size in bytes (headers and body)"),
        Field("message.body", t.STRING, frozenset({"data"}), _message_body,
           "the raw message body (not MIME-decoded)"),
        Field("subject", t.STRING.opt(), frozenset({"data"}), _subject,
           "the decoded Subject header; none if the message has none"),
    )
})

NAMESPACES = frozenset(name.split(".", 1)[0] for name in FIELDS if "." in name)
"""Roots of dotted fields (`client`, `server`, ...): not values by themselves."""
