"""Inline hook answers that wait for their decisions' spool write (`GuardedProtocol`).

The app stages each inline decision in the decision log (`HookApp.respond_inline`, an
`Answer` marked `spooling`); the protocol hands the answer's sending to
`HookApp.after_spool`, which commits every decision staged in this event-loop turn with
one spool `write` and then calls each waiting connection back — with the answer, or 451
4.3.0 (`response.TEMPFAIL`) when the spool could not be written and on_spool_error =
tempfail.  Under load a turn holds one answer per busy connection (16 at 16
connections), so the spool costs one system call a turn instead of one an answer, and
no answer leaves before its decision is in the spool.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .response import TEMPFAIL

log = logging.getLogger("komm_policy.hook")


class SpoolBatch:
    """The answers waiting for this event-loop turn's spool write (one per app)."""

    def __init__(self, service: Any) -> None:
        self._service = service  # its decision_log is read at each commit
        self._waiting: list[tuple[Any, Any, bool]] = []
        """(connection, answer, keep_alive) in the order the answers were given."""

    def after_spool(self, loop: asyncio.AbstractEventLoop, connection: Any, answer: Any,
                    keep_alive: bool) -> None:
        """Have `connection._send_spooled(answer, keep_alive)` called once the decisions
        staged so far are in the spool — with 451 4.3.0 (`response.TEMPFAIL`) instead of
        an answer marked `spooling` when they could not be spooled under
        on_spool_error = tempfail.  Every answer of one event-loop turn waits for the
        same `commit` — one spool `write` for all of them — which runs as soon as the
        loop has run this turn's callbacks (`call_soon`).  (Tuples, not a closure per
        answer: this runs for every inline answer.)"""
        waiting = self._waiting
        waiting.append((connection, answer, keep_alive))
        if len(waiting) == 1:
            loop.call_soon(self.commit)

    def commit(self) -> None:
        """Spool the staged decisions and send the waiting answers; also called by the
        protocol before it writes something else to a connection with answers
        waiting."""
        waiting = self._waiting
        if not waiting:
            return
        self._waiting = []
        decision_log = self._service.decision_log
        try:
            spooled = decision_log.commit() if decision_log is not None else True
        except Exception:
            # Never an answer whose decision is not in the log: 451, Stalwart retries.
            log.exception("spooling %d decisions failed", len(waiting))
            spooled = False
        for connection, answer, keep_alive in waiting:
            try:
                connection._send_spooled(
                    answer if spooled or not getattr(answer, "spooling", False)
                    else TEMPFAIL, keep_alive)
            except Exception:  # one connection's failure is not the others'
                log.exception("sending a hook answer failed")


class SpoolingAnswers:
    """Mixin for the HTTP protocol: `_spooling` answers wait on this connection."""

    _spooling = 0
    """Answers of this connection waiting for the spool write."""
    _close_after_spooling = False
    """Graceful shutdown came while answers were waiting: close after the last."""

    def _send_after_spool(self, answer: Any) -> None:
        """Send `answer` once its decision is spooled (an answer without a decision, such
        as a 400, when it comes after one that waits: answers leave in order).  The
        parser may read a next (pipelined) request meanwhile, so keep-alive is decided
        now."""
        self._spooling += 1
        self.app.after_spool(self.loop, self, answer, self._keep_alive())  # type: ignore[attr-defined]

    def _keep_alive(self) -> bool:
        """Whether the connection stays open after the request just parsed."""
        parser = self.parser  # type: ignore[attr-defined]
        return parser.should_keep_alive() and parser.get_http_version() != "1.0"

    def _send_spooled_now(self) -> None:
        """Spool and send the waiting answers before anything else is written to this
        connection (an error answer that closes it)."""
        if self._spooling:
            self.app.commit_spooled()  # type: ignore[attr-defined]

    def _send_spooled(self, answer: Any, keep_alive: bool) -> None:
        self._spooling -= 1
        if self.transport.is_closing():  # type: ignore[attr-defined]
            return  # the client is gone (its decision is in the log all the same)
        if self._close_after_spooling and not self._spooling:
            keep_alive = False
        self._write_answer(answer, keep_alive)  # type: ignore[attr-defined]

    def _write_error(self, *args: Any, **kwargs: Any) -> None:
        """(`refusals`) The answers waiting go first: the error closes the connection."""
        self._send_spooled_now()
        super()._write_error(*args, **kwargs)  # type: ignore[misc]

    def shutdown(self) -> None:
        """Graceful shutdown of a connection idle but for waiting answers: they are sent
        (within this loop turn), then it closes."""
        if self._spooling:
            self._close_after_spooling = True
            return
        super().shutdown()  # type: ignore[misc]
