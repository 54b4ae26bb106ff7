"""Per-decision state: the request, its derived values (parsed lazily, once), lookup memo.

One `EvalContext` lives for one decision.  Compiled closures read request fields through
it, so derived values such as the recipients list or the decoded headers are computed at
most once per decision and only when a reached rule needs them.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .directory import Directory
from .ipset import IP
from .wire import Request

if TYPE_CHECKING:
    from .program import RuntimeSettings

_HEADER_PARSER = email.parser.HeaderParser(policy=email.policy.default)


class Headers:
    """The message's header fields, unfolded and RFC 2047-decoded by the stdlib parser.

    Stalwart sends raw values (leading space, folded lines, trailing CRLF, encoded words);
    names are matched case-insensitively.  A field is decoded only when a rule asks for it.
    """

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: tuple[tuple[str, str], ...]) -> None:
        grouped: dict[str, list[tuple[str, str]]] = {}
        for name, value in raw:
            grouped.setdefault(name.strip().lower(), []).append((name, value))
        self._raw = grouped
        self._decoded: dict[str, list[str]] = {}

    def all(self, name: str) -> list[str]:
        key = name.lower()
        decoded = self._decoded.get(key)
        if decoded is None:
            decoded = [_decode_header(n, v) for n, v in self._raw.get(key, ())]
            self._decoded[key] = decoded
        return decoded

    def first(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None


def _decode_header(name: str, raw: str) -> str:
    text = raw if raw.endswith("\n") else raw + "\r\n"
    try:
        parsed = _HEADER_PARSER.parsestr(f"{name.strip()}:{text}\r\n")
        value = parsed.get(name.strip())
        if value is not None:
            return str(value).strip()
    except Exception:
        pass
    return " ".join(raw.replace("\r\n", "\n").replace("\n", " ").split())


class EvalContext:
    """Everything one decision reads and records.  Not shared between decisions."""

    __slots__ = (
        "_headers", "_rcpt", "_sender", "_to", "clock", "deadline_at", "directory", "dry_run",
        "errors", "failures", "logs", "lookup_log", "memo", "request", "settings", "timed",
        "trace_steps", "vars",
    )

    def __init__(self, request: Request, directory: Directory, settings: RuntimeSettings,
                 clock: Callable[[], float], timed: bool) -> None:
        self.request = request
        self.directory = directory
        self.settings = settings
        self.clock = clock
        self.timed = timed
        """Time each lookup (blocking backends, traces); local indexes are not timed."""
        self.memo: dict[tuple[Any, ...], Any] = {}
        self.lookup_log: list[Any] = []
        self.deadline_at: float | None = None
        # Created on first use: most decisions never need them.
        self.failures: dict[tuple[Any, ...], str] | None = None
        self.vars: list[Any] | None = None
        self.errors: list[str] | None = None
        self.logs: list[str] | None = None
        self.dry_run: list[Any] | None = None
        self.trace_steps: list[Any] | None = None
        self._sender: str | None = None
        self._rcpt: str | None = None
        self._to: list[str] | None = None
        self._headers: Headers | None = None

    def log(self, line: str) -> None:
        if self.logs is None:
            self.logs = []
        self.logs.append(line)

    def error(self, cause: str) -> None:
        if self.errors is None:
            self.errors = []
        self.errors.append(cause)

    # -- derived request values (computed once) ---------------------------------------

    def client_ip(self) -> IP:
        ip = self.request.context.client.parsed_ip
        if ip is None:
            raise ValueError(f"client.ip is not an IP address: {self.request.context.client.ip!r}")
        return ip

    def server_ip(self) -> IP | None:
        return self.request.context.server.parsed_ip

    def sender(self) -> str:
        sender = self._sender
        if sender is None:
            envelope = self.request.envelope
            sender = envelope.from_.address.lower() if envelope is not None else ""
            self._sender = sender
        return sender

    def recipients(self) -> list[str]:
        to = self._to
        if to is None:
            envelope = self.request.envelope
            to = [a.address.lower() for a in envelope.to] if envelope is not None else []
            self._to = to
        return to

    def rcpt(self) -> str:
        rcpt = self._rcpt
        if rcpt is None:
            envelope = self.request.envelope
            rcpt = envelope.to[-1].address.lower() if envelope is not None and envelope.to else ""
            self._rcpt = rcpt
        return rcpt

    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            message = self.request.message
            headers = self._headers = Headers(message.headers if message is not None else ())
        return headers
