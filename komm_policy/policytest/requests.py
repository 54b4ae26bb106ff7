"""A test case's request → the hook payload Stalwart would POST, decoded like a live one.

A case names its request in up to three layers, applied in this order:

1. `fixture = "FILE.json"`: a captured Stalwart payload (path relative to the test file);
2. `[case.payload]`: a Stalwart payload written inline (the same keys as the JSON);
3. `[case.request]`: fields by the names policies use (`stage`, `client.ip`, `sender`,
   `rcpt`, `envelope.to`, `subject`, `headers`, ...), set on top of the layers above.

The result goes through `wire.decode_request`, so a case sees exactly what the service
would: the same validation, defaults and normalisation.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from typing import Any

from ..wire import Request, RequestError, decode_request

DEFAULT_CLIENT_IP = "192.0.2.1"
"""The client address when a case gives none (TEST-NET-1, RFC 5737)."""


class CaseRequestError(ValueError):
    """The case's request cannot be built; the message names the field."""


def _context(payload: dict) -> dict:
    context = payload.setdefault("context", {})
    context.setdefault("client", {}).setdefault("ip", DEFAULT_CLIENT_IP)
    return context


def _set(*path: str) -> Callable[[dict, Any], None]:
    """A setter for `context.<path>`, creating the objects on the way."""
    def setter(payload: dict, value: Any) -> None:
        target = _context(payload)
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[path[-1]] = value
    return setter


def _envelope(payload: dict) -> dict:
    envelope = payload.get("envelope") or {}
    payload["envelope"] = envelope
    return envelope


def _message(payload: dict) -> dict:
    message = payload.get("message") or {}
    payload["message"] = message
    return message


def _sender(payload: dict, value: Any) -> None:
    _envelope(payload)["from"] = {"address": _text(value, "sender")}


def _recipients(payload: dict, value: Any) -> None:
    if not isinstance(value, list):
        raise CaseRequestError("`envelope.to` must be an array of addresses")
    _envelope(payload)["to"] = [{"address": _text(v, "envelope.to")} for v in value]


def _rcpt(payload: dict, value: Any) -> None:
    envelope = _envelope(payload)
    envelope["to"] = [*envelope.get("to", []), {"address": _text(value, "rcpt")}]


def _raw_value(value: str) -> str:
    """Header values as Stalwart sends them: a leading space and a trailing CRLF."""
    if not value.endswith("\r\n"):
        value = value + "\r\n"
    return value if value.startswith((" ", "\t")) else " " + value


def _headers(payload: dict, value: Any) -> None:
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        pairs = [(p[0], p[1]) for p in value]
    else:
        raise CaseRequestError('`headers` must be a table (Name = "value") or an array of '
                               '["Name", "value"] pairs')
    message = _message(payload)
    message["headers"] = [*message.get("headers", []),
                          *([_text(n, "headers"), _raw_value(_text(v, "headers"))]
                            for n, v in pairs)]


def _subject(payload: dict, value: Any) -> None:
    _headers(payload, {"Subject": _text(value, "subject")})


def _body(payload: dict, value: Any) -> None:
    _message(payload)["contents"] = _text(value, "message.body")


def _size(payload: dict, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CaseRequestError("`message.size` must be an integer (bytes)")
    _message(payload)["size"] = value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise CaseRequestError(f"`{name}` must be a string, not {type(value).__name__}")
    return value


FIELD_SETTERS: dict[str, Callable[[dict, Any], None]] = {
    "stage": _set("stage"),
    "client.ip": _set("client", "ip"),
    "client.port": _set("client", "port"),
    "client.ptr": _set("client", "ptr"),
    "client.helo": _set("client", "helo"),
    "server.name": _set("server", "name"),
    "server.port": _set("server", "port"),
    "server.ip": _set("server", "ip"),
    "tls.version": _set("tls", "version"),
    "tls.cipher": _set("tls", "cipher"),
    "sasl.login": _set("sasl", "login"),
    "sasl.method": _set("sasl", "method"),
    "queue.id": _set("queue", "id"),
    "sender": _sender,
    "envelope.from": _sender,
    "envelope.to": _recipients,
    "rcpt": _rcpt,
    "subject": _subject,
    "headers": _headers,
    "message.body": _body,
    "message.size": _size,
}
"""Request fields a case can set, by the names policies read (docs/language.md §9).
`rcpt` is appended after `envelope.to` (the current recipient is the last one)."""

_ORDER = {name: i for i, name in enumerate(FIELD_SETTERS)}


def flatten(fields: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """TOML dotted keys (`client.ip = …`) arrive nested; `headers` stays a table."""
    flat: dict[str, Any] = {}
    for key, value in fields.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name != "headers":
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def build_request(base: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> Request:
    """The payload `base` (or an empty one) with `fields` set, decoded like a hook body.

    Raises CaseRequestError for an unknown field or a payload Stalwart would not send."""
    payload: dict = copy.deepcopy(dict(base)) if base else {}
    flat = flatten(fields)
    for name in sorted(flat, key=lambda n: _ORDER.get(n, -1)):
        setter = FIELD_SETTERS.get(name)
        if setter is None:
            raise CaseRequestError(f"unknown request field `{name}` (fields: "
                                   f"{', '.join(FIELD_SETTERS)})")
        setter(payload, flat[name])
    _context(payload)
    if "message" in payload and "size" not in payload["message"]:
        message = payload["message"]
        payload["message"]["size"] = len(message.get("contents", "").encode()) + sum(
            len(f"{n}:{v}".encode()) for n, v in message.get("headers", []))
    try:
        return decode_request(json.dumps(payload))
    except RequestError as exc:
        raise CaseRequestError(f"{exc.message} at {exc.path}") from None
