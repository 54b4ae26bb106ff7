"""Per-decision state: the request, its derived values (parsed lazily, once), lookup memo.

One `EvalContext` lives for one decision.  Compiled closures read request fields through
it, so derived values such as the recipients list or the decoded headers are computed at
most once per decision and only when a reached rule needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from .addresses import normalize_address
from .directory import Directory
from .headers import Headers
from .ipset import IP
from .wire import Request


class Limits(Protocol):
    """The time limits a decision runs under, in seconds (`program.RuntimeSettings` has
    them; declared here so that this module needs nothing from the compiled program)."""

    @property
    def lookup_timeout(self) -> float: ...

    @property
    def deadline(self) -> float: ...


class EvalContext(msgspec.Struct):
    """Everything one decision reads and records.  Not shared between decisions.

    A `msgspec.Struct` (positional: request, directory, settings, clock, timed, tables) because
    one is built per decision: its C constructor fills the defaults (fresh `memo` and
    `lookup_log` each time) in about half the time of a class with `__slots__` and an
    `__init__`.  Subclasses extend it with `__post_init__`."""

    request: Request
    directory: Directory
    settings: Limits
    clock: Callable[[], float]
    timed: bool
    """Time each lookup (blocking backends, traces); local indexes are not timed."""
    tables: Any = None
    """The decision's local table snapshot (a `TablesSnapshot`) while compiled table
    lookups may read it in place: not timed, and nothing has failed yet."""
    memo: dict[tuple[Any, ...], Any] = {}
    lookup_log: list[Any] = []
    deadline_at: float | None = None
    # Created on first use: most decisions never need them.
    failures: dict[tuple[Any, ...], str] | None = None
    vars: list[Any] | None = None
    errors: list[str] | None = None
    logs: list[str] | None = None
    dry_run: list[Any] | None = None
    trace_steps: list[Any] | None = None
    _sender: str | None = None
    _rcpt: str | None = None
    _to: list[str] | None = None
    _headers: Headers | None = None

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
            if envelope is None:
                sender = ""
            else:  # normalize_address's ASCII case inline: one call fewer a decision
                address = envelope.from_.address
                sender = address.lower() if address.isascii() else normalize_address(address)
            self._sender = sender
        return sender

    def recipients(self) -> list[str]:
        to = self._to
        if to is None:
            envelope = self.request.envelope
            to = ([normalize_address(a.address) for a in envelope.to]
                  if envelope is not None else [])
            self._to = to
        return to

    def recipients_as_sent(self) -> list[str]:
        """The envelope recipients as Stalwart sent (and stores) them, lower-cased: what a
        `deleteRecipient` must name.  Not memoised: only modifications read it."""
        envelope = self.request.envelope
        return [a.address.lower() for a in envelope.to] if envelope is not None else []

    def rcpt(self) -> str:
        rcpt = self._rcpt
        if rcpt is None:
            envelope = self.request.envelope
            if envelope is None or not envelope.to:
                rcpt = ""
            else:
                address = envelope.to[-1].address
                rcpt = address.lower() if address.isascii() else normalize_address(address)
            self._rcpt = rcpt
        return rcpt

    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            message = self.request.message
            headers = self._headers = Headers(message.headers if message is not None else ())
        return headers
